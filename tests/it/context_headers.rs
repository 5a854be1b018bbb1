//! The request context headers the gateway owns (request id, forwarded headers): set by the
//! gateway, never taken from the client.

use crate::support::*;

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
