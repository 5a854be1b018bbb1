//! Path templates, captured parameters in rewrites, and the route precedence (priority,
//! exact > template > regex > prefix) on the real gateway.

use crate::support::*;

#[tokio::test]
async fn templates_regexes_and_priority_against_a_catch_all() {
    let app = TestUpstream::start("app").await;
    let root = TestUpstream::start("root").await;
    let yaml = format!(
        r#"
listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
upstreams:
  app: {{ discovery: {{ static: [ {{ address: "{}" }} ] }} }}
  root: {{ discovery: {{ static: [ {{ address: "{}" }} ] }} }}
routes:
  - {{ name: root, match: {{ path_prefix: / }}, upstream: root }}
  - {{ name: items, match: {{ path_regex: "/items/[0-9]+" }}, upstream: app }}
  - name: user
    match: {{ path_template: "/users/{{id}}" }}
    upstream: app
    rewrite_path: "/v2/accounts/{{id}}"
  - {{ name: me, match: {{ path_template: /users/me }}, upstream: root }}
  - name: files
    match: {{ path_template: "/files/{{*rest}}" }}
    upstream: app
    rewrite_path: "/blob/{{rest}}"
  - {{ name: maintenance, priority: 10, match: {{ path_prefix: /users/9 }}, upstream: root }}
"#,
        app.addr, root.addr
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
