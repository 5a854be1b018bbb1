//! The request context headers the gateway owns (request id, forwarded headers): set by the
//! gateway, never taken from the client.

use crate::support::*;

#[tokio::test]
async fn request_context_headers_are_owned_by_the_gateway() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_to_a(&a, ALL_TO_A).await;
    let r = get_with(
        &gw,
        "/x",
        &[
            ("x-request-id", "client-id-123"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let h = a.last_headers();
    assert_eq!(h["x-request-id"], "client-id-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-client-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let forwarded_host = h["x-forwarded-host"].to_str().unwrap();
    assert!(forwarded_host.starts_with("127.0.0.1:"), "{forwarded_host}");
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
    let r = get_with(&gw, "/x", &[("x-request-id", "bad id with spaces")]).await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(a.last_headers()["x-request-id"], id.as_str());
}
