//! Active health checks: a failing check removes an endpoint and a passing one restores it,
//! the initial unhealthy state, and the fast JSON 503 when no endpoint is healthy.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn failing_health_check_removes_and_restores_an_endpoint() {
    let [a, b] = upstreams(["a", "b"]).await;
    let ups = checked_upstream("app", &[a.addr, b.addr], "300ms", "healthy");
    let gw = TestGateway::start(&config(&ups, &route("app", "/", "app"))).await;
    let (ea, eb) = (a.addr.to_string(), b.addr.to_string());
    let healthy = async |ep: &str| {
        metric(
            &gw,
            "gatehouse_upstream_endpoint_healthy",
            &[("upstream", "app"), ("endpoint", ep)],
        )
        .await
    };
    assert!(
        eventually(Duration::from_secs(5), async || healthy(&ea).await == 1.0
            && healthy(&eb).await == 1.0)
        .await
    );

    a.set_health(503);
    let t0 = Instant::now();
    assert!(eventually(Duration::from_secs(10), async || healthy(&ea).await == 0.0).await);
    // interval 300ms x threshold 2 (+10% jitter, +a tick); generous for 2 busy cores.
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "removed after {took:?}");
    let hits_a = a.hits();
    for _ in 0..6 {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.headers()["x-upstream"], "b");
    }
    assert_eq!(a.hits(), hits_a);
    let eps = endpoints(&gw, "app").await;
    let ja = eps.iter().find(|e| e["address"] == ea).unwrap();
    assert_eq!(
        (ja["healthy"].as_bool(), ja["health_check"].as_str()),
        (Some(false), Some("unhealthy"))
    );

    a.set_health(200);
    assert!(eventually(Duration::from_secs(10), async || healthy(&ea).await == 1.0).await);
    let seen: BTreeSet<String> = {
        let mut s = BTreeSet::new();
        for _ in 0..4 {
            let r = client().get(gw.url("/x")).send().await.unwrap();
            s.insert(r.headers()["x-upstream"].to_str().unwrap().to_string());
        }
        s
    };
    assert_eq!(seen, ["a".to_string(), "b".to_string()].into());
    let m = gw.metrics().await;
    let tr = |to| {
        metric_value(
            &m,
            "gatehouse_upstream_health_transitions_total",
            &[("upstream", "app"), ("endpoint", &ea), ("to", to)],
        )
    };
    assert_eq!((tr("unhealthy"), tr("healthy")), (Some(1.0), Some(1.0)));
    let logs = gw.logs();
    assert_eq!(logs.matches("endpoint is unhealthy").count(), 1, "{logs}");
    assert_eq!(logs.matches("endpoint is healthy").count(), 1, "{logs}");
}

#[tokio::test]
async fn initial_state_unhealthy_waits_for_passing_checks() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    // b starts healthy-unverified (default), a must pass 2 checks 3 s apart first.
    let ups = checked_upstream("cold", &[a.addr], "3s", "unhealthy")
        + &checked_upstream("warm", &[b.addr], "3s", "healthy");
    let routes = route("cold", "/cold", "cold") + &route("warm", "/warm", "warm");
    let gw = TestGateway::start(&config(&ups, &routes)).await;
    let started = Instant::now();
    let cold = endpoints(&gw, "cold").await;
    let warm = endpoints(&gw, "warm").await;
    assert_eq!(warm[0]["healthy"], true);
    if started.elapsed() < Duration::from_secs(2) {
        assert_eq!(cold[0]["healthy"], false);
        let r = client().get(gw.url("/cold")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-gatehouse-error"], "no_healthy_endpoint");
    }
    assert_eq!(status_of(&gw, "/warm").await, 200);
    assert!(
        eventually(Duration::from_secs(12), async || status_of(&gw, "/cold")
            .await
            == 200)
        .await
    );
}

#[tokio::test]
async fn all_endpoints_unhealthy_is_a_fast_503_with_a_json_body() {
    let [a, b] = upstreams(["a", "b"]).await;
    let ups = checked_upstream("app", &[a.addr, b.addr], "200ms", "healthy");
    let gw = TestGateway::start(&config(&ups, &route("app", "/", "app"))).await;
    assert_eq!(status_of(&gw, "/x").await, 200);
    a.set_health(500);
    b.set_health(500);
    assert!(
        eventually(Duration::from_secs(10), async || status_of(&gw, "/x").await
            == 503)
        .await
    );
    let hits = a.hits() + b.hits();
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-gatehouse-error"], "no_healthy_endpoint");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_healthy_endpoint");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("no healthy endpoint"), "{message}");
    assert_eq!(
        a.hits() + b.hits(),
        hits,
        "no panic routing: unhealthy endpoints get nothing"
    );
    b.set_health(200);
    assert!(
        eventually(Duration::from_secs(10), async || status_of(&gw, "/x").await
            == 200)
        .await
    );
}
