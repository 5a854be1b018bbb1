//! Request bodies: the body limit (413 for a declared and for a streamed body) and streaming of
//! large bodies without buffering them (bounded resident memory).

use crate::support::*;

/// A gateway whose one route `name` (every path to `a`) takes bodies up to `max_body_bytes`.
async fn gateway_with_body_limit(a: &TestUpstream, name: &str, max_body_bytes: u64) -> TestGateway {
    let route = format!(
        "  - {{ name: {name}, match: {{ path_prefix: / }}, upstream: a, max_body_bytes: {max_body_bytes} }}\n"
    );
    gateway_to_a(a, &route).await
}

#[tokio::test]
async fn body_limit_is_413_for_declared_and_streamed_bodies() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_with_body_limit(&a, "small", 1024).await;
    let r = post(&gw, "/x", vec![b'x'; 2048]).await;
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
    let ok = post(&gw, "/x", vec![b'x'; 1000]).await;
    assert_eq!(ok.status(), 200);
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
    let gw = gateway_with_body_limit(&a, "up", 2147483648).await;
    get(&gw, "/warm").await;
    let before = rss_kib(gw.pid(), "VmRSS:");
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 512; // 512 MiB
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; CHUNK]))),
    );
    let r = post(&gw, "/upload", reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body_bytes"], (CHUNK * CHUNKS) as u64);
    let peak = rss_kib(gw.pid(), "VmHWM:");
    assert!(
        peak < before + 64 * 1024,
        "gateway RSS grew from {before} KiB to a peak of {peak} KiB for a 512 MiB upload"
    );
}
