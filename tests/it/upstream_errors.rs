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
    // The default retry of a connect error tried once more (one endpoint: the same one).
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_requests_total",
            &[("upstream", "dead"), ("outcome", "connect_error")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_retries_total",
            &[("upstream", "dead"), ("reason", "connect_error")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn with_the_defaults_a_dead_endpoint_costs_clients_nothing_and_is_ejected() {
    let dead = format!("127.0.0.1:{}", free_port());
    let live = TestUpstream::start("live").await;
    let ups = |extra: &str| {
        format!(
            "  app:\n    discovery: {{ static: [ {{ address: \"{dead}\" }}, {{ address: \"{}\" }} ] }}\n{extra}",
            live.addr
        )
    };
    let routes = "  - { name: app, match: { path_prefix: / }, upstream: app }\n";
    let gw = TestGateway::start(&base(&ups(""), routes)).await;
    let mut failed = 0;
    for i in 0..40 {
        // POST too: a refused connection never carried the request, so it is safe to retry.
        let r = if i % 2 == 0 {
            client().get(gw.url("/x")).send().await.unwrap()
        } else {
            client().post(gw.url("/x")).body("b").send().await.unwrap()
        };
        failed += usize::from(r.status() != 200);
    }
    assert_eq!(failed, 0, "no client saw the dead endpoint:\n{}", gw.logs());
    assert_eq!(live.hits(), 40);
    let dead_ep = admin_json(&gw, "/admin/upstreams").await["app"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == dead.as_str())
        .cloned()
        .unwrap();
    assert_eq!(dead_ep["ejected"], true, "{dead_ep}");

    // Both switched off: the dead endpoint gets its share of traffic as 502s.
    let off = TestGateway::start(&base(
        &ups("    retry: null\n    outlier_detection: null\n"),
        routes,
    ))
    .await;
    let mut bad = 0;
    for _ in 0..40 {
        bad += usize::from(client().get(off.url("/x")).send().await.unwrap().status() == 502);
    }
    assert_eq!(bad, 20, "round-robin over two endpoints, one dead");
}
