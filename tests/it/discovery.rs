//! Service discovery: DNS, a watched file, and the Redis registry (register, heartbeat,
//! expiry, and an unreachable Redis that keeps the last set).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

/// Discovery errors of `upstream` from `source` (dns, file, redis) so far.
async fn discovery_errors(gw: &TestGateway, upstream: &str, source: &str) -> f64 {
    let labels = [("upstream", upstream), ("source", source)];
    metric(gw, "gatehouse_discovery_errors_total", &labels).await
}

#[tokio::test]
async fn dns_discovery_resolves_localhost() {
    // Whatever `localhost` resolves to here (127.0.0.1, maybe ::1) becomes the endpoint
    // set; an upstream listens on each of those addresses on one port.
    let v4 = TestUpstream::start("dns").await;
    let port = v4.addr.port();
    let resolved: BTreeSet<String> = tokio::net::lookup_host(("localhost", port))
        .await
        .unwrap()
        .map(|a| a.to_string())
        .collect();
    let _v6 = if resolved.iter().any(|a| a.starts_with('[')) {
        Some(TestUpstream::start_on("dns", &format!("[::1]:{port}")).await)
    } else {
        None
    };
    let ups = format!("  app:\n    discovery: {{ dns: {{ name: localhost, port: {port}, refresh: 500ms }} }}\n  gone:\n    discovery: {{ dns: {{ name: no-such-host.invalid, port: 80, refresh: 300ms }} }}\n");
    let routes = route("app", "/app", "app") + &route("gone", "/gone", "gone");
    let gw = TestGateway::start(&config(&ups, &routes)).await;

    assert_eq!(addresses(&gw, "app").await, resolved);
    assert!(endpoints(&gw, "app")
        .await
        .iter()
        .all(|e| e["source"] == "dns" && e["weight"] == 1));
    for _ in 0..4 {
        assert_eq!(status_of(&gw, "/app/x").await, 200);
    }
    // A name that does not resolve: counted, never an endpoint, a fast 503.
    let errs = async || discovery_errors(&gw, "gone", "dns").await;
    assert!(
        eventually(Duration::from_secs(10), async || errs().await >= 2.0).await,
        "dns errors counted"
    );
    assert!(endpoints(&gw, "gone").await.is_empty());
    assert_eq!(status_of(&gw, "/gone").await, 503);
    // Re-resolving an unchanged name keeps the same endpoint objects (their state).
    let since = endpoints(&gw, "app").await[0]["since"].clone();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(endpoints(&gw, "app").await[0]["since"], since);
    assert!(
        !gw.logs()
            .lines()
            .any(|l| l.contains("endpoints changed") && l.contains(r#""upstream":"app""#)),
        "no change was logged:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn file_discovery_follows_edits_and_refuses_a_bad_file() {
    let [a, b] = upstreams(["a", "b"]).await;
    // An absolute path here (relative ones are relative to the config file's directory).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let ups = format!(
        "  app:\n    discovery: {{ file: {{ path: \"{}\" }} }}\n",
        file.display()
    );
    let yaml = config(&ups, &route("app", "/", "app"));
    // A missing endpoint file refuses the config, like a bad config.
    let probe_cfg = dir.path().join("gatehouse.yaml");
    std::fs::write(&probe_cfg, fill(&yaml, 1, 2)).unwrap();
    let out = validate(&probe_cfg);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("upstreams.app.discovery.file.path"),
        "{text}"
    );

    std::fs::write(
        &file,
        format!(
            "- {{ address: \"{}\", weight: 2, metadata: {{ zone: a }} }}\n",
            a.addr
        ),
    )
    .unwrap();
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(addresses(&gw, "app").await, set_of(&[a.addr]));
    let eps = endpoints(&gw, "app").await;
    assert_eq!(
        (eps[0]["source"].as_str(), eps[0]["weight"].as_u64()),
        (Some("file"), Some(2))
    );
    assert_eq!(status_of(&gw, "/x").await, 200);

    // Add b (JSON this time, renamed over): it takes traffic without a config reload.
    let reloads = reload_successes(&gw).await;
    let since_a = eps[0]["since"].clone();
    rename_over(
        &file,
        &format!(
            "[{{\"address\": \"{}\"}}, {{\"address\": \"{}\", \"weight\": 2}}]",
            b.addr, a.addr
        ),
    );
    assert!(wait_addresses(&gw, "app", &[a.addr, b.addr]).await);
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("endpoints changed") && l.contains(r#""upstream":"app""#)),
        "the change is logged:\n{}",
        gw.logs()
    );
    let hits_b = b.hits();
    for _ in 0..6 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    assert_eq!(b.hits() - hits_b, 2, "b has weight 1 of 3");
    let kept = endpoints(&gw, "app")
        .await
        .into_iter()
        .find(|e| e["address"] == a.addr.to_string())
        .unwrap();
    assert_eq!(kept["since"], since_a, "a kept its state");
    assert_eq!(reload_successes(&gw).await, reloads);

    // Remove a (edited in place).
    std::fs::write(&file, format!("- address: \"{}\"\n", b.addr)).unwrap();
    assert!(wait_addresses(&gw, "app", &[b.addr]).await);
    let hits_a = a.hits();
    for _ in 0..3 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    assert_eq!(a.hits(), hits_a);

    // A bad file is refused once and the last good set keeps serving.
    let errs = async || discovery_errors(&gw, "app", "file").await;
    let before = errs().await;
    std::fs::write(&file, "- { address: \"127.0.0.1:1\", weight: 0 }\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || errs().await
            == before + 1.0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        errs().await,
        before + 1.0,
        "an unchanged bad file is reported once"
    );
    assert!(
        gw.logs().contains("[0].weight: must be at least 1"),
        "{}",
        gw.logs()
    );
    assert_eq!(addresses(&gw, "app").await, set_of(&[b.addr]));
    assert_eq!(status_of(&gw, "/x").await, 200);
    std::fs::write(&file, "not: [a list\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || errs().await
            == before + 2.0)
        .await
    );
    assert_eq!(status_of(&gw, "/x").await, 200);
    // Fixed again: applied.
    std::fs::write(&file, format!("- address: \"{}\"\n", a.addr)).unwrap();
    assert!(wait_addresses(&gw, "app", &[a.addr]).await);

    // A reload that changes the upstream (not its discovery) keeps the discovered set and
    // its state; later file edits apply to the new definition.
    let since = endpoints(&gw, "app").await[0]["since"].clone();
    let v2 = yaml.replace(
        "    discovery: { file:",
        "    timeouts: { connect: 700ms }\n    discovery: { file:",
    );
    gw.write_config(&v2);
    assert_applied(&gw, &v2).await;
    assert_eq!(endpoints(&gw, "app").await[0]["since"], since);
    std::fs::write(
        &file,
        format!("- address: \"{}\"\n- address: \"{}\"\n", a.addr, b.addr),
    )
    .unwrap();
    assert!(wait_addresses(&gw, "app", &[a.addr, b.addr]).await);
}

