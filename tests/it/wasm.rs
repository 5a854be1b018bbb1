//! proxy-wasm filters: guest modules from `tests/wasm-guests/`, written against the published
//! proxy-wasm Rust SDK exactly as for Envoy and built for `wasm32-wasip1`, run by the real
//! gateway in front of real upstreams; each test asserts what an Envoy user expects of the
//! SDK's kind of filter it stands for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatehouse_testkit::{
    client, metric_value, output_of, raw_upstream, read_request_head, send, wasm_guest, AppConfig,
    JsonResponse, TestGateway, TestUpstream,
};

/// A gateway with upstream `app` (and `extra` upstreams) and one route `/api` whose filter
/// list is `filter`.
fn config(app: SocketAddr, extra: &str, filter: &str) -> String {
    AppConfig::new(&[app])
        .upstreams(extra)
        .route("api", "/api", &[filter])
        .to_string()
}

/// Upstream `app` and a gateway whose `/api` route runs guest `guest` with `settings`
/// (more keys of the `wasm` entry, each with a leading `, `).
async fn with_guest(guest: &str, settings: &str) -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("app").await;
    let filter = format!(r#"wasm: {{ module: "{}"{settings} }}"#, module(guest));
    let gw = TestGateway::start(&config(up.addr, "", &filter)).await;
    (up, gw)
}

fn module(name: &str) -> String {
    wasm_guest(name).display().to_string()
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn header_filter_edits_both_directions_and_reads_request_properties() {
    let (up, gw) = with_guest("headers", r#", config: "from-config", root_id: my_root"#).await;
    let r = get(
        &gw,
        "/api/things?page=2",
        &[("x-remove-me", "1"), ("user-agent", "wasm-test/1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wasm-response"), Some("saw 200"));
    // The request stays readable in the response phase (as sent: with the module's edits).
    assert_eq!(header(&r, "x-wasm-request-ua"), Some("wasm-test/1"));
    assert_eq!(
        header(&r, "x-wasm-request-path"),
        Some("/api/things?page=2")
    );
    assert_eq!(header(&r, "x-wasm-request-added"), Some("2"));
    let request_id = header(&r, "x-request-id").unwrap().to_string();
    let seen = up.last_headers();
    let h = |n: &str| {
        seen.get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        h("x-wasm-config").as_deref(),
        Some("from-config"),
        "plugin configuration"
    );
    let added: Vec<_> = seen
        .get_all("x-wasm-added")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(added, ["one", "two"], "add_http_request_header appends");
    assert_eq!(h("x-remove-me"), None, "removed before the upstream");
    assert_eq!(h("x-wasm-path").as_deref(), Some("/api/things?page=2"));
    assert_eq!(h("x-wasm-method").as_deref(), Some("GET"));
    assert_eq!(h("x-wasm-source").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        h("x-wasm-host").as_deref(),
        Some(format!("127.0.0.1:{}", gw.port).as_str())
    );
    assert_eq!(
        h("x-wasm-request-id"),
        Some(request_id),
        "request.id is the gateway's"
    );
    assert_eq!(h("x-wasm-root-id").as_deref(), Some("my_root"));
    assert_eq!(h("x-wasm-user-agent").as_deref(), Some("wasm-test/1"));
    // :authority, :path, :method, :scheme, then the client's headers (at least host,
    // user-agent, x-remove-me).
    let count: usize = h("x-wasm-header-count").unwrap().parse().unwrap();
    assert!(count >= 7, "{count}");
    // proxy_log lines reach the gateway's log with the module's name.
    assert!(gw.logs().contains("request with"), "{}", gw.logs());
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "gatehouse_filter_duration_seconds_count",
            &[("filter", "wasm")]
        ),
        Some(2.0),
        "request and response phases timed under filter=\"wasm\":\n{metrics}"
    );
}

#[tokio::test]
async fn local_response_filter_answers_without_the_upstream() {
    let (up, gw) = with_guest("local_response", "").await;
    // The route is /api; the guest answers paths that start with /wasm/hello only, so ask
    // with a query the guest ignores on another path first.
    let r = get(&gw, "/api/x", &[("x-deny", "yes")]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-wasm"), Some("denied"));
    assert!(
        header(&r, "x-request-id").is_some(),
        "the gateway's id on a guest's answer"
    );
    assert_eq!(r.text().await.unwrap(), "Access forbidden.\n");
    let r = get(&gw, "/api/x", &[]).await;
    assert_eq!(r.status(), 200, "no x-deny: upstream");
    assert_eq!(
        up.hits(),
        1,
        "the denied request never reached the upstream"
    );
}

#[tokio::test]
async fn local_response_carries_the_guests_status_headers_and_body() {
    let up = TestUpstream::start("app").await;
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("local_response"));
    let yaml = config(up.addr, "", &filter).replace("path_prefix: /api", "path_prefix: /");
    let gw = TestGateway::start(&yaml).await;
    let r = get(&gw, "/wasm/hello", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wasm"), Some("local"));
    assert_eq!(header(&r, "content-type"), Some("text/plain"));
    assert_eq!(r.text().await.unwrap(), "hello from wasm\n");
    assert_eq!(up.hits(), 0);
}

/// An authorization service: `/check` answers 200 with `x-auth-user` for `Bearer good`, 200
/// after a second for `Bearer slow`, 401 with a body otherwise.
async fn authz() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    async fn check(headers: HeaderMap) -> axum::response::Response {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer good") => ([("x-auth-user", "alice")], "ok").into_response(),
            Some("Bearer slow") => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ([("x-auth-user", "slowpoke")], "ok").into_response()
            }
            _ => (axum::http::StatusCode::UNAUTHORIZED, "bad token").into_response(),
        }
    }
    let app = axum::Router::new().route("/check", axum::routing::get(check));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// Upstream `app`, the authorization service (`authz`, its task) and a gateway with one proxy
