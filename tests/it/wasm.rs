//! proxy-wasm filters: guest modules from `tests/wasm-guests/`, written against the published
//! proxy-wasm Rust SDK exactly as for Envoy and built for `wasm32-wasip1`, run by the real
//! gateway in front of real upstreams; each test asserts what an Envoy user expects of the
//! SDK's kind of filter it stands for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatehouse_testkit::{
    client, metric_value, output_of, send, wasm_guest, AppConfig, JsonResponse, TestGateway,
    TestUpstream,
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

#[tokio::test]
async fn auth_filter_waits_for_an_upstream_call_without_blocking_others() {
    let up = TestUpstream::start("app").await;
    let (authz_addr, authz_task) = authz().await;
    let extra =
        format!("  authz:\n    discovery: {{ static: [ {{ address: \"{authz_addr}\" }} ] }}\n");
    let filter = format!(r#"wasm: {{ module: "{}" }}"#, module("auth"));
    // One proxy thread: the waiting request must not hold it.
    let yaml = format!(
        "runtime:\n  threads: 1\n{}",
        config(up.addr, &extra, &filter)
    );
    let gw = TestGateway::start(&yaml).await;

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
