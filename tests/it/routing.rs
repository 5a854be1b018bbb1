//! Routing: route precedence (exact, prefix, longest wins), path rewriting, and the JSON 404
//! of a request no route takes.

use crate::support::*;

#[tokio::test]
async fn routes_by_precedence_and_rewrites() {
    let [a, b, c, d] = upstreams(["a", "b", "c", "d"]).await;
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
    let r = post(&gw, "/api/user/login", "x").await;
    assert_eq!(upstream_of(r).await, (200, "c".into()));
    assert_eq!(c.last_path(), "/auth/login");
    let r = get_with(&gw, "/api/items?q=1&r=2", &[("x-canary", "1")]).await;
    assert_eq!(upstream_of(r).await, (200, "c".into()));
    let r = get_with(&gw, "/api/items?q=1", &[("host", "shop.example.com")]).await;
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
    let gw = gateway_to_a(
        &a,
        "  - { name: only, match: { path: /only }, upstream: a }\n",
    )
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