/// thread whose `/api` route runs the `auth` guest.
async fn auth_gateway() -> (TestUpstream, tokio::task::JoinHandle<()>, TestGateway) {
    let up = TestUpstream::start("app").await;
    let (authz_addr, authz_task) = authz().await;
    let extra =
        format!("  authz:\n    discovery: {{ static: [ {{ address: \"{authz_addr}\" }} ] }}\n");
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("auth"));
    let yaml = format!(
        "runtime:\n  threads: 1\n{}",
        config(up.addr, &extra, &filter)
    );
    let gw = TestGateway::start(&yaml).await;
    (up, authz_task, gw)
}

#[tokio::test]
async fn auth_filter_waits_for_an_upstream_call_without_blocking_others() {
    // One proxy thread: the waiting request must not hold it.
    let (up, authz_task, gw) = auth_gateway().await;

    let r = get(&gw, "/api/me", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last_headers()
            .get("x-auth-user")
            .and_then(|v| v.to_str().ok()),
        Some("alice"),
        "the guest added the user from the call's answer"
    );

    let r = get(&gw, "/api/me", &[("authorization", "Bearer bad")]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-auth"), Some("denied"));
    assert_eq!(header(&r, "x-authz-status"), Some("401"));
    assert_eq!(
        r.text().await.unwrap(),
        "bad token",
        "the call's answer body, relayed"
    );
    assert_eq!(up.hits(), 1);

    // A slow authorization keeps its request waiting, not the proxy thread.
    let slow = {
        let url = gw.url("/api/slow");
        tokio::spawn(async move {
            let start = Instant::now();
            let r = client()
                .get(url)
                .header("authorization", "Bearer slow")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let r = get(&gw, "/api/fast", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status(), 200);
    let fast = start.elapsed();
    let (status, slow_took) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(slow_took >= Duration::from_secs(1), "{slow_took:?}");
    assert!(
        fast < Duration::from_millis(800),
        "a request behind a waiting one took {fast:?}"
    );

    // The authorization service gone: the call fails, the guest answers 403 (fail closed).
    authz_task.abort();
    let _ = authz_task.await;
    let r = get(&gw, "/api/me", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-authz-status"), Some(""));
}

/// Envoy's model: one instance per proxy thread, one context per stream. Fifteen streams in
/// flight at once on one thread, a third of them paused on a slow authorization call while
/// the others are served between their callbacks, each get their own answer, and the
/// thread started one instance for all of them.
#[tokio::test]
async fn a_threads_concurrent_streams_share_one_instance_each_with_its_own_context() {
    let (up, _authz_task, gw) = auth_gateway().await;
    let tasks: Vec<_> = (0..15)
        .map(|i| {
            let token = ["slow", "good", "bad"][i % 3];
            let req = client()
                .get(gw.url(&format!("/api/{i}")))
                .header("authorization", format!("Bearer {token}"));
            tokio::spawn(async move { (token, send(req).await) })
        })
        .collect();
    for t in tasks {
        let (token, r) = t.await.unwrap();
        let user = r.body["headers"]["x-auth-user"]
            .as_str()
            .map(str::to_string);
        match token {
            "slow" => assert_eq!((r.status, user.as_deref()), (200, Some("slowpoke"))),
            "good" => assert_eq!((r.status, user.as_deref()), (200, Some("alice"))),
            _ => {
                assert_eq!(r.status, 403, "{:?}", r.body);
                assert_eq!(r.header("x-authz-status"), Some("401"));
            }
        }
    }
    assert_eq!(up.hits(), 10);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "gatehouse_wasm_instances_created_total", &[]),
        Some(2.0),
        "one instance proved the configuration, one served the thread's 15 streams:\n{metrics}"
    );
}

#[tokio::test]
async fn body_filter_redacts_a_response_and_refuses_a_request_body() {
    let (up, gw) = with_guest("body", ", request_body: true").await;

    // The echo's JSON names the path, so this body contains "secret".
    let r = get(&gw, "/api/secret", &[]).await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with("Original message body (") && body.ends_with(" bytes) redacted.\n"),
        "{body}"
    );
    let r = get(&gw, "/api/plain", &[]).await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["path"], "/api/plain",
        "a body without the word passes untouched"
    );

    let upload = async |body: &'static str| {
        let r = client().post(gw.url("/api/upload")).body(body).send();
        r.await.unwrap()
    };
    let r = upload("this is forbidden").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "forbidden word\n");
    let hits = up.hits();
    let r = upload("this is fine").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["body_bytes"], 12, "the body went upstream whole");
    assert_eq!(up.hits(), hits + 1);
}

