//! Graceful shutdown: SIGTERM lets in-flight requests finish, then the process exits.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let a = TestUpstream::start("a").await;
    a.set_mode(Mode::Sleep(1000));
    let mut gw = TestGateway::start(&base(
        &upstream_yaml("a", &[(&a.addr, 1)]).replace("read: 1s", "read: 5s"),
        "  - { name: all, match: { path_prefix: / }, upstream: a }\n",
    ))
    .await;
    let url = gw.url("/slow");
    let inflight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal(15);
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let started = std::time::Instant::now();
    let status = gw
        .wait_exit(Duration::from_secs(4))
        .expect("exited before the 5s grace period because nothing was in flight");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(4));
    // and it no longer accepts
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .is_err());
}

/// `shutdown.drain_delay`: after SIGTERM the gateway says it is not ready (`/readyz` 503
/// `draining`) while its listeners still accept and answer, and asks clients to close;
/// only when the delay ends do the listeners close and the process exit.
#[tokio::test]
async fn sigterm_with_a_drain_delay_is_not_ready_but_still_serves_until_it_ends() {
    let a = TestUpstream::start("a").await;
    let mut gw = TestGateway::start(
        &base(
            &upstream_yaml("a", &[(&a.addr, 1)]),
            "  - { name: all, match: { path_prefix: / }, upstream: a }\n",
        )
        .replace(
            "shutdown: { grace_period: 5s }",
            "shutdown: { grace_period: 5s, drain_delay: 3s }",
        ),
    )
    .await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready before SIGTERM");

    gw.signal(15);
    let sent = std::time::Instant::now();
    // Within the delay: not ready, and still serving on fresh connections.
    let mut saw_draining = false;
    for _ in 0..40 {
        let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("draining"));
            saw_draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(saw_draining, "/readyz answered 503 draining after SIGTERM");
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = fresh.get(gw.url("/during-delay")).send().await.unwrap();
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "checked inside the delay"
    );
    assert_eq!(r.status(), 200, "the listener still accepts and answers");
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "responses ask clients to close while draining"
    );

    // After the delay the listeners close and, with nothing in flight, the process exits.
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("exited after the drain delay");
    assert!(status.success());
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "did not stop before the drain delay ended ({:?})",
        sent.elapsed()
    );
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .is_err());
}