fn redis_upstream_config(url: &str, service: &str) -> String {
    let ups = format!("  app:\n    discovery: {{ redis: {{ service: {service}, refresh: 200ms }} }}\n    timeouts: {{ connect: 500ms }}\n");
    format!("redis: {{ url: \"{url}\" }}\n") + &config(&ups, &route("app", "/", "app"))
}

#[tokio::test]
async fn redis_registry_register_heartbeat_expire() {
    // The shared Redis; a unique service name keeps this test's keys apart.
    let url = "redis://127.0.0.1:6379";
    let reg = gatehouse_registry::Registry::connect(url)
        .await
        .expect("the shared Redis at 127.0.0.1:6379 is required");
    let service = unique("live-ops-reg");
    let [a, b] = upstreams(["a", "b"]).await;
    reg.register(&service, &a.addr.to_string(), 3, Duration::from_secs(60))
        .await
        .unwrap();
    let gw = TestGateway::start(&redis_upstream_config(url, &service)).await;

    assert!(wait_addresses(&gw, "app", &[a.addr]).await);
    let eps = endpoints(&gw, "app").await;
    assert_eq!(
        (eps[0]["source"].as_str(), eps[0]["weight"].as_u64()),
        (Some("redis"), Some(3))
    );
    assert_eq!(status_of(&gw, "/x").await, 200);

    // b registers with a short TTL and one heartbeat, then stops beating: it is dropped.
    reg.register(&service, &b.addr.to_string(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(wait_addresses(&gw, "app", &[a.addr, b.addr]).await);
    let since_a = endpoints(&gw, "app")
        .await
        .into_iter()
        .find(|e| e["address"] == a.addr.to_string())
        .unwrap()["since"]
        .clone();
    reg.heartbeat(&service, &b.addr.to_string(), Duration::from_secs(3))
        .await
        .unwrap();
    let hits_b = b.hits();
    for _ in 0..8 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    assert_eq!(b.hits() - hits_b, 2, "b has weight 1 of 4");
    let dropped_at = Instant::now();
    assert!(wait_addresses(&gw, "app", &[a.addr]).await);
    assert!(dropped_at.elapsed() < Duration::from_secs(8));
    let kept = endpoints(&gw, "app")
        .await
        .into_iter()
        .find(|e| e["address"] == a.addr.to_string())
        .unwrap();
    assert_eq!(
        kept["since"], since_a,
        "a kept its state while b came and went"
    );
    let hits_b = b.hits();
    for _ in 0..4 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    assert_eq!(b.hits(), hits_b);

    // Deregistration empties the set: a fast 503.
    reg.deregister(&service, &a.addr.to_string()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            .is_empty())
        .await
    );
    assert_eq!(status_of(&gw, "/x").await, 503);
}

#[tokio::test]
async fn redis_registry_unreachable_keeps_the_last_set_on_one_connection() {
    let redis = PrivateRedis::start();
    let reg = gatehouse_registry::Registry::connect(&redis.url())
        .await
        .unwrap();
    let service = unique("live-ops-down");
    let a = TestUpstream::start("a").await;
    reg.register(&service, &a.addr.to_string(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    let gw = TestGateway::start(&redis_upstream_config(&redis.url(), &service)).await;
    assert!(wait_addresses(&gw, "app", &[a.addr]).await);

    // Many refreshes (every 200 ms) reuse one connection: no new ones are accepted.
    let accepted = async || {
        let mut c = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let first = accepted().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ~10 refreshes happened; only our own probe connection (and at most the rate
    // limiter's lazily made one) were added.
    let added = accepted().await - first;
    assert!(
        added <= 2,
        "discovery opened {added} new Redis connections in 10 refreshes"
    );

    // Redis goes away: past the member's TTL, the last known set still serves.
    drop(redis);
    let errs = async || discovery_errors(&gw, "app", "redis").await;
    assert!(
        eventually(Duration::from_secs(15), async || errs().await >= 2.0).await,
        "{}",
        gw.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(addresses(&gw, "app").await, set_of(&[a.addr]));
    assert_eq!(status_of(&gw, "/x").await, 200);
    assert!(metric(&gw, "gatehouse_redis_errors_total", &[("op", "discovery")]).await >= 1.0);
}
