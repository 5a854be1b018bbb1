//! Observability: the dashboard's status JSON with the services' DB pools, the Grafana
//! dashboard and alert rules checked against a real scrape of this gateway's /metrics, and
//! that scrape passing `promtool check metrics`.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const SECRET: &str = "observability-test-secret-32-bytes!!";

/// `tls_port`: a second listener with TLS (its certificate files `o.pem`, `o.key` beside the
/// config), so that the TLS series exist.
fn full_config(ok: &std::net::SocketAddr, dead: u16, tls_port: u16) -> String {
    format!(
        r#"listeners:
  - {{ name: public, address: "{{listen}}" }}
  - {{ name: secure, address: "127.0.0.1:{tls_port}", tls: {{ cert: o.pem, key: o.key }} }}
admin: {{ address: "{{admin}}" }}
runtime: {{ threads: 1 }}
redis: {{ url: "redis://127.0.0.1:6379" }}
upstreams:
  payment:
    discovery: {{ static: [ {{ address: "{ok}" }} ] }}
    metrics_path: /metrics
    health_check: {{ path: /health, interval: 1s, timeout: 500ms }}
    circuit_breaker: {{ min_requests: 5 }}
    retry: {{ attempts: 2 }}
    outlier_detection: {{ consecutive_failures: 3 }}
    max_concurrent: 10
  dead:
    discovery: {{ dns: {{ name: localhost, port: {dead} }} }}
    circuit_breaker: {{ min_requests: 5 }}
routes:
  - name: pay
    match: {{ path_prefix: /pay }}
    upstream: payment
    filters:
      - jwt: {{ keys: [ {{ secret_env: OBS_SECRET, algorithms: [HS256] }} ] }}
      - rate_limit: {{ name: per_ip, key: client_ip, limit: 1000, window: 1m }}
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: dead
"#
    )
}

#[tokio::test]
async fn status_shows_service_pools_and_queries_match_a_real_scrape() {
    let ok = TestUpstream::start("payment").await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["obs.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let gw = TestGateway::start_program(
        &gatehouse_bin(),
        &full_config(&ok.addr, free_port(), free_port()),
        &[("o.pem", &cert.pem()), ("o.key", &key.serialize_pem())],
        &[("OBS_SECRET", SECRET)],
    )
    .await;
    for path in ["/pay/x", "/dead/x", "/nothing"] {
        client().get(gw.url(path)).send().await.unwrap();
    }

    let pools_seen = eventually(Duration::from_secs(5), async || {
        let v = admin_json(&gw, "/admin/status").await;
        v["services"].as_array().is_some_and(|s| {
            s.iter().any(|p| {
                p["name"] == "payment"
                    && p["endpoint"] == ok.addr.to_string().as_str()
                    && p["age_seconds"].as_u64().is_some_and(|a| a <= 30)
                    && p["db_pool"]["in_use"] == 3.0
                    && p["db_pool"]["max"] == 10.0
            })
        })
    })
    .await;
    assert!(
        pools_seen,
        "the payment service's DB pool appears on /admin/status"
    );

    let scrape = gw.metrics_when(|m| m.contains("route=\"dead\"")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, &scrape).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/scripts/grafana_metrics.py"))
        .arg(format!("{root}/config/grafana/gatehouse.json"))
        .args(["--rules", &format!("{root}/config/prometheus/alerts.yml")])
        .args(["--check-scrape", file.to_str().unwrap()])
        .arg("--check-scrape")
        .arg(format!("{root}/tests/it/data/services-metrics.txt"))
        // This gateway has no ACME listener: the ACME names come from a scrape after an
        // order from pebble (acme.rs checks that its live scrape still has them).
        .arg("--check-scrape")
        .arg(format!("{root}/tests/it/data/acme-metrics.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "every metric the Grafana dashboard and the alert rules query must be exported:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let a = TestUpstream::start("a").await;
    let gw = gateway_to_a(&a, ALL_TO_A).await;
    for _ in 0..3 {
        get(&gw, "/x").await;
    }
    // Requests are counted in the logging phase, just after the client got its answer.
    let mut text = String::new();
    for _ in 0..100 {
        text = gw.metrics().await;
        if metric_value(
            &text,
            "gatehouse_requests_total",
            &[("route", "all"), ("status_class", "2xx")],
        ) == Some(3.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in [
        "gatehouse_requests_total",
        "gatehouse_request_duration_seconds_bucket",
        "gatehouse_upstream_requests_total",
        "gatehouse_inflight_requests",
        "gatehouse_config_info",
        "gatehouse_build_info",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(
        metric_value(
            &text,
            "gatehouse_requests_total",
            &[
                ("route", "all"),
                ("status_class", "2xx"),
                ("source", "upstream")
            ]
        ),
        Some(3.0)
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by .ci/run (Debian package prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
