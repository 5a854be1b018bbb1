//! Distributed tracing: the gateway continues or starts a W3C trace, forwards it to the
//! upstream with its try's span as parent, names the trace in the access log and in its
//! own error bodies, and exports a server span per request and a client span per try
//! over OTLP (HTTP/protobuf or gRPC) to a receiver inside the test.

use std::time::Duration;

use gatehouse_testkit::{
    AppConfig, Mode, OtlpReceiver, PrivateRedis, ReceivedSpan, TestGateway, TestUpstream,
    KIND_CLIENT, KIND_SERVER, STATUS_ERROR,
};

use crate::support::{assert_applied, get, get_with};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(15);

/// The `tracing` section sending to `rx` in batches every 100 ms.
fn tracing_to(rx: &OtlpReceiver, protocol: &str, ratio: f64) -> String {
    format!(
        "tracing: {{ otlp_endpoint: \"{}\", protocol: {protocol}, sampler: {{ ratio: {ratio} }}, service_name: edge, scheduled_delay: 100ms }}",
        rx.endpoint()
    )
}

/// A gateway tracing to `rx` at `ratio`: route `api` (prefix `/api`) to `app` and route
/// `flaky` to `bad` (retried once on 503).
fn config(
    up: &TestUpstream,
    bad: &TestUpstream,
    rx: &OtlpReceiver,
    protocol: &str,
    ratio: f64,
) -> String {
    AppConfig::new(&[up.addr])
        .top(&tracing_to(rx, protocol, ratio))
        .upstreams(&format!(
            "  bad:\n    discovery: {{ static: [ {{ address: \"{}\" }} ] }}\n    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 2ms }}, budget: 1.0 }}\n",
            bad.addr
        ))
        .route("api", "/api", &[])
        .to_string()
        + "  - { name: flaky, match: { path_prefix: /flaky }, upstream: bad }\n"
}

/// The parts of a `traceparent` (version, trace id, parent id, flags).
fn parts(tp: &str) -> [String; 4] {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    [p[0], p[1], p[2], p[3]].map(str::to_string)
}

fn upstream_traceparent(up: &TestUpstream) -> String {
    up.last_headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Whether the gateway process runs the exporter's thread (`gatehouse-otel`).
fn has_export_thread(gw: &TestGateway) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", gw.pid())).unwrap();
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "gatehouse-otel")
    })
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str, kind: i32) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.kind == kind)
        .collect()
}

/// Waits until `trace` has its server span and `tries` client spans (one per try).
async fn server_and_tries(rx: &OtlpReceiver, trace: &str, tries: usize) -> Vec<ReceivedSpan> {
    rx.wait_for(WAIT, |s| {
        of_trace(s, trace, KIND_SERVER).len() == 1 && of_trace(s, trace, KIND_CLIENT).len() == tries
    })
    .await
}

/// GETs `path` (200 expected) as a child of the sampled parent `TRACE`/`PARENT`; returns
/// the `traceparent` sent.
async fn get_in_sampled_trace(gw: &TestGateway, path: &str) -> String {
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = get_with(gw, path, &[("traceparent", &incoming)]).await;
    assert_eq!(r.status(), 200, "{path}");
    incoming
}

async fn bad_upstreams() -> (TestUpstream, TestUpstream) {
    let up = TestUpstream::start("app").await;
    let bad = TestUpstream::start("bad").await;
    bad.set_mode(Mode::Status(503));
    (up, bad)
}

