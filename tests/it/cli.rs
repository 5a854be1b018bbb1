//! The command line: `validate` with located errors and warnings, `route-test`, and the
//! committed JSON schema matching the config model.

use std::process::Command;

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
        ("empty.yaml", "", &["the config file is empty"]),
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
