//! Foundation: routing, rewriting, gateway errors, SWRR, streaming, headers, config
//! errors, the CLI, the schema and /metrics.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn upstream_yaml(name: &str, eps: &[(&std::net::SocketAddr, u32)]) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|(a, w)| format!("{{ address: \"{a}\", weight: {w} }}"))
        .collect();
    format!("  {name}:\n    discovery: {{ static: [ {} ] }}\n    timeouts: {{ connect: 500ms, read: 1s }}\n", list.join(", "))
}

fn base(upstreams: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\nshutdown: {{ grace_period: 5s }}\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

async fn get(gw: &TestGateway, path: &str) -> reqwest::Response {
    client().get(gw.url(path)).send().await.unwrap()
}

/// Sends `GET <path>` byte for byte and returns the status and the response head.
async fn raw_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
}

async fn upstream_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let name = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, name)
}

#[tokio::test]
async fn routes_by_precedence_and_rewrites() {
    let (a, b, c, d) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
        TestUpstream::start("d").await,
    );
    let ups = [("a", &a), ("b", &b), ("c", &c), ("d", &d)]
        .iter()
        .map(|(n, u)| upstream_yaml(n, &[(&u.addr, 1)]))
        .collect::<String>();
    let routes = r#"  - { name: root, match: { path_prefix: / }, upstream: a }
  - { name: api, match: { path_prefix: /api }, upstream: b, strip_prefix: /api }
  - { name: login, match: { path: /api/user/login, methods: [POST] }, upstream: c, rewrite_path: /auth/login }
  - { name: admin, match: { path_prefix: /admin }, upstream: d }
  - { name: host, match: { path_prefix: /api, hosts: ["*.example.com"] }, upstream: d, strip_prefix: /api, add_prefix: /v2 }
  - { name: canary, match: { path_prefix: /api, headers: { x-canary: "1" } }, upstream: c }
