//! The demo's log (`gatehouse-services demo`, gateway built in): JSON lines in the
//! gateway's format, no ANSI colours when redirected, access-log durations without float
//! noise; and a demo whose gateway cannot start ends, non-zero, saying why.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn demo_log_lines_are_json_with_rounded_durations() {
    let mut d = Deployment::new("demolog", false);
    let listen = d.demo_gateway(
        "access_log: { enabled: true }\n",
        "user",
        "{ name: user, match: { path_prefix: /api/user }, upstream: user, strip_prefix: /api/user }",
    );
    let mut demo = d.start("demo", &["user"]).await;

    let client = http();
    let url = format!("http://127.0.0.1:{listen}/api/user/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while answered < 3 {
        assert!(
            Instant::now() < deadline,
            "the demo gateway did not answer {url}:\n{}",
            demo.log_tail()
        );
        match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => answered += 1,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(demo.terminate(), "graceful exit:\n{}", demo.log_tail());

    let log = std::fs::read_to_string(&demo.log).unwrap();
    assert!(!log.contains('\u{1b}'), "no ANSI escapes:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert!(access.len() >= 3, "access-log lines:\n{log}");
    for l in &access {
        assert_eq!(l["fields"]["route"], "user", "{l}");
        for key in ["duration_ms", "filter_ms"] {
            let text = l["fields"][key].to_string();
            assert!(l["fields"][key].is_number(), "{key}={text}");
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{key}={text}");
        }
    }
    for l in &lines {
        let fields = l["fields"].as_object().unwrap();
        assert!(fields.keys().all(|k| !k.starts_with("log.")), "{l}");
    }
}

/// How `demo` exited; fails the test if it still runs after 60 s.
async fn exit_status(demo: &mut Proc) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = demo.child.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            demo.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_demo_without_its_gateway_config_fails_loudly_before_starting() {
    let mut d = Deployment::new("demonocfg", false);
    let missing = d.dir.join("nowhere/demo.yaml");
    d.set("GATEHOUSE_DEMO_CONFIG", &missing.display().to_string());
    let mut demo = d.start("demo", &[]).await;
    let status = exit_status(&mut demo).await;
    assert!(!status.success(), "exits non-zero:\n{}", demo.log_tail());
    let log = std::fs::read_to_string(&demo.log).unwrap();
    assert!(
        log.contains("demo gateway config") && log.contains("GATEHOUSE_DEMO_CONFIG"),
        "{log}"
    );
    assert!(
        !log.contains("demo service up"),
        "no service started:\n{log}"
    );
}

#[tokio::test]
async fn a_demo_whose_gateway_cannot_bind_exits_non_zero_naming_the_address() {
    let mut d = Deployment::new("demobusy", false);
    let listen = d.demo_gateway(
        "",
        "user",
        "{ name: user, match: { path_prefix: / }, upstream: user }",
    );
    // The gateway's port is taken: the services alone must not look like a running demo.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let mut demo = d.start("demo", &[]).await;
    let status = exit_status(&mut demo).await;
    assert!(!status.success(), "exits non-zero:\n{}", demo.log_tail());
    let log = std::fs::read_to_string(&demo.log).unwrap();
    assert!(
        log.contains(&format!(
            "error: listener \"public\" cannot bind 127.0.0.1:{listen}: address in use"
        )),
        "{log}"
    );
}

#[tokio::test]
async fn a_demo_whose_gateway_config_is_refused_exits_non_zero() {
    let mut d = Deployment::new("demobadcfg", false);
    let config = d.dir.join("demo.yaml");
    std::fs::write(
        &config,
        "listeners: [ { name: public, address: nowhere } ]\n",
    )
    .unwrap();
    d.set("GATEHOUSE_DEMO_CONFIG", &config.display().to_string());
    let mut demo = d.start("demo", &[]).await;
    let status = exit_status(&mut demo).await;
    assert!(!status.success(), "exits non-zero:\n{}", demo.log_tail());
    let log = std::fs::read_to_string(&demo.log).unwrap();
    assert!(
        log.contains("error: the demo gateway could not start"),
        "{log}"
    );
}

#[tokio::test]
async fn demo_fresh_starts_from_empty_demo_data() {
    let mut d = Deployment::new("demofresh", false);
    d.demo_gateway(
        "",
        "user",
        "{ name: user, match: { path_prefix: / }, upstream: user }",
    );
    let data = std::path::PathBuf::from(&d.env["GATEHOUSE_DATA_DIR"]);
    std::fs::create_dir_all(&data).unwrap();
    let marker = data.join("left-over-from-an-earlier-run");
    std::fs::write(&marker, "x").unwrap();
    let mut demo = d.start_with_args("demo", &["--fresh"], &["user"]).await;
    assert!(!marker.exists(), "--fresh removed the old demo data");
    assert!(data.exists(), "the demo made its data again");
    assert!(demo.terminate(), "graceful exit:\n{}", demo.log_tail());
}
