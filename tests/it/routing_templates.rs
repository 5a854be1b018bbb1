//! Path templates, captured parameters in rewrites, and the route precedence (priority,
//! exact > template > regex > prefix) on the real gateway.

use crate::support::*;

#[tokio::test]
async fn templates_regexes_and_priority_against_a_catch_all() {
    let app = TestUpstream::start("app").await;
    let root = TestUpstream::start("root").await;
    let routes = r#"  - { name: root, match: { path_prefix: / }, upstream: root }
  - { name: items, match: { path_regex: "/items/[0-9]+" }, upstream: app }
  - name: user
    match: { path_template: "/users/{id}" }
    upstream: app
    rewrite_path: "/v2/accounts/{id}"
  - { name: me, match: { path_template: /users/me }, upstream: root }
  - name: files
    match: { path_template: "/files/{*rest}" }
    upstream: app
    rewrite_path: "/blob/{rest}"
  - { name: maintenance, priority: 10, match: { path_prefix: /users/9 }, upstream: root }
"#;
    let yaml = config(
        &(plain_upstream("app", app.addr) + &plain_upstream("root", root.addr)),
        routes,
    );
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let get = async |path: &str| {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.headers()["x-upstream"].to_str().unwrap().to_string()
    };

    // A regex outranks the catch-all prefix `/`.
    assert_eq!(get("/items/42").await, "app");
    assert_eq!(app.last_path(), "/items/42");
    assert_eq!(get("/items/4x").await, "root");

    // A template's capture goes into the rewrite; the query string follows.
    assert_eq!(get("/users/42?expand=1").await, "app");
    assert_eq!(app.last_path(), "/v2/accounts/42?expand=1");
    // More literal segments first: /users/me beats /users/{id}.
    assert_eq!(get("/users/me").await, "root");
    // One segment only.
    assert_eq!(get("/users/42/extra").await, "root");

    // A catch-all parameter takes the rest of the path.
    assert_eq!(get("/files/a/b/c.txt").await, "app");
    assert_eq!(app.last_path(), "/blob/a/b/c.txt");

    // An explicit priority wins over a template.
    assert_eq!(get("/users/9").await, "root");
    assert_eq!(root.last_path(), "/users/9");
}

#[tokio::test]
async fn encoded_slashes_reject_keep_or_decode_per_route() {
    let app = TestUpstream::start("app").await;
    let routes = r#"  - name: projects
    match: { path_template: "/api/v4/projects/{id}" }
    upstream: app
    encoded_slashes: keep
    rewrite_path: "/projects/{id}"
  - { name: files, match: { path_prefix: /files }, upstream: app, encoded_slashes: decode }
  - { name: other, match: { path_prefix: / }, upstream: app }
"#;
    let yaml = config(&(plain_upstream("app", app.addr)), routes);
    let gw = TestGateway::start(&yaml).await;
    let c = client();
    let status = async |path: &str| c.get(gw.url(path)).send().await.unwrap().status().as_u16();

    // keep: matched as one segment, forwarded encoded (GitLab's project ids).
    assert_eq!(status("/api/v4/projects/group%2fproject").await, 200);
    assert_eq!(app.last_path(), "/projects/group%2Fproject");
    // decode: forwarded as a slash.
    assert_eq!(status("/files/a%2Fb.txt?v=1").await, 200);
    assert_eq!(app.last_path(), "/files/a/b.txt?v=1");
    // ...unless decoding would make a path the gateway did not match.
    let hits = app.hits();
    assert_eq!(status("/files/x%2F..%2F..%2Fadmin").await, 400);
    // reject (the default) stays a 400 bad_path.
    let r = c.get(gw.url("/other/a%2Fb")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-gatehouse-error"], "bad_path");
    assert_eq!(
        app.hits(),
        hits,
        "refused requests never reach the upstream"
    );
}
