//! Registry tests against the real Redis at 127.0.0.1:6379 (they fail when it is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gatehouse_registry::{Registry, RegistryError};
use gatehouse_testkit::unique;

const REDIS: &str = "redis://127.0.0.1:6379";

async fn registry(name: &str) -> Registry {
    Registry::connect_with_prefix(REDIS, &unique(&format!("test:{name}")))
        .await
        .expect("the shared Redis at 127.0.0.1:6379 must be running for these tests")
}

async fn cleanup(reg: &Registry, service: &str) {
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(reg.members_key(service))
        .arg(reg.weights_key(service))
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Registers one member; a Redis error fails the test.
async fn register(reg: &Registry, service: &str, addr: &str, weight: u32, ttl: Duration) {
    reg.register(service, addr, weight, ttl).await.unwrap();
}

#[tokio::test]
async fn register_list_deregister() {
    let reg = registry("basic").await;
    register(&reg, "user", "127.0.0.1:3001", 3, Duration::from_secs(30)).await;
    register(&reg, "user", "127.0.0.1:3011", 1, Duration::from_secs(30)).await;
    let live = reg.list_live("user").await.unwrap();
    assert_eq!(
        live,
        vec![
            ("127.0.0.1:3001".to_string(), 3),
            ("127.0.0.1:3011".to_string(), 1)
        ]
    );
    reg.deregister("user", "127.0.0.1:3001").await.unwrap();
    assert_eq!(
        reg.list_live("user").await.unwrap(),
        vec![("127.0.0.1:3011".to_string(), 1)]
    );
    assert!(reg.list_live("nobody").await.unwrap().is_empty());
    cleanup(&reg, "user").await;
}

#[tokio::test]
async fn expired_members_are_ignored_and_pruned() {
    let reg = registry("expiry").await;
    register(&reg, "pay", "127.0.0.1:1", 2, Duration::from_millis(200)).await;
    register(&reg, "pay", "127.0.0.1:2", 5, Duration::from_secs(30)).await;
    assert_eq!(reg.list_live("pay").await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reg.list_live("pay").await.unwrap(),
        vec![("127.0.0.1:2".to_string(), 5)]
    );
    // Pruned from Redis itself, weight included.
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(reg.members_key("pay"))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(members, vec!["127.0.0.1:2".to_string()]);
    let w: Option<String> = redis::cmd("HGET")
        .arg(reg.weights_key("pay"))
        .arg("127.0.0.1:1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(w, None);
    cleanup(&reg, "pay").await;
}

#[tokio::test]
async fn heartbeat_keeps_alive_and_stop_deregisters() {
    let reg = registry("heartbeat").await;
    let hb = reg
        .spawn_heartbeat(
            "tx",
            "127.0.0.1:3003",
            4,
            Duration::from_millis(300),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    // Well past one TTL: still live only because the heartbeat refreshes it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        reg.list_live("tx").await.unwrap(),
        vec![("127.0.0.1:3003".to_string(), 4)]
    );
    hb.stop().await;
    assert!(reg.list_live("tx").await.unwrap().is_empty());
    cleanup(&reg, "tx").await;
}

#[tokio::test]
async fn missing_weight_defaults_to_one_and_bad_names_are_refused() {
    let reg = registry("weights").await;
    reg.heartbeat("n", "127.0.0.1:9", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        reg.list_live("n").await.unwrap(),
        vec![("127.0.0.1:9".to_string(), 1)]
    );
    assert!(matches!(
        reg.register("bad name", "x:1", 1, Duration::from_secs(1))
            .await,
        Err(RegistryError::Invalid { .. })
    ));
    cleanup(&reg, "n").await;
}

#[tokio::test]
async fn unreachable_redis_is_a_typed_error_not_a_hang() {
    let start = std::time::Instant::now();
    let r = Registry::connect("redis://127.0.0.1:1").await;
    assert!(
        matches!(r, Err(RegistryError::Redis { op: "connect", .. })),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(matches!(
        Registry::connect("not a url").await,
        Err(RegistryError::InvalidUrl(_))
    ));
}