#[tokio::test]
async fn an_incoming_trace_is_continued_with_a_span_per_request_and_per_try() {
    let rx = OtlpReceiver::http().await;
    let (up, bad) = bad_upstreams().await;
    let gw = TestGateway::start(&config(&up, &bad, &rx, "http/protobuf", 1.0)).await;

    // 1. A client's trace continues: same trace id, the server span's parent is the
    //    client's span, the upstream's parent is the try's span.
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = get_with(
        &gw,
        "/api/items?x=1",
        &[("traceparent", &incoming), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(has_export_thread(&gw));
    let [version, trace, try_span_id, flags] = parts(&upstream_traceparent(&up));
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(try_span_id, PARENT);
    assert_eq!(up.last_headers().get("tracestate").unwrap(), "vendor=1");

    let spans = server_and_tries(&rx, TRACE, 1).await;
    let server = of_trace(&spans, TRACE, KIND_SERVER)[0];
    let client = of_trace(&spans, TRACE, KIND_CLIENT)[0];
    assert_eq!(server.service, "edge");
    assert_eq!(server.parent_span_id, PARENT);
    assert_eq!(server.name, "GET /api/*");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/items"),
        ("url.query", "x=1"),
        ("url.scheme", "http"),
        ("http.route", "/api/*"),
        ("http.response.status_code", "200"),
        ("client.address", "127.0.0.1"),
        ("server.address", "127.0.0.1"),
        ("server.port", &gw.port.to_string()),
        ("gatehouse.route", "api"),
        ("gatehouse.upstream", "app"),
        ("gatehouse.tries", "1"),
    ] {
        assert_eq!(server.attr(k), Some(v), "{k} in {server:#?}");
    }
    assert_ne!(server.status, STATUS_ERROR);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        client.span_id, try_span_id,
        "the upstream's parent is the try's span"
    );
    assert_eq!(client.name, "GET");
    for (k, v) in [
        ("server.address", "127.0.0.1"),
        ("server.port", up.addr.port().to_string().as_str()),
        ("gatehouse.retry", "0"),
        ("gatehouse.outcome", "success"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(client.attr(k), Some(v), "{k} in {client:#?}");
    }
    assert!(
        gw.logs().contains(&format!("\"trace_id\":\"{TRACE}\"")),
        "access log names the trace:\n{}",
        gw.logs()
    );

    // 2. No traceparent: a new trace; a retried try is a second client span.
    let r = get(&gw, "/flaky").await;
    assert_eq!(r.status(), 503);
    let [_, new_trace, last_try, flags] = parts(&upstream_traceparent(&bad));
    assert_ne!(new_trace, TRACE);
    assert_eq!(flags, "01");
    let spans = server_and_tries(&rx, &new_trace, 2).await;
    let server = of_trace(&spans, &new_trace, KIND_SERVER)[0];
    assert_eq!(server.parent_span_id, "", "a root span");
    assert_eq!(server.attr("http.response.status_code"), Some("503"));
    assert_eq!(server.attr("gatehouse.tries"), Some("2"));
    assert_eq!(server.attr("error.type"), Some("503"));
    assert_eq!(server.status, STATUS_ERROR);
    let mut tries = of_trace(&spans, &new_trace, KIND_CLIENT);
    tries.sort_by_key(|s| s.attr("gatehouse.retry").map(str::to_string));
    for (i, t) in tries.iter().enumerate() {
        assert_eq!(t.parent_span_id, server.span_id);
        assert_eq!(t.attr("gatehouse.retry"), Some(i.to_string().as_str()));
        assert_eq!(t.attr("gatehouse.outcome"), Some("http_error"));
        assert_eq!(t.attr("http.response.status_code"), Some("503"));
        assert_eq!(
            t.attr("server.port"),
            Some(bad.addr.port().to_string().as_str())
        );
        assert_eq!(t.status, STATUS_ERROR);
    }
    assert_eq!(tries[1].attr("http.request.resend_count"), Some("1"));
    assert_eq!(
        tries[1].span_id, last_try,
        "each try forwards its own span id"
    );

    // 3. The gateway's own error body names the trace beside the request id.
    let r = get(&gw, "/nowhere").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    let trace = body["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    let spans = rx
        .wait_for(WAIT, |s| of_trace(s, &trace, KIND_SERVER).len() == 1)
        .await;
    let server = of_trace(&spans, &trace, KIND_SERVER)[0];
    assert_eq!(server.attr("http.response.status_code"), Some("404"));
    assert_eq!(server.attr("gatehouse.error"), Some("no_route"));
    assert_eq!(server.attr("gatehouse.route"), None);
    assert_eq!(server.name, "GET");
    assert_eq!(of_trace(&spans, &trace, KIND_CLIENT).len(), 0);
}

#[tokio::test]
async fn ratio_zero_keeps_no_new_trace_follows_a_sampled_parent_and_reloads() {
    let rx = OtlpReceiver::http().await;
    let (up, bad) = bad_upstreams().await;
    let gw = TestGateway::start(&config(&up, &bad, &rx, "http/protobuf", 0.0)).await;

    for _ in 0..5 {
        assert_eq!(get(&gw, "/api/a").await.status(), 200);
        let [_, _, _, flags] = parts(&upstream_traceparent(&up));
        assert_eq!(flags, "00", "an unsampled trace still propagates");
    }
    // A sampled parent wins over the ratio (parent-based sampling).
    get_in_sampled_trace(&gw, "/api/b").await;
    let spans = rx
        .wait_for(WAIT, |s| of_trace(s, TRACE, KIND_CLIENT).len() == 1)
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "the ratio-0 requests exported nothing: {spans:#?}"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");

    // The ratio reloads: at 1.0 a new trace is kept.
    let v2 = config(&up, &bad, &rx, "http/protobuf", 1.0);
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    assert_eq!(get(&gw, "/api/c").await.status(), 200);
    let [_, trace, _, flags] = parts(&upstream_traceparent(&up));
    assert_eq!(flags, "01");
    rx.wait_for(WAIT, |s| of_trace(s, &trace, KIND_SERVER).len() == 1)
        .await;
}

#[tokio::test]
async fn spans_export_over_grpc() {
    let rx = OtlpReceiver::grpc().await;
    let (up, bad) = bad_upstreams().await;
    let gw = TestGateway::start(&config(&up, &bad, &rx, "grpc", 1.0)).await;
    assert_eq!(get(&gw, "/api/g").await.status(), 200);
    let [_, trace, try_span, _] = parts(&upstream_traceparent(&up));
    let spans = server_and_tries(&rx, &trace, 1).await;
    let server = of_trace(&spans, &trace, KIND_SERVER)[0];
    let client = of_trace(&spans, &trace, KIND_CLIENT)[0];
    assert_eq!(
        (client.parent_span_id.as_str(), client.span_id.as_str()),
        (server.span_id.as_str(), try_span.as_str())
    );
    assert_eq!(server.attr("gatehouse.route"), Some("api"));
    assert_eq!(server.service, "edge");
}

#[tokio::test]
async fn without_a_tracing_section_nothing_is_exported_and_headers_pass_through() {
    let rx = OtlpReceiver::http().await;
    let up = TestUpstream::start("app").await;
    // The SDK's own environment points at the receiver: an exporter made by default
    // would find it.
    let yaml = AppConfig::new(&[up.addr])
        .route("api", "/api", &[])
        .to_string();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = TestGateway::start_with_env(&yaml, &env).await;
    assert!(!has_export_thread(&gw));
    let incoming = get_in_sampled_trace(&gw, "/api/x").await;
    assert_eq!(
        upstream_traceparent(&up),
        incoming,
        "passed through untouched"
    );
    let r = get(&gw, "/nowhere").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body.get("trace_id").is_none(), "{body}");
    assert!(!gw.logs().contains("trace_id"), "{}", gw.logs());
    // Give a stray exporter (5 s batches by default) time to show.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(rx.exports(), 0);
}

#[tokio::test]
async fn the_redis_rate_limit_call_is_a_child_span() {
    let redis = PrivateRedis::start();
    let rx = OtlpReceiver::http().await;
    let up = TestUpstream::start("app").await;
    let yaml = AppConfig::new(&[up.addr])
        .top(&tracing_to(&rx, "http/protobuf", 1.0))
        .top(&format!("redis: {{ url: \"{}\", timeout: 1s }}", redis.url()))
        .route(
            "limited",
            "/api",
            &["rate_limit: { name: per_client, key: client_ip, limit: 100, window: 1m, on_redis_error: fail_closed }"],
        )
        .to_string();
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw, "/api/x").await.status(), 200);
    let [_, trace, _, _] = parts(&upstream_traceparent(&up));
    let spans = rx
        .wait_for(WAIT, |s| {
            s.iter().filter(|x| x.trace_id == trace).count() == 3
        })
        .await;
    let server = of_trace(&spans, &trace, KIND_SERVER)[0];
    let redis_span = spans
        .iter()
        .find(|s| s.trace_id == trace && s.name == "redis rate_limit")
        .unwrap_or_else(|| panic!("no Redis span in {spans:#?}"));
    assert_eq!(redis_span.kind, KIND_CLIENT);
    assert_eq!(redis_span.parent_span_id, server.span_id);
    assert_eq!(redis_span.attr("db.system.name"), Some("redis"));
    assert_eq!(redis_span.attr("gatehouse.limit"), Some("per_client"));
    assert_eq!(redis_span.attr("gatehouse.allowed"), Some("true"));
    assert_ne!(redis_span.status, STATUS_ERROR);
}
