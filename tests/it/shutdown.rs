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