"#;
    let gw = TestGateway::start(&base(&ups, routes)).await;

    assert_eq!(upstream_of(get(&gw, "/").await).await, (200, "a".into()));
    assert_eq!(
        upstream_of(get(&gw, "/apis").await).await,
        (200, "a".into())
    );
    assert_eq!(
        upstream_of(get(&gw, "/api/user/login").await).await,
        (200, "b".into())
    );
    assert_eq!(b.last_path(), "/user/login");
    let r = client()
        .post(gw.url("/api/user/login"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_of(r).await, (200, "c".into()));
    assert_eq!(c.last_path(), "/auth/login");
    let r = client()
        .get(gw.url("/api/items?q=1&r=2"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_of(r).await, (200, "c".into()));
    let r = client()
        .get(gw.url("/api/items?q=1"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_of(r).await, (200, "d".into()));
    assert_eq!(d.last_path(), "/v2/items?q=1");

    // Path tricks cannot slip past the /admin route, and escapes are refused. Sent raw:
    // HTTP clients would normalize these paths themselves.
    for tricky in [
        "/%61dmin/x",
        "/api/../admin/x",
        "/api/%2e%2e/admin/x",
        "//admin//x",
        "/admin/./x",
    ] {
        let (status, head) = raw_get(gw.port, tricky).await;
        assert_eq!(status, 200, "{tricky}");
        assert!(head.contains("x-upstream: d"), "{tricky}: {head}");
        assert_eq!(d.last_path(), "/admin/x", "{tricky}");
    }
    for bad in ["/../etc/passwd", "/a/../../b", "/a%2fb", "/a%00b", "/a%zz"] {
        let (status, head) = raw_get(gw.port, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            head.contains("x-gatehouse-error: bad_path"),
            "{bad}: {head}"
        );
    }
}

#[tokio::test]
async fn no_route_is_404_json() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&base(
        &upstream_yaml("a", &[(&a.addr, 1)]),
        "  - { name: only, match: { path: /only }, upstream: a }\n",
    ))
    .await;
    let r = get(&gw, "/other").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-gatehouse-error"], "no_route");
    assert_eq!(r.headers()["content-type"], "application/json");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "no_route");
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn body_limit_is_413_for_declared_and_streamed_bodies() {
    let a = TestUpstream::start("a").await;
    let routes =
        "  - { name: small, match: { path_prefix: / }, upstream: a, max_body_bytes: 1024 }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("a", &[(&a.addr, 1)]), routes)).await;
    let r = client()
        .post(gw.url("/x"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-gatehouse-error"], "body_too_large");
    assert_eq!(
        a.hits(),
        0,
        "a declared oversized body is refused before the upstream"
    );
    // chunked: no content-length, the limit is enforced while streaming
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 512]))),
    );
    let r = client()
        .post(gw.url("/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error {e}"),
    }
    let ok = client()
        .post(gw.url("/x"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn dead_upstream_is_502_and_slow_one_504() {
    let dead = free_port();
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Sleep(3000));
    let ups = format!(
        "  dead:\n    discovery: {{ static: [ {{ address: \"127.0.0.1:{dead}\" }} ] }}\n  slow:\n    discovery: {{ static: [ {{ address: \"{}\" }} ] }}\n    timeouts: {{ connect: 500ms, read: 300ms }}\n",
        slow.addr
    );
    let routes = "  - { name: dead, match: { path_prefix: /dead }, upstream: dead }\n  - { name: slow, match: { path_prefix: /slow }, upstream: slow }\n";
    let gw = TestGateway::start(&base(&ups, routes)).await;
    let r = get(&gw, "/dead").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-gatehouse-error"], "upstream_connect_failed");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_connect_failed");

    let started = std::time::Instant::now();
    let r = get(&gw, "/slow").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-gatehouse-error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the read timeout cut the wait"
    );

    let m = gw
        .metrics_when(|m| {
            metric_value(
                m,
                "gatehouse_upstream_requests_total",
                &[("upstream", "slow"), ("outcome", "timeout")],
            )
            .is_some()
        })
        .await;
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_requests_total",
            &[
                ("route", "dead"),
                ("status_class", "5xx"),
                ("source", "gateway")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_requests_total",
            &[("upstream", "slow"), ("outcome", "timeout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_requests_total",
            &[("upstream", "dead"), ("outcome", "connect_error")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn smooth_weighted_round_robin_is_exact() {
    let (a, b, c) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    );
    let ups = upstream_yaml("pool", &[(&a.addr, 5), (&b.addr, 1), (&c.addr, 1)]);
    let gw = TestGateway::start(&base(
        &ups,
        "  - { name: all, match: { path_prefix: / }, upstream: pool }\n",
    ))
    .await;
    let mut seq = String::new();
    for _ in 0..(7 * 20) {
        let (_, name) = upstream_of(get(&gw, "/").await).await;
        seq.push_str(&name);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 20, 20));
    // smooth: every window of 7 holds exactly 5 a, 1 b, 1 c, and b/c never come in a row
    for w in seq.as_bytes().chunks(7) {
        let count = |ch| w.iter().filter(|x| **x == ch).count();
        assert_eq!((count(b'a'), count(b'b'), count(b'c')), (5, 1, 1), "{seq}");
    }
    assert!(!seq.contains("aaaaa"), "not smooth: {seq}");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn streams_large_bodies_without_buffering() {
    let a = TestUpstream::start("a").await;
    let routes =
        "  - { name: up, match: { path_prefix: / }, upstream: a, max_body_bytes: 2147483648 }\n";
    let gw = TestGateway::start(&base(&upstream_yaml("a", &[(&a.addr, 1)]), routes)).await;
    get(&gw, "/warm").await;
    let before = rss_kib(gw.pid(), "VmRSS:");
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 512; // 512 MiB
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; CHUNK]))),
    );
    let r = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body_bytes"], (CHUNK * CHUNKS) as u64);
    let peak = rss_kib(gw.pid(), "VmHWM:");
    assert!(
        peak < before + 64 * 1024,
        "gateway RSS grew from {before} KiB to a peak of {peak} KiB for a 512 MiB upload"
    );
}