/// An upstream that answers with a chunked body written in `pieces`, 50 ms apart (each
/// piece one chunk on the wire, so the gateway reads them one by one), then closes.
async fn piecewise_upstream(pieces: &'static [&'static str]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut sock).await.is_none() {
                    return;
                }
                let start =
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                let _ = sock.write_all(start.as_bytes()).await;
                for p in pieces {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let chunk = format!("{:x}\r\n{p}\r\n", p.len());
                    let _ = sock.write_all(chunk.as_bytes()).await;
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_paused_body_filter_sees_the_chunks_joined_in_order() {
    // The guest pauses on each piece and decides at the end: it must see one body, the
    // pieces in order ("secret" split across two of them), and only then let it through.
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("body"));
    let cases: [(&'static [&'static str], &str); 2] = [
        (
            &["top se", "cret, ", "do not share"],
            "Original message body (24 bytes) redacted.\n",
        ),
        // Untouched, in order.
        (&["one, ", "two, ", "three"], "one, two, three"),
    ];
    for (pieces, expected) in cases {
        let up = piecewise_upstream(pieces).await;
        let gw = TestGateway::start(&config(up, "", &filter)).await;
        let r = get(&gw, "/api/x", &[]).await;
        assert_eq!(r.status(), 200, "{pieces:?}");
        assert_eq!(r.text().await.unwrap(), expected, "{pieces:?}");
    }
}

