//! Upstreams that break HTTP, on raw sockets: a body cut short of its `Content-Length`
//! and an answer that is not HTTP at all. Each is its own outcome (`truncated`,
//! `protocol_error`) in the metrics, the log, the breaker and the client's answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const REQUESTS: &str = "gatehouse_upstream_requests_total";

/// The labels of upstream `app`'s tries with `outcome`.
fn outcome(outcome: &str) -> [(&'static str, &str); 2] {
    [("upstream", "app"), ("outcome", outcome)]
}

/// An upstream that answers every request (once its head arrived) with `answer`, byte for
/// byte, then closes the connection.
async fn scripted_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut sock).await.is_none() {
                    return;
                }
                let _ = sock.write_all(answer).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// `GET path` on a fresh connection; returns everything the gateway sent until it closed
/// the connection, and whether it did close it within 10 s.
async fn get_until_close(port: u16, path: &str) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Keep-alive on purpose: only the gateway's close ends the read.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .is_ok();
    (buf, closed)
}

fn head_and_body(bytes: &[u8]) -> (String, &[u8]) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&bytes[..at]).to_ascii_lowercase(),
        &bytes[at + 4..],
    )
}

fn one_upstream(addr: SocketAddr, extra: &str) -> String {
    base(
        &format!(
            "  app:\n    discovery: {{ static: [ {{ address: \"{addr}\" }} ] }}\n    timeouts: {{ connect: 500ms, read: 2s }}\n{extra}"
        ),
        "  - { name: app, match: { path_prefix: / }, upstream: app }\n",
    )
}

#[tokio::test]
async fn truncated_upstream_body_is_a_failure_and_the_client_connection_is_closed() {
    let up = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    // Two failures of two calls open the breaker; the third request never reaches it.
    let cb = "    circuit_breaker: { failure_rate: 0.5, min_requests: 2, window: 30s, open_for: 30s, half_open_probes: 1 }\n";
    let gw = TestGateway::start(&one_upstream(up, cb)).await;

    for i in 0..2 {
        let (bytes, closed) = get_until_close(gw.port, "/cut").await;
        assert!(
            closed,
            "try {i}: the gateway closed the client's connection"
        );
        let (head, body) = head_and_body(&bytes);
        assert!(head.starts_with("http/1.1 200"), "try {i}: {head}");
        assert!(head.contains("content-length: 100"), "try {i}: {head}");
        assert_eq!(body, b"0123456789", "try {i}: only what the upstream sent");
    }
    let m = gw.metrics_at(REQUESTS, &outcome("truncated"), 2.0).await;
    assert_eq!(
        metric_value(&m, REQUESTS, &outcome("success")),
        Some(0.0),
        "a cut body is never a success"
    );
    let r = get(&gw, "/after").await;
    assert_eq!(r.status(), 503, "the truncations opened the breaker");
    assert_eq!(r.headers()["x-gatehouse-error"], "circuit_open");
    let logs = gw.logs();
    assert_eq!(
        logs.matches("upstream response body cut short").count(),
        2,
        "one warning per truncated response:\n{logs}"
    );
    assert!(
        logs.contains("upstream_truncated"),
        "the access log names it:\n{logs}"
    );
}

#[tokio::test]
async fn truncated_upstream_body_feeds_outlier_detection() {
    let up = scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let od = "    outlier_detection: { consecutive_failures: 2, max_ejection_percent: 100 }\n";
    let gw = TestGateway::start(&one_upstream(up, od)).await;
    for _ in 0..2 {
        let (_, closed) = get_until_close(gw.port, "/cut").await;
        assert!(closed);
    }
    let m = gw.metrics_at(REQUESTS, &outcome("truncated"), 2.0).await;
    assert!(
        m.contains("gatehouse_upstream_requests_total"),
        "metrics are served"
    );
    let r = get(&gw, "/after").await;
    assert_eq!(
        r.headers()["x-gatehouse-error"],
        "no_healthy_endpoint",
        "two truncations in a row ejected the only endpoint"
    );
}

#[tokio::test]
async fn garbage_from_upstream_is_a_protocol_error_not_a_reset() {
    let cases: [(&str, &'static [u8]); 2] = [
        (
            "status",
            b"HTTP/1.1 2OO NOT OK\r\nContent-Length: 0\r\n\r\n",
        ),
        ("binary", b"\x00\x01\x02\xff\xfe garbage \x7f\r\n\r\n"),
    ];
    for (name, answer) in cases {
        let up = scripted_upstream(answer).await;
        let gw = TestGateway::start(&one_upstream(up, "")).await;
        let r = get(&gw, "/x").await;
        assert_eq!(r.status(), 502, "{name}");
        assert_eq!(
            r.headers()["x-gatehouse-error"],
            "upstream_protocol_error",
            "{name}"
        );
        let m = gw
            .metrics_at(REQUESTS, &outcome("protocol_error"), 1.0)
            .await;
        assert_eq!(
            metric_value(&m, REQUESTS, &outcome("reset")),
            Some(0.0),
            "{name}: not a reset"
        );
        let logs = gw.logs();
        assert!(
            logs.contains("upstream_protocol_error") && !logs.contains("upstream_reset"),
            "{name}: the log names the protocol error:\n{logs}"
        );
    }
}