#[tokio::test]
async fn request_context_headers_are_owned_by_the_gateway() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&base(
        &upstream_yaml("a", &[(&a.addr, 1)]),
        "  - { name: all, match: { path_prefix: / }, upstream: a }\n",
    ))
    .await;
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-client-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let h = a.last_headers();
    assert_eq!(h["x-request-id"], "client-id-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-client-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["x-forwarded-host"]
        .to_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(
        h.get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    let ts = h["x-request-timestamp"].to_str().unwrap();
    assert!(
        ts.len() >= 20 && ts.contains('T') && ts.ends_with('Z'),
        "{ts}"
    );

    // an invalid client id is replaced, and the new one is echoed
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(a.last_headers()["x-request-id"], id.as_str());
}

fn gatehouse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn validate_reports_errors_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "syntax.yaml",
            "listeners: [ { name: a, address: \"127.0.0.1:1\" }\nroutes: []\n",
            &["syntax.yaml:"],
        ),
        (
            "unknown.yaml",
            "listeners:\n  - name: a\n    adress: 127.0.0.1:1\n",
            &["unknown.yaml:3:5: listeners[0].adress: unknown field `adress`", "did you mean `address`?"],
        ),
        (
            "filter.yaml",
            "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] } }\nroutes:\n  - name: r\n    upstream: u\n    match: { path_prefix: / }\n    filters:\n      - headrs: {}\n",
            &["filter.yaml:9:", "routes[0].filters[0]", "unknown variant `headrs`", "did you mean `headers`?"],
        ),
        (
            "semantic.yaml",
            "listeners:\n  - { name: a, address: \"127.0.0.1:1\" }\n  - { name: b, address: \"nope\" }\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\", weight: 0 } ] } }\nroutes:\n  - name: r\n    upstream: v\n",
            &[
                "semantic.yaml:3:16: listeners[1].address: \"nope\" is not an ip:port address",
                "semantic.yaml:5:57: upstreams.u.discovery.static[0].weight: weight must be at least 1",
                "semantic.yaml:8:5: routes[0].upstream: no upstream named \"v\" (defined: u)",
            ],
        ),
        ("duration.yaml", "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nshutdown: { grace_period: 10 parsecs }\n", &["duration.yaml:2:", "shutdown.grace_period", "invalid duration"]),
        ("empty.yaml", "", &["the config file is empty"]),
    ];
    for (file, text, expect) in cases {
        let p = dir.path().join(file);
        std::fs::write(&p, text).unwrap();
        let out = gatehouse(&["validate", "-c", p.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "{file}: expected {e:?} in:\n{stderr}");
        }
    }
    // --json for CI
    let p = dir.path().join("semantic.yaml");
    let out = gatehouse(&["validate", "--json", "-c", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3);
    assert_eq!(v["errors"][2]["path"], "routes[0].upstream");
    assert_eq!(v["errors"][2]["line"], 8);
}

#[test]
fn validate_accepts_the_shipped_configs_and_warns_on_shadowing() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/config/gatehouse.yaml")];
    for e in std::fs::read_dir(format!("{root}/config/examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p.display().to_string());
        }
    }
    for f in &files {
        let out = gatehouse(&["validate", "-c", f]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shadow.yaml");
    std::fs::write(&p, "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] } }\nroutes:\n  - { name: all, match: { path_prefix: /api }, upstream: u }\n  - { name: never, match: { path_prefix: /api/ }, upstream: u }\n").unwrap();
    let out = gatehouse(&["validate", "-c", p.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains("route \"never\" can never match"),
        "{stderr}"
    );
}

#[test]
fn route_test_explains_the_match() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/config/gatehouse.yaml");
    let out = gatehouse(&[
        "route-test",
        "-c",
        &cfg,
        "--method",
        "GET",
        "--host",
        "x",
        "--path",
        "/api/a/../b?q=1",
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("route:     api")
            && s.contains("prefix /api")
            && s.contains("forwarded: /b?q=1"),
        "{s}"
    );
    let out = gatehouse(&["route-test", "-c", &cfg, "--path", "/nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("404 no_route"));
}

#[test]
fn committed_schema_is_current() {
    let out = gatehouse(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/gatehouse.schema.json"
    ))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() == committed.trim(),
        "config/gatehouse.schema.json is stale: run `gatehouse schema > config/gatehouse.schema.json`"
    );
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&base(
        &upstream_yaml("a", &[(&a.addr, 1)]),
        "  - { name: all, match: { path_prefix: / }, upstream: a }\n",
    ))
    .await;
    for _ in 0..3 {
        get(&gw, "/x").await;
    }
    // Requests are counted in the logging phase, just after the client got its answer.
    let mut text = String::new();
    for _ in 0..100 {
        text = gw.metrics().await;
        if metric_value(
            &text,
            "gatehouse_requests_total",
            &[("route", "all"), ("status_class", "2xx")],
        ) == Some(3.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in [
        "gatehouse_requests_total",
        "gatehouse_request_duration_seconds_bucket",
        "gatehouse_upstream_requests_total",
        "gatehouse_inflight_requests",
        "gatehouse_config_info",
        "gatehouse_build_info",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(
        metric_value(
            &text,
            "gatehouse_requests_total",
            &[
                ("route", "all"),
                ("status_class", "2xx"),
                ("source", "upstream")
            ]
        ),
        Some(3.0)
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by .ci/run (Debian package prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let a = TestUpstream::start("a").await;
    a.set_mode(Mode::Sleep(1000));
    let mut gw = TestGateway::start(&base(
        &upstream_yaml("a", &[(&a.addr, 1)]).replace("read: 1s", "read: 5s"),
        "  - { name: all, match: { path_prefix: / }, upstream: a }\n",
    ))
    .await;
    let url = gw.url("/slow");
    let inflight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal(15);
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let started = std::time::Instant::now();
    let status = gw
        .wait_exit(Duration::from_secs(4))
        .expect("exited before the 5s grace period because nothing was in flight");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(4));
    // and it no longer accepts
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .is_err());
}
