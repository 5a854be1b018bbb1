//! A custom filter kind in a custom binary: `examples/custom_filter.rs` (the `gatehouse`
//! command line plus an `api_key` filter) run as a real gateway in front of a real
//! upstream, reloaded, validated and asked for its schema.
//!
//! The example is built by `cargo test --all-targets` (the test command); alone:
//! `cargo build --example custom_filter` first.

use std::process::Command;

use gatehouse_testkit::{
    client, example_bin, metric_value, output_of, send, AppConfig, JsonResponse, TestGateway,
    TestUpstream,
};

fn config(upstream: std::net::SocketAddr, filter: &str) -> String {
    AppConfig::new(&[upstream])
        .route("api", "/api", &[filter])
        .to_string()
}

const API_KEY: &str = "api_key: { header: x-api-key, keys_file: keys.txt }";

async fn get(gw: &TestGateway, key: Option<&str>) -> JsonResponse {
    let mut req = client().get(gw.url("/api/things"));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    send(req).await
}

fn assert_refused(r: &JsonResponse, message: &str) {
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.header("x-gatehouse-error"), Some("unauthorized"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Key realm=\"gatehouse\"")
    );
    // The gateway's own error format.
    assert_eq!(r.body["error"], "unauthorized");
    assert_eq!(r.body["message"], message);
    assert!(r.body["request_id"].is_string(), "{:?}", r.body);
}

#[tokio::test]
async fn api_key_filter_guards_the_route_and_rereads_its_keys_on_reload() {
    let up = TestUpstream::start("app").await;
    let yaml = config(up.addr, API_KEY);
    let gw = TestGateway::start_program(
        &example_bin("custom_filter"),
        &yaml,
        &[("keys.txt", "# test keys\nkey-one-7f3a\n\n")],
        &[],
    )
    .await;

    assert_refused(&get(&gw, None).await, "missing API key");
    assert_refused(&get(&gw, Some("wrong-key-9c1d")).await, "invalid API key");
    assert_eq!(up.hits(), 0, "a refused request never reaches the upstream");

    let ok = get(&gw, Some("key-one-7f3a")).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["upstream"], "app");
    assert_eq!(up.hits(), 1);
    assert!(
        up.last_headers().get("x-api-key").is_none(),
        "the key is not forwarded (hide_credentials)"
    );

    // Per-filter metrics under the registered name (three request phases, and the response
    // phase of the one request that went upstream), and the access log's filter time.
    let metrics = gw
        .metrics_at(
            "gatehouse_filter_duration_seconds_count",
            &[("filter", "api_key")],
            4.0,
        )
        .await;
    assert_eq!(
        metric_value(
            &metrics,
            "gatehouse_filter_duration_seconds_count",
            &[("filter", "api_key")]
        ),
        Some(4.0),
        "{metrics}"
    );
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(r#""route":"api""#) && l.contains("filter_ms")),
        "{logs}"
    );

    // An edited keys file is read by the next reload: the new key in, the old one out.
    let keys = gw.config_path.with_file_name("keys.txt");
    std::fs::write(&keys, "key-two-51be\n").unwrap();
    let r = send(client().post(gw.admin_url("/admin/reload"))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(get(&gw, Some("key-two-51be")).await.status, 200);
    assert_refused(&get(&gw, Some("key-one-7f3a")).await, "invalid API key");
    assert_eq!(up.hits(), 2);

    // A keys file the filter cannot use is refused on reload; the running keys stay.
    std::fs::write(&keys, "# none left\n").unwrap();
    let r = send(client().post(gw.admin_url("/admin/reload"))).await;
    assert_ne!(r.status, 200, "{:?}", r.body);
    assert_eq!(get(&gw, Some("key-two-51be")).await.status, 200);

    let logs = gw.logs();
    for key in ["key-one-7f3a", "key-two-51be", "wrong-key-9c1d"] {
        assert!(!logs.contains(key), "a key is in the log:\n{logs}");
    }
}

fn run(program: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    output_of(Command::new(program).args(args))
}

#[test]
fn validate_locates_errors_in_a_custom_kind_and_schema_lists_it() {
    let bin = example_bin("custom_filter");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.txt"), "k\n").unwrap();
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let write = |name: &str, filter: &str| {
        let text = gatehouse_testkit::fill(&config(upstream, filter), 1, 2);
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // The filter entry is on line 11 of `config`, its value from column 9.
    let good = write("good.yaml", API_KEY);
    let (code, out, err) = run(&bin, &["validate", "-c", &good]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration OK"), "{out}");

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "field.yaml",
            "api_key: { hedaer: x-api-key, keys_file: keys.txt }",
            &[
                "field.yaml:11:20: routes[0].filters[0].api_key.hedaer: unknown field `hedaer`",
                "did you mean `header`?",
            ],
        ),
        (
            "type.yaml",
            "api_key: { keys_file: keys.txt, hide_credentials: sometimes }",
            &["type.yaml:11:41: routes[0].filters[0].api_key.hide_credentials: invalid type"],
        ),
        (
            "missing.yaml",
            "api_key: { header: x-api-key }",
            &["missing.yaml:11:9: routes[0].filters[0].api_key: missing field `keys_file`"],
        ),
        (
            "file.yaml",
            "api_key: { keys_file: nowhere.txt }",
            &[
                "file.yaml:11:20: routes[0].filters[0].api_key.keys_file: cannot read",
                "nowhere.txt",
            ],
        ),
        (
            "kind.yaml",
            "api_kye: { keys_file: keys.txt }",
            &[
                "kind.yaml:11:9: routes[0].filters[0].api_kye: unknown filter kind `api_kye`",
                "known kinds: jwt, rate_limit, headers, cors, compression, envelope, wasm, api_key",
                "did you mean `api_key`?",
            ],
        ),
    ];
    for (file, filter, expect) in cases {
        let p = write(file, filter);
        let (code, _, err) = run(&bin, &["validate", "-c", &p]);
        assert_eq!(code, Some(1), "{file}: {err}");
        for e in *expect {
            assert!(err.contains(e), "{file}: expected {e:?} in:\n{err}");
        }
    }

    // The plain gateway does not know the kind.
    let (code, _, err) = run(
        &gatehouse_testkit::gatehouse_bin(),
        &["validate", "-c", &good],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown filter kind `api_key`"), "{err}");

    // `schema` of the custom binary has the kind, with its config's fields and docs.
    let (code, out, err) = run(&bin, &["schema"]);
    assert_eq!(code, Some(0), "{err}");
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds = schema["$defs"]["FilterConfig"]["oneOf"].as_array().unwrap();
    let entry = kinds
        .iter()
        .find(|k| k["required"][0] == "api_key")
        .unwrap_or_else(|| panic!("api_key missing from {kinds:?}"));
    assert_eq!(entry["additionalProperties"], false);
    let reference = entry["properties"]["api_key"]["$ref"].as_str().unwrap();
    let name = reference.strip_prefix("#/$defs/").unwrap();
    let def = &schema["$defs"][name];
    assert!(def["properties"]["keys_file"].is_object(), "{def}");
    assert!(
        entry["description"]
            .as_str()
            .is_some_and(|d| d.contains("keys listed in a file")),
        "{entry}"
    );
    let (_, plain, _) = run(&gatehouse_testkit::gatehouse_bin(), &["schema"]);
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    let plain_kinds = plain["$defs"]["FilterConfig"]["oneOf"].as_array().unwrap();
    assert_eq!(
        plain_kinds.len() + 1,
        kinds.len(),
        "the plain gateway has no api_key"
    );
}
