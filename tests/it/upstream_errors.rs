//! Gateway errors of a failing upstream: a dead one is a JSON 502, a slow one a 504 within its
//! read timeout.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn dead_upstream_is_502_and_slow_one_504() {
    let dead = free_port();
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Sleep(3000));
    let ups = format!(
        "  dead:\n    discovery: {{ static: [ {{ address: \"127.0.0.1:{dead}\" }} ] }}\n  slow:\n    discovery: {{ static: [ {{ address: \"{}\" }} ] }}\n    timeouts: {{ connect: 500ms, read: 300ms }}\n",
        slow.addr
    );
    let routes = "  - { name: dead, match: { path_prefix: /dead }, upstream: dead }\n  - { name: slow, match: { path_prefix: /slow }, upstream: slow }\n";
    let gw = TestGateway::start(&base(&ups, routes)).await;
    let r = get(&gw, "/dead").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-gatehouse-error"], "upstream_connect_failed");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_connect_failed");

    let started = std::time::Instant::now();
    let r = get(&gw, "/slow").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-gatehouse-error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the read timeout cut the wait"
    );

    let m = gw
        .metrics_when(|m| {
            metric_value(
                m,
                "gatehouse_upstream_requests_total",
                &[("upstream", "slow"), ("outcome", "timeout")],
            )
            .is_some()
        })
        .await;
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_requests_total",
            &[
                ("route", "dead"),
                ("status_class", "5xx"),
                ("source", "gateway")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_requests_total",
            &[("upstream", "slow"), ("outcome", "timeout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_requests_total",
            &[("upstream", "dead"), ("outcome", "connect_error")]
        ),
        Some(1.0)
    );
}
