//! Requests pingora's HTTP/1 parser refuses before any proxy phase runs (a control byte
//! in the method, a malformed header field name, binary garbage, 256 or more header fields, a header section over
//! the limit) get the gateway's own answer: the JSON error body, `X-Gatehouse-Error`,
//! `X-Request-Id`, one access-log line and the request metric with `source="gateway"`
//! (vendor patch 5), never pingora's bare page.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Writes `bytes` on a fresh connection and reads until the gateway closes it (10 s at
/// most); returns the response head (lower-cased) and body.
async fn exchange(port: u16, bytes: &[u8]) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The gateway may answer and close before it read everything: ignore write errors.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&buf)));
    (
        String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase(),
        buf[at + 4..].to_vec(),
    )
}

#[tokio::test]
async fn parser_refusals_go_through_the_gateways_renderer_log_and_metrics() {
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start(&base(
        &format!(
            "  app:\n    discovery: {{ static: [ {{ address: \"{}\" }} ] }}\n",
            app.addr
        ),
        "  - { name: app, match: { path_prefix: / }, upstream: app }\n",
    ))
    .await;

    let many_fields: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "control byte in the method",
            b"G\x01T / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            "http/1.1 400",
            "protocol_error",
        ),
        (
            "space in a header field name",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nBad Name: v\r\n\r\n".to_vec(),
            "http/1.1 400",
            "protocol_error",
        ),
        (
            "binary garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            "http/1.1 400",
            "protocol_error",
        ),
        (
            "300 header fields",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n").into_bytes(),
            "http/1.1 431",
            "header_fields_too_large",
        ),
    ];
    for (name, bytes, status_line, code) in &cases {
        let (head, body) = exchange(gw.port, bytes).await;
        assert!(head.starts_with(status_line), "{name}: {head}");
        assert!(
            head.contains(&format!("x-gatehouse-error: {code}")),
            "{name}: {head}"
        );
        assert!(head.contains("x-request-id: "), "{name}: {head}");
        assert!(!head.contains("server: pingora"), "{name}: {head}");
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{name}: JSON body ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(v["error"], *code, "{name}");
        assert!(v["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    }
    assert_eq!(app.hits(), 0, "nothing reached the upstream");

    let n = cases.len() as f64;
    let series = [
        ("route", "(none)"),
        ("status_class", "4xx"),
        ("source", "gateway"),
    ];
    let m = gw.metrics_at("gatehouse_requests_total", &series, n).await;
    assert_eq!(
        metric_value(&m, "gatehouse_requests_total", &series),
        Some(n),
        "one request metric per refusal"
    );
    let logs = gw.logs();
    let access: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(
        access.len(),
        cases.len(),
        "one access-log line each:\n{logs}"
    );
    assert_eq!(
        access
            .iter()
            .filter(|v| v["fields"]["error"] == "protocol_error")
            .count(),
        3
    );
}
