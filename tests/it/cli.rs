//! The command line: `validate` with located errors and warnings, `route-test`, and the
//! committed JSON schema matching the config model.

use std::process::Command;

use crate::support::output_of;

fn gatehouse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn validate_reports_errors_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "syntax.yaml",
            "listeners: [ { name: a, address: \"127.0.0.1:1\" }\nroutes: []\n",
            &["syntax.yaml:"],
        ),
        (
            "unknown.yaml",
            "listeners:\n  - name: a\n    adress: 127.0.0.1:1\n",
            &["unknown.yaml:3:5: listeners[0].adress: unknown field `adress`", "did you mean `address`?"],
        ),
        (
            "filter.yaml",
            "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] } }\nroutes:\n  - name: r\n    upstream: u\n    match: { path_prefix: / }\n    filters:\n      - headrs: {}\n",
            &["filter.yaml:9:", "routes[0].filters[0]", "unknown filter kind `headrs`", "did you mean `headers`?"],
        ),
        (
            "semantic.yaml",
            "listeners:\n  - { name: a, address: \"127.0.0.1:1\" }\n  - { name: b, address: \"nope\" }\nupstreams:\n  u: { discovery: { static: [] } }\nroutes:\n  - name: r\n    upstream: v\n",
            &[
                "semantic.yaml:3:16: listeners[1].address: \"nope\" is not an ip:port address",
                "semantic.yaml:5:",
                "upstreams.u.discovery.static: the endpoint list is empty",
                "semantic.yaml:8:5: routes[0].upstream: no upstream named \"v\" (defined: u)",
            ],
        ),
        ("duration.yaml", "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nshutdown: { grace_period: 10 parsecs }\n", &["duration.yaml:2:", "shutdown.grace_period", "invalid duration"]),
        ("empty.yaml", "", &["empty.yaml:1:1: the config file is empty"]),
    ];
    for (file, text, expect) in cases {
        let p = dir.path().join(file);
        std::fs::write(&p, text).unwrap();
        let out = gatehouse(&["validate", "-c", p.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "{file}: expected {e:?} in:\n{stderr}");
        }
    }
    // --json for CI
    let p = dir.path().join("semantic.yaml");
    let out = gatehouse(&["validate", "--json", "-c", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3);
    assert_eq!(v["errors"][2]["path"], "routes[0].upstream");
    assert_eq!(v["errors"][2]["line"], 8);
}

#[test]
fn validate_accepts_the_shipped_configs_and_warns_on_shadowing() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/config/gatehouse.yaml")];
    for e in std::fs::read_dir(format!("{root}/config/examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p.display().to_string());
        }
    }
    for f in &files {
        let out = gatehouse(&["validate", "-c", f]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shadow.yaml");
    std::fs::write(&p, "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] } }\nroutes:\n  - { name: all, match: { path_prefix: /api }, upstream: u }\n  - { name: never, match: { path_prefix: /api/ }, upstream: u }\n").unwrap();
    let out = gatehouse(&["validate", "-c", p.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains("route \"never\" can never match"),
        "{stderr}"
    );
}

#[test]
fn route_test_explains_the_match() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/config/gatehouse.yaml");
    let out = gatehouse(&[
        "route-test",
        "-c",
        &cfg,
        "--method",
        "GET",
        "--host",
        "x",
        "--path",
        "/api/a/../b?q=1",
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("route:     api")
            && s.contains("prefix /api")
            && s.contains("forwarded: /b?q=1"),
        "{s}"
    );
    let out = gatehouse(&["route-test", "-c", &cfg, "--path", "/nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("404 no_route"));
}

#[test]
fn committed_schema_is_current() {
    let out = gatehouse(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/gatehouse.schema.json"
    ))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() == committed.trim(),
        "config/gatehouse.schema.json is stale: run `gatehouse schema > config/gatehouse.schema.json`"
    );
}

/// A config whose jwt filter reads its secret from `var`, with a route that has an error
/// (`upstream: nope`) when `broken`, and a non-standard method (a warning) either way.
fn secret_config(dir: &std::path::Path, var: &str, broken: bool) -> std::path::PathBuf {
    let p = dir.join(format!("secret-{broken}.yaml"));
    let upstream = if broken { "nope" } else { "u" };
    std::fs::write(
        &p,
        format!(
            "listeners: [ {{ name: a, address: \"127.0.0.1:1\" }} ]\nupstreams:\n  u: {{ discovery: {{ static: [ {{ address: \"127.0.0.1:2\" }} ] }} }}\nroutes:\n  - name: api\n    upstream: u\n    match: {{ path_prefix: /api, methods: [GET, PSOT] }}\n    filters:\n      - jwt: {{ keys: [ {{ secret_env: {var}, algorithms: [HS256] }} ] }}\n  - {{ name: other, match: {{ path_prefix: /o }}, upstream: {upstream} }}\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn validate_and_route_test_work_without_production_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let var = "GATEHOUSE_TEST_SECRET_NEVER_SET";
    let p = secret_config(dir.path(), var, false);
    let path = p.to_str().unwrap();
    let run = |args: &[&str]| {
        output_of(
            Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .args(args)
                .env_remove(var),
        )
    };
    // Without --no-env the secret is required, as `run` requires it.
    let (code, _, err) = run(&["validate", "-c", path]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("environment variable {var} is not set")),
        "{err}"
    );
    // --no-env: a warning naming the variable, and OK.
    let (code, out, err) = run(&["validate", "--no-env", "-c", path]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains(&format!(
            "warning: {path}: environment variable {var} is not set"
        )),
        "{err}"
    );
    // route-test runs no filter: it needs no secret.
    let (code, out, err) = run(&["route-test", "-c", path, "--path", "/api/x"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("route:     api"), "{out}");
}

#[test]
fn validate_json_keeps_the_warnings_when_there_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_config(dir.path(), "GATEHOUSE_TEST_SECRET_NEVER_SET", true);
    let out = gatehouse(&["validate", "--json", "--no-env", "-c", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["errors"][0]["path"], "routes[1].upstream", "{v}");
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["message"].as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"PSOT\" is not a standard method")),
        "{v}"
    );
}

#[test]
fn config_prints_the_effective_config_with_defaults_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gw.yaml");
    std::fs::write(
        &p,
        "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nupstreams:\n  u: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] } }\nroutes:\n  - name: api\n    upstream: u\n    match: { path_prefix: /api }\n    max_body_bytes: 1MiB\n    filters:\n      - jwt: { keys: [ { secret: an-inline-secret-of-32-bytes-at-least, algorithms: [HS256] } ] }\n",
    )
    .unwrap();
    let out = gatehouse(&["config", "-c", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for default in [
        "max_body_bytes: 1048576",
        "consecutive_failures: 5",
        "endpoint_labels: true",
        "grace_period: 10s",
    ] {
        assert!(text.contains(default), "missing {default:?} in:\n{text}");
    }
    assert!(!text.contains("an-inline-secret"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    // The dump is itself a valid config (secrets aside): it loads with the same shape.
    let dumped = dir.path().join("dumped.yaml");
    std::fs::write(
        &dumped,
        text.replace("<redacted>", "another-inline-secret-of-32-bytes-long"),
    )
    .unwrap();
    let out = gatehouse(&["validate", "-c", dumped.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