#[tokio::test]
async fn shared_data_a_timer_and_metrics_span_requests() {
    let (_up, gw) = with_guest("shared_timer", "").await;
    let mut ticks = Vec::new();
    for i in 1..=3 {
        let r = get(&gw, "/api/count", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-hits"),
            Some(i.to_string().as_str()),
            "shared data, CAS"
        );
        ticks.push(header(&r, "x-ticks").unwrap().parse::<u64>().unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // 50 ms ticks on the root context; 300 ms apart at least a few (generous: busy cores).
    assert!(ticks[2] > ticks[0], "the timer ticks: {ticks:?}");
    let metrics = gw
        .metrics_at("gatehouse_wasm_custom_wasm_requests", &[], 3.0)
        .await;
    assert_eq!(
        metric_value(&metrics, "gatehouse_wasm_custom_wasm_requests", &[]),
        Some(3.0),
        "a guest-defined counter on /metrics:\n{metrics}"
    );
}

#[tokio::test]
async fn a_looping_or_hoarding_filter_is_stopped_answered_500_and_counted() {
    let settings = ", vm_config: { call_timeout: 50ms, memory_limit: 16MiB }";
    let (up, gw) = with_guest("looping", settings).await;
    for (mode, reason) in [("loop", "timeout"), ("alloc", "memory")] {
        let start = Instant::now();
        let r = send(client().get(gw.url("/api/x")).header("x-mode", mode)).await;
        assert_eq!(r.status, 500, "{mode}: {:?}", r.body);
        assert_eq!(r.header("x-gatehouse-error"), Some("wasm_trap"));
        assert_eq!(r.body["error"], "wasm_trap");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{mode}: {:?}",
            start.elapsed()
        );
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "gatehouse_wasm_traps_total",
                &[("module", "guest_looping"), ("reason", reason)]
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    // The poisoned instances were dropped; a fresh one serves the next request.
    let r: JsonResponse = send(client().get(gw.url("/api/x"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
    assert!(
        gw.logs().contains("ran past its call time limit"),
        "{}",
        gw.logs()
    );
}

fn validate(dir: &std::path::Path, name: &str, yaml: &str) -> (Option<i32>, String) {
    let path = dir.join(name);
    std::fs::write(&path, gatehouse_testkit::fill(yaml, 1, 2)).unwrap();
    let mut cmd = std::process::Command::new(gatehouse_testkit::gatehouse_bin());
    let (code, _, stderr) = output_of(cmd.args(["validate", "-c"]).arg(&path));
    (code, stderr)
}

#[test]
fn module_errors_are_located_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not.wasm"), "definitely not wasm").unwrap();
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // The filter entry is on line 11 of `config` (with no `extra` upstream), its value from
    // column 9.
    let cases = [
        (
            "missing.yaml",
            "wasm: { module: nowhere.wasm }".to_string(),
            vec![
                "missing.yaml:11:17: routes[0].filters[0].wasm.module: cannot read",
                "nowhere.wasm",
            ],
        ),
        (
            "garbage.yaml",
            "wasm: { module: not.wasm }".to_string(),
            vec![
                "routes[0].filters[0].wasm.module:",
                "not a valid wasm module",
            ],
        ),
        (
            "refused.yaml",
            format!(r#"wasm: {{ module: "{}" }}"#, module("headers")),
            vec![
                "routes[0].filters[0].wasm.module:",
                "proxy_on_configure returned false",
            ],
        ),
        (
            "field.yaml",
            format!(r#"wasm: {{ module: "{}", root: x }}"#, module("bench")),
            vec!["routes[0].filters[0].wasm.root: unknown field `root`"],
        ),
    ];
    for (file, filter, expect) in cases {
        let (code, err) = validate(dir.path(), file, &config(app, "", &filter));
        assert_eq!(code, Some(1), "{file}: {err}");
        for e in expect {
            assert!(err.contains(e), "{file}: expected {e:?} in:\n{err}");
        }
    }
    let good = format!(
        r#"wasm: {{ module: "{}", config: {{ any: [json] }} }}"#,
        module("bench")
    );
    let (code, err) = validate(dir.path(), "good.yaml", &config(app, "", &good));
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn a_reload_reuses_the_compiled_module_and_a_bad_one_keeps_the_old_config() {
    let up = TestUpstream::start("app").await;
    let filter = |cfg: &str| {
        format!(
            r#"wasm: {{ module: "{}", config: "{cfg}" }}"#,
            module("headers")
        )
    };
    let gw = TestGateway::start(&config(up.addr, "", &filter("first"))).await;
    let compiled = |m: &str| metric_value(m, "gatehouse_wasm_modules_compiled_total", &[]);
    assert_eq!(compiled(&gw.metrics().await), Some(1.0));

    // Writes the route's filter config, reloads; the reload's answer, and the config the
    // guest served the next request with.
    let reload = async |cfg: &str| {
        gw.write_config(&config(up.addr, "", &filter(cfg)));
        let r = send(client().post(gw.admin_url("/admin/reload"))).await;
        assert_eq!(get(&gw, "/api/x", &[]).await.status(), 200);
        let served = up.last_headers().get("x-wasm-config").cloned();
        (r, served.and_then(|v| v.to_str().ok().map(str::to_owned)))
    };
    let (r, served) = reload("second").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        served.as_deref(),
        Some("second"),
        "the new configuration is served"
    );
    assert_eq!(
        compiled(&gw.metrics().await),
        Some(1.0),
        "same bytes: not compiled again"
    );

    // An empty configuration is refused by the guest: the reload fails, "second" stays.
    let (r, served) = reload("").await;
    assert_ne!(r.status, 200, "{:?}", r.body);
    assert_eq!(served.as_deref(), Some("second"));
}

/// What an upstream received: method, path, headers and the exact body bytes.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, bytes::Bytes)>>>;

/// An upstream that records every request it receives (body read whole) and answers 200.
async fn recorder() -> (SocketAddr, Seen) {
    let seen: Seen = Default::default();
    let keep = seen.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push((uri.to_string(), headers, body));
                "recorded"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, seen)
}

#[tokio::test]
async fn body_filter_rewrites_a_request_body_up_to_the_routes_limit() {
    let (app, seen) = recorder().await;
    let filter = format!(
        r#"wasm: {{ module: "{}", request_body: true }}"#,
        module("body")
    );
    let yaml = config(app, "", &filter).replace(
        "    upstream: app\n",
        "    upstream: app\n    max_body_bytes: 300000\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let last = || seen.lock().unwrap().last().cloned().unwrap();
    let len_of = |h: &axum::http::HeaderMap| {
        h.get("content-length")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };

    // A small body with a length: rewritten, Content-Length fixed.
    let r = client()
        .post(gw.url("/api/upload"))
        .body("please rewrite-me now")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (path, headers, body) = last();
    assert_eq!(path, "/api/upload");
    assert_eq!(&body[..], b"please rewritten by wasm now");
    assert_eq!(len_of(&headers).as_deref(), Some("28"));

    // A chunked body of 200 KB (past pingora's 64 KiB replay buffer) with the word at its
    // end: rewritten whole and sent with a Content-Length instead of chunked.
    let mut big = "x".repeat(200_000);
    big.push_str("rewrite-me");
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(16 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let r = client()
        .post(gw.url("/api/big"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, headers, body) = last();
    let expected = format!("{}rewritten by wasm", "x".repeat(200_000));
    assert_eq!(body.len(), expected.len());
    assert!(body == expected.as_bytes(), "the rewritten 200 KB body");
    assert_eq!(len_of(&headers), Some(expected.len().to_string()));
    assert!(headers.get("transfer-encoding").is_none(), "{headers:?}");

    // 250 KB the module leaves alone: the client's exact bytes reach the upstream.
    let untouched: Vec<u8> = (0..250_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = client()
        .post(gw.url("/api/same"))
        .body(untouched.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, headers, body) = last();
    assert!(body[..] == untouched[..], "{} bytes arrived", body.len());
    assert_eq!(len_of(&headers).as_deref(), Some("250000"));

    // Past the route's max_body_bytes: 413, the upstream never asked.
    let before = seen.lock().unwrap().len();
    let r = send(client().post(gw.url("/api/huge")).body(vec![b'z'; 400_000])).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// A service for the `calls` guest: `/a` answers only once `/b` has arrived (so the two calls
/// must be in flight together; it gives up with 504 after 5 s), `/b` answers at once, `/c`
/// answers `from-c`.
async fn call_service() -> SocketAddr {
    use std::sync::Arc;
    let b_arrived = Arc::new(tokio::sync::Notify::new());
    let (for_a, for_b) = (b_arrived.clone(), b_arrived);
    let app = axum::Router::new()
        .route(
            "/a",
            axum::routing::get(move || {
                let b = for_a.clone();
                async move {
                    match tokio::time::timeout(Duration::from_secs(5), b.notified()).await {
                        Ok(()) => (axum::http::StatusCode::OK, "a-after-b"),
                        Err(_) => (axum::http::StatusCode::GATEWAY_TIMEOUT, "b never came"),
                    }
                }
            }),
        )
        .route(
            "/b",
            axum::routing::get(move || {
                let b = for_b.clone();
                async move {
                    b.notify_one();
                    "b"
                }
            }),
        )
        .route("/c", axum::routing::get(|| async { "from-c" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn http_calls_run_concurrently_and_from_the_response_phase() {
    let up = TestUpstream::start("app").await;
    let svc = call_service().await;
    let extra = format!("  svc:\n    discovery: {{ static: [ {{ address: \"{svc}\" }} ] }}\n");
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("calls"));
    // One proxy thread: the waiting request must not hold it.
    let yaml = format!(
        "runtime:\n  threads: 1\n{}",
        config(up.addr, &extra, &filter)
    );
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..2 {
        let r = get(&gw, "/api/x", &[]).await;
        assert_eq!(r.status(), 200);
        let seen = up.last_headers();
        let h = |n: &str| {
            seen.get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // /a answers only while /b is in flight too: both answers reached the guest.
        assert_eq!(h("x-call-a").as_deref(), Some("200 a-after-b"));
        assert_eq!(h("x-call-b").as_deref(), Some("200 b"));
        // The response phase waited for its own call.
        assert_eq!(header(&r, "x-call-c"), Some("200 from-c"));
    }
    assert_eq!(up.hits(), 2);
}

/// An upstream that answers every request with a chunked body `hello` ending with the
/// trailers `x-upstream: up-value` and `x-drop-me: 1`, then closes the connection.
async fn trailing_upstream() -> SocketAddr {
    let (addr, _task) = raw_upstream(|| {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-upstream\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\nx-upstream: up-value\r\n\
         x-drop-me: 1\r\n\r\n"
            .to_string()
    })
    .await;
    addr
}

/// The raw HTTP/1.1 response to `GET path` (the connection closed after it).
async fn raw_get(gw: &TestGateway, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("the response ends")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The trailer section of a raw chunked response (after the last chunk `0`).
fn trailer_section(raw: &str) -> &str {
    let at = raw.rfind("\r\n0\r\n").expect("a last chunk");
    &raw[at + 5..]
}

#[tokio::test]
async fn response_trailers_reach_the_module_and_the_client() {
    let up = trailing_upstream().await;
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("trailers"));
    let yaml = config(up, "", &filter).replace(
        "routes:\n",
        "routes:\n  - name: plain\n    match: { path_prefix: /plain }\n    upstream: app\n",
    );
    let gw = TestGateway::start(&yaml).await;

    // Without a filter the upstream's trailers go through as they came.
    let raw = raw_get(&gw, "/plain").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\r\n5\r\nhello\r\n"), "{raw}");
    assert_eq!(
        trailer_section(&raw),
        "x-upstream: up-value\r\nx-drop-me: 1\r\n\r\n"
    );

    // The module read them, edited them, and the body still came whole before them.
    let raw = raw_get(&gw, "/api/t").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\r\nx-wasm-request-trailers: 0\r\n"), "{raw}");
    assert!(raw.contains("\r\n5\r\nhello\r\n"), "{raw}");
    let mut fields: Vec<&str> = trailer_section(&raw)
        .trim_end_matches("\r\n\r\n")
        .split("\r\n")
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "x-upstream: up-value",
            "x-wasm-saw-upstream: up-value",
            "x-wasm-trailer: added"
        ],
        "{raw}"
    );
}

#[tokio::test]
async fn request_trailers_reach_the_module_and_follow_the_body_upstream() {
    use crate::support::raw::{Answer, Raw, RecordingUpstream};
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("trailers"));
    let yaml = config(up.addr, "", &filter).replace(
        "routes:\n",
        "routes:\n  - name: plain\n    match: { path_prefix: /plain }\n    upstream: app\n",
    );
    let gw = TestGateway::start(&yaml).await;
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\nx-drop-me: 1\r\n\
             content-length: 99\r\nhost: evil\r\n\r\n"
        )
    };
    let mut c = Raw::connect(gw.port).await;

    // Without a filter the trailers follow the body as they came, less the fields a trailer
    // cannot carry (framing, routing: RFC 9110 §6.5.1).
    let mut answers = Vec::new();
    for path in ["/plain", "/api/t"] {
        c.send(post(path).as_bytes()).await;
        let r = c.expect_response("an answer").await;
        assert_eq!(r.status, 200, "{path}: {}", gw.logs());
        answers.push(r);
    }
    // The module saw two trailers: the sanitized set.
    assert_eq!(
        answers[1].header("x-wasm-request-trailers").as_deref(),
        Some("2")
    );

    let reqs = up.requests();
    assert_eq!(reqs.len(), 2, "{:?}", up.conns());
    for r in &reqs {
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("transfer-encoding"), ["chunked"]);
    }
    assert_eq!(reqs[0].trailers, ["x-checksum: abc", "x-drop-me: 1"]);
    let mut edited = reqs[1].trailers.clone();
    edited.sort_unstable();
    assert_eq!(edited, ["x-checksum: abc", "x-wasm-saw-checksum: abc"]);
    assert!(up.conns().iter().all(|c| !c.garbage), "{:?}", up.conns());
}
