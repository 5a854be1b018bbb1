//! Live operations: discovery (DNS, file, Redis registry), active health checks, hot
//! reload by every trigger, and the load test that reloads 50+ times under traffic.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

// === helpers ===

/// A config with the test's listener and admin placeholders, one thread, short grace.
fn config(upstreams: &str, routes: &str) -> String {
    let mut s = String::from(
        "listeners: [ { name: public, address: \"{listen}\" } ]\nadmin: { address: \"{admin}\" }\nruntime: { threads: 1 }\nshutdown: { grace_period: 2s }\n",
    );
    s.push_str("upstreams:\n");
    s.push_str(upstreams);
    s.push_str("routes:\n");
    s.push_str(routes);
    s
}

fn static_upstream(name: &str, eps: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!("  {name}:\n    discovery: {{ static: [ {} ] }}\n    timeouts: {{ connect: 500ms, read: 5s }}\n{extra}", list.join(", "))
}

fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, upstream: {upstream} }}\n")
}

/// The hash the gateway reports once it runs `yaml` (placeholders filled).
fn hash_of(gw: &TestGateway, yaml: &str) -> String {
    gatehouse::config::hash_text(&fill(yaml, gw.port, gw.admin_port))
}

/// Waits until the gateway runs exactly `yaml`.
async fn wait_applied(gw: &TestGateway, yaml: &str, within: Duration) -> bool {
    let want = hash_of(gw, yaml);
    eventually(within, async || gw.config_hash().await == want).await
}

/// The endpoints of an upstream as `/admin/upstreams` shows them.
async fn endpoints(gw: &TestGateway, upstream: &str) -> Vec<Value> {
    admin_json(gw, "/admin/upstreams").await[upstream]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn addresses(gw: &TestGateway, upstream: &str) -> BTreeSet<String> {
    endpoints(gw, upstream)
        .await
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

fn set_of(addrs: &[std::net::SocketAddr]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

async fn status_of(gw: &TestGateway, path: &str) -> u16 {
    match client().get(gw.url(path)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("GET {path}: {e:?}"),
    }
}

async fn metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

/// Writes `text` to `path` by writing a temporary file beside it and renaming it over
/// (what most editors and config tools do).
fn rename_over(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Replaces the gateway's config file by a symlink to a file in another directory, so
/// that edits of that file are invisible to the directory watcher: only SIGHUP or the
/// admin endpoint can apply them. Returns the real file.
fn detach_config(gw: &TestGateway, outside: &tempfile::TempDir) -> std::path::PathBuf {
    let real = outside.path().join("real.yaml");
    std::fs::copy(&gw.config_path, &real).unwrap();
    let link = gw.config_path.with_extension("link~");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::rename(&link, &gw.config_path).unwrap();
    real
}

// === discovery ===

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
    let errs = async || {
        metric(
            &gw,
            "gatehouse_discovery_errors_total",
            &[("upstream", "gone"), ("source", "dns")],
        )
        .await
    };
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
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["validate", "-c"])
        .arg(&probe_cfg)
        .output()
        .unwrap();
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
    let reloads = metric(
        &gw,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    )
    .await;
    let since_a = eps[0]["since"].clone();
    rename_over(
        &file,
        &format!(
            "[{{\"address\": \"{}\"}}, {{\"address\": \"{}\", \"weight\": 2}}]",
            b.addr, a.addr
        ),
    );
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr, b.addr]))
        .await
    );
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
    assert_eq!(
        metric(
            &gw,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        )
        .await,
        reloads
    );

    // Remove a (edited in place).
    std::fs::write(&file, format!("- address: \"{}\"\n", b.addr)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[b.addr]))
        .await
    );
    let hits_a = a.hits();
    for _ in 0..3 {
        assert_eq!(status_of(&gw, "/x").await, 200);
    }
    assert_eq!(a.hits(), hits_a);

    // A bad file is refused once and the last good set keeps serving.
    let errs = async || {
        metric(
            &gw,
            "gatehouse_discovery_errors_total",
            &[("upstream", "app"), ("source", "file")],
        )
        .await
    };
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
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr]))
        .await
    );

    // A reload that changes the upstream (not its discovery) keeps the discovered set and
    // its state; later file edits apply to the new definition.
    let since = endpoints(&gw, "app").await[0]["since"].clone();
    let v2 = yaml.replace(
        "    discovery: { file:",
        "    timeouts: { connect: 700ms }\n    discovery: { file:",
    );
    gw.write_config(&v2);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(endpoints(&gw, "app").await[0]["since"], since);
    std::fs::write(
        &file,
        format!("- address: \"{}\"\n- address: \"{}\"\n", a.addr, b.addr),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr, b.addr]))
        .await
    );
}

/// A private Redis (the shared one is never stopped), killed on drop.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the tests need a real Redis)");
        let r = Self { port, child };
        assert!(
            eventually(Duration::from_secs(10), async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await,
            "private redis did not start"
        );
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique_service(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("live-ops-{tag}-{}-{nanos}", std::process::id())
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
    let service = unique_service("reg");
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    reg.register(&service, &a.addr.to_string(), 3, Duration::from_secs(60))
        .await
        .unwrap();
    let gw = TestGateway::start(&redis_upstream_config(url, &service)).await;

    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr]))
        .await
    );
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
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr, b.addr]))
        .await
    );
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
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr]))
        .await
    );
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
    let redis = PrivateRedis::start().await;
    let reg = gatehouse_registry::Registry::connect(&redis.url())
        .await
        .unwrap();
    let service = unique_service("down");
    let a = TestUpstream::start("a").await;
    reg.register(&service, &a.addr.to_string(), 1, Duration::from_secs(3))
        .await
        .unwrap();
    let gw = TestGateway::start(&redis_upstream_config(&redis.url(), &service)).await;
    assert!(
        eventually(Duration::from_secs(10), async || addresses(&gw, "app")
            .await
            == set_of(&[a.addr]))
        .await
    );

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
    let errs = async || {
        metric(
            &gw,
            "gatehouse_discovery_errors_total",
            &[("upstream", "app"), ("source", "redis")],
        )
        .await
    };
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

// === health checks ===

fn checked_upstream(
    name: &str,
    eps: &[std::net::SocketAddr],
    interval: &str,
    initial: &str,
) -> String {
    static_upstream(
        name,
        eps,
        &format!(
            "    health_check: {{ path: /health, interval: {interval}, timeout: 300ms, healthy_threshold: 2, unhealthy_threshold: 2, initial_state: {initial} }}\n"
        ),
    )
}

#[tokio::test]
async fn failing_health_check_removes_and_restores_an_endpoint() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
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
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
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
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no healthy endpoint"));
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

// === hot reload ===

fn two_routes(a: &TestUpstream, b: &TestUpstream, with_b_route: bool) -> String {
    let ups = static_upstream("a", &[a.addr], "") + &static_upstream("b", &[b.addr], "");
    let mut routes = route("a", "/a", "a");
    if with_b_route {
        routes += &route("b", "/b", "b");
    }
    config(&ups, &routes)
}

#[tokio::test]
async fn reload_by_file_edit_rename_and_configmap_symlink_swap() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let v1 = two_routes(&a, &b, false);
    let v2 = two_routes(&a, &b, true);
    let gw = TestGateway::start(&v1).await;
    assert_eq!(status_of(&gw, "/b").await, 404);

    // In-place edit.
    gw.write_config(&v2);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 200);
    // Write a temporary file and rename it over.
    rename_over(&gw.config_path, &fill(&v1, gw.port, gw.admin_port));
    assert!(
        wait_applied(&gw, &v1, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 404);

    // Kubernetes ConfigMap: gatehouse.yaml -> ..data/gatehouse.yaml, ..data -> ..v1;
    // an update writes ..v2 and renames a new ..data link over the old one.
    let dir = gw.config_path.parent().unwrap().to_path_buf();
    let publish = |version: &str, yaml: &str| {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::write(
            dir.join(version).join("gatehouse.yaml"),
            fill(yaml, gw.port, gw.admin_port),
        )
        .unwrap();
        std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    publish("..v1", &v1);
    std::os::unix::fs::symlink("..data/gatehouse.yaml", dir.join("link~")).unwrap();
    std::fs::rename(dir.join("link~"), &gw.config_path).unwrap();
    publish("..v2", &v2);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 200);
    publish("..v3", &v1);
    assert!(
        wait_applied(&gw, &v1, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 404);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(0.0)
    );
    assert!(
        metric_value(
            &m,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        )
        .unwrap()
            >= 5.0
    );
    let h = hash_of(&gw, &v1);
    assert_eq!(
        metric_value(&m, "gatehouse_config_info", &[("hash", &h[..16])]),
        Some(1.0)
    );
}

#[tokio::test]
async fn reload_by_sighup_and_admin_endpoint() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let v1 = two_routes(&a, &b, false);
    let v2 = two_routes(&a, &b, true);
    let gw = TestGateway::start(&v1).await;
    let outside = tempfile::tempdir().unwrap();
    let real = detach_config(&gw, &outside);
    // Let the watcher see the link swap (same content: no reload) before editing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ts0 = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;
    assert!(ts0 > 1.0e9);

    // An edit the watcher cannot see stays unapplied...
    std::fs::write(&real, fill(&v2, gw.port, gw.admin_port)).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(gw.config_hash().await, hash_of(&gw, &v1));
    // ...until SIGHUP.
    gw.signal(1);
    assert!(
        wait_applied(&gw, &v2, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert_eq!(status_of(&gw, "/b").await, 200);
    assert!(gw.logs().contains(r#""trigger":"signal""#), "{}", gw.logs());

    // The admin endpoint.
    std::fs::write(&real, fill(&v1, gw.port, gw.admin_port)).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["result"].as_str(), body["changed"].as_bool()),
        (Some("success"), Some(true))
    );
    assert_eq!(body["hash"], hash_of(&gw, &v1));
    assert_eq!(status_of(&gw, "/b").await, 404);
    // Nothing changed: still a success, `changed: false`.
    let body: Value = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["changed"], false);
    assert_eq!(
        client()
            .get(gw.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let ts1 = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;
    assert!(ts1 > ts0);
}

#[tokio::test]
async fn broken_file_keeps_the_old_routes_and_admin_returns_the_errors() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let v2 = two_routes(&a, &b, true);
    let gw = TestGateway::start(&v2).await;
    let failures = async || {
        metric(
            &gw,
            "gatehouse_config_reloads_total",
            &[("result", "failure")],
        )
        .await
    };
    let ts = metric(
        &gw,
        "gatehouse_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .await;

    // A syntax error (watched file): refused with file:line:column; old routes serve.
    let broken = v2.replace(
        "routes:\n",
        "routes:\n  - { name: x, match: { path_prefix: /x }\n",
    );
    gw.write_config(&broken);
    assert!(
        eventually(Duration::from_secs(10), async || failures().await >= 1.0).await,
        "{}",
        gw.logs()
    );
    assert_eq!(gw.config_hash().await, hash_of(&gw, &v2));
    assert_eq!(
        (status_of(&gw, "/a").await, status_of(&gw, "/b").await),
        (200, 200)
    );
    assert!(gw.logs().contains("config reload refused"), "{}", gw.logs());
    assert!(
        gw.logs().contains("gatehouse.yaml:"),
        "the log names file:line:column:\n{}",
        gw.logs()
    );

    // A semantic error through the admin endpoint: 422 with every error as JSON.
    let bad = v2.replace("upstream: b }", "upstream: nope }");
    gw.write_config(&bad);
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"], "failure");
    let e = &body["errors"][0];
    assert_eq!(e["path"], "routes[1].upstream");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{body}");
    assert!(
        e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert!(e["file"].as_str().unwrap().ends_with("gatehouse.yaml"));
    assert_eq!(
        (status_of(&gw, "/a").await, status_of(&gw, "/b").await),
        (200, 200)
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .await,
        ts
    );
    let h = hash_of(&gw, &v2);
    assert_eq!(
        metric(&gw, "gatehouse_config_info", &[("hash", &h[..16])]).await,
        1.0
    );

    // A bad endpoint file named by a reload refuses the config too.
    let with_file = v2.replace(
        "  b:\n    discovery: { static:",
        "  b:\n    discovery: { file: { path: missing.yaml } }\n    x_static:",
    );
    let with_file = with_file
        .lines()
        .filter(|l| !l.contains("x_static"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    gw.write_config(&with_file);
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    assert_eq!(status_of(&gw, "/b").await, 200);
}

#[tokio::test]
async fn restart_only_fields_are_reported_and_admin_config_shows_the_running_one() {
    let a = TestUpstream::start("a").await;
    let ups = static_upstream("a", &[a.addr], "");
    let v1 = String::from("redis: { url: \"redis://user:hunter2@127.0.0.1:6379\" }\n")
        + &config(&ups, &route("a", "/a", "a"));
    let gw = TestGateway::start(&v1).await;
    let cfg = admin_json(&gw, "/admin/config").await;
    assert_eq!(cfg["hash"], hash_of(&gw, &v1));
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        cfg["config"]["redis"]["url"],
        "redis://user:<redacted>@127.0.0.1:6379"
    );
    assert!(!cfg.to_string().contains("hunter2"));

    let other = free_port();
    let v2 = v1
        .replace(
            "address: \"{listen}\"",
            &format!("address: \"127.0.0.1:{other}\""),
        )
        .replace("threads: 1", "threads: 2")
        + &route("a2", "/a2", "a");
    gw.write_config(&v2);
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"], "success", "{body}");
    let warnings: Vec<String> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("listeners") && w.contains("restart")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("runtime") && w.contains("restart")),
        "{warnings:?}"
    );
    assert!(
        gw.logs().contains("takes effect only after a restart"),
        "{}",
        gw.logs()
    );
    // The rest applied; the listener did not move, and /admin/config says so.
    assert_eq!(status_of(&gw, "/a2").await, 200);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", other))
        .await
        .is_err());
    let cfg = admin_json(&gw, "/admin/config").await;
    assert_eq!(
        cfg["config"]["listeners"][0]["address"],
        format!("127.0.0.1:{}", gw.port)
    );
    assert_eq!(cfg["config"]["runtime"]["threads"], 1);
}

#[tokio::test]
async fn reload_carries_endpoint_state_and_drops_removed_endpoints() {
    let (a, b, c) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
    );
    let v = |eps: &[std::net::SocketAddr], interval: &str| {
        config(
            &checked_upstream("app", eps, interval, "healthy"),
            &route("app", "/", "app"),
        )
    };
    let v1 = v(&[a.addr, b.addr], "300ms");
    let gw = TestGateway::start(&v1).await;
    let ea = a.addr.to_string();
    let find = async |addr: &str| {
        endpoints(&gw, "app")
            .await
            .into_iter()
            .find(|e| e["address"] == addr)
    };
    a.set_health(500);
    assert!(
        eventually(Duration::from_secs(10), async || find(&ea)
            .await
            .is_some_and(|e| e["healthy"] == false))
        .await
    );
    let since = find(&ea).await.unwrap()["since"].clone();

    // Add c and change the check interval: a is still unhealthy right after the swap
    // (a fresh endpoint would start healthy and need 2 failed checks).
    let v2 = v(&[a.addr, b.addr, c.addr], "350ms");
    gw.write_config(&v2);
    assert!(wait_applied(&gw, &v2, Duration::from_secs(10)).await);
    let ja = find(&ea).await.unwrap();
    assert_eq!(
        (ja["healthy"].as_bool(), &ja["since"]),
        (Some(false), &since)
    );
    assert_eq!(find(&c.addr.to_string()).await.unwrap()["healthy"], true);

    // Remove a: its series is gone. Bring it back: fresh state (healthy-unverified).
    a.set_health(200);
    let v3 = v(&[b.addr, c.addr], "350ms");
    gw.write_config(&v3);
    assert!(wait_applied(&gw, &v3, Duration::from_secs(10)).await);
    assert!(find(&ea).await.is_none());
    assert_eq!(
        metric_value(
            &gw.metrics().await,
            "gatehouse_upstream_endpoint_healthy",
            &[("endpoint", &ea)]
        ),
        None
    );
    gw.write_config(&v2);
    assert!(wait_applied(&gw, &v2, Duration::from_secs(10)).await);
    let ja = find(&ea).await.unwrap();
    assert_eq!(ja["healthy"], true);
    assert_ne!(ja["since"], since);
}

#[tokio::test]
async fn reload_keeps_rate_limit_counters_of_routes_that_stay() {
    let a = TestUpstream::start("a").await;
    let ups = static_upstream("a", &[a.addr], "");
    let limited = "  - name: limited\n    match: { path_prefix: /l }\n    upstream: a\n    filters:\n      - rate_limit: { name: per_user, key: \"header:x-user\", limit: 3, window: 1m }\n";
    let v1 = config(&ups, limited);
    let v2 = config(&ups, &(limited.to_string() + &route("other", "/o", "a")));
    let gw = TestGateway::start(&v1).await;
    let send = async || {
        client()
            .get(gw.url("/l"))
            .header("x-user", "u1")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((send().await, send().await), (200, 200));
    gw.write_config(&v2);
    assert!(wait_applied(&gw, &v2, Duration::from_secs(10)).await);
    assert_eq!(send().await, 200);
    assert_eq!(
        send().await,
        429,
        "the count of the route's limit survived the reload"
    );
}

// === the load test ===

/// Counts of one load run.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    ok: AtomicU64,
    bad_status: AtomicU64,
    conn_errors: AtomicU64,
    dyn_sent: AtomicU64,
}

#[tokio::test]
async fn load_while_reloading_50_times_drops_nothing() {
    const MIN_RELOADS: usize = 50;
    const MAX_RELOADS: usize = 70;
    const MIN_LOAD: Duration = Duration::from_secs(20);
    const HARD_CAP: Duration = Duration::from_secs(75);

    let stable: Vec<TestUpstream> = futures_util::future::join_all(
        (0..2).map(|i| async move { TestUpstream::start(&format!("s{i}")).await }),
    )
    .await;
    let extra: Vec<TestUpstream> = futures_util::future::join_all(
        (0..3).map(|i| async move { TestUpstream::start(&format!("e{i}")).await }),
    )
    .await;
    let dynamic: Vec<TestUpstream> = futures_util::future::join_all(
        (0..3).map(|i| async move { TestUpstream::start(&format!("d{i}")).await }),
    )
    .await;

    // Version i of the config: the stable route (always), a changing subset of extra
    // endpoints behind it, and a changing set of dynamic routes/upstreams.
    let version = |i: usize| -> (String, Vec<usize>) {
        let mut eps: Vec<std::net::SocketAddr> = stable.iter().map(|u| u.addr).collect();
        for (k, e) in extra.iter().enumerate() {
            if (i >> k) & 1 == 1 {
                eps.push(e.addr);
            }
        }
        let mut ups = static_upstream(
            "stable",
            &eps,
            "    health_check: { path: /health, interval: 500ms, timeout: 300ms }\n",
        );
        let mut routes = route("stable", "/stable", "stable");
        let live: Vec<usize> = (0..dynamic.len())
            .filter(|k| !(i + k).is_multiple_of(3))
            .collect();
        for &k in &live {
            ups += &static_upstream(&format!("dyn{k}"), &[dynamic[k].addr], "");
            routes += &route(&format!("dyn{k}"), &format!("/dyn/{k}"), &format!("dyn{k}"));
        }
        // A comment that changes every time, so every version has its own hash.
        (format!("# version {i}\n") + &config(&ups, &routes), live)
    };

    let (v0, live0) = version(0);
    let gw = Arc::new(TestGateway::start(&v0).await);
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Dynamic routes that exist now; the reloader takes the write lock (waiting for
    // requests in flight on them) before removing one.
    let live = Arc::new(tokio::sync::RwLock::new(live0));

    let mut tasks = Vec::new();
    for c in 0..4 {
        let (gw, load, stop) = (gw.clone(), load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(4)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                load.sent.fetch_add(1, Ordering::Relaxed);
                match http.get(gw.url(&format!("/stable/c{c}/{n}"))).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => load.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("stable body error: {e}");
                            load.conn_errors.fetch_add(1, Ordering::Relaxed)
                        }
                    },
                    Ok(r) => {
                        eprintln!(
                            "stable: status {} {:?}",
                            r.status(),
                            r.headers().get("x-gatehouse-error")
                        );
                        load.bad_status.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("stable: connection error {e:?}");
                        load.conn_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for c in 0..2 {
        let (gw, load, stop, live) = (gw.clone(), load.clone(), stop.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let routes = live.read().await;
                let Some(&k) = routes.get(n % routes.len().max(1)) else {
                    drop(routes);
                    tokio::task::yield_now().await;
                    continue;
                };
                load.sent.fetch_add(1, Ordering::Relaxed);
                load.dyn_sent.fetch_add(1, Ordering::Relaxed);
                match http.get(gw.url(&format!("/dyn/{k}/c{c}"))).send().await {
                    Ok(r)
                        if r.status() == 200
                            && r.headers()
                                .get("x-upstream")
                                .is_some_and(|v| v == format!("d{k}").as_str()) =>
                    {
                        let _ = r.bytes().await;
                        load.ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(r) => {
                        eprintln!(
                            "dyn{k}: status {} {:?}",
                            r.status(),
                            r.headers().get("x-gatehouse-error")
                        );
                        load.bad_status.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("dyn{k}: connection error {e:?}");
                        load.conn_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                drop(routes);
            }
        }));
    }

    // The reloader: file writes (in place and rename-over), every 10th by SIGHUP right
    // after the write, every 7th by the admin endpoint right after the write.
    let started = Instant::now();
    let reloads_before = metric(
        &gw,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    )
    .await;
    let mut applied = 0usize;
    let (mut by_signal, mut by_admin) = (0usize, 0usize);
    let mut i = 0usize;
    while (applied < MIN_RELOADS || started.elapsed() < MIN_LOAD)
        && applied < MAX_RELOADS
        && started.elapsed() < HARD_CAP
    {
        i += 1;
        let (next, next_live) = version(i);
        // Stop using routes about to disappear (waits for their requests in flight).
        {
            let mut l = live.write().await;
            l.retain(|k| next_live.contains(k));
        }
        let text = fill(&next, gw.port, gw.admin_port);
        if i.is_multiple_of(2) {
            std::fs::write(&gw.config_path, &text).unwrap();
        } else {
            rename_over(&gw.config_path, &text);
        }
        if i.is_multiple_of(10) {
            gw.signal(1);
            by_signal += 1;
        } else if i.is_multiple_of(7) {
            let r = client()
                .post(gw.admin_url("/admin/reload"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            by_admin += 1;
        }
        assert!(
            wait_applied(&gw, &next, Duration::from_secs(10)).await,
            "version {i} not applied:\n{}",
            gw.logs()
        );
        applied += 1;
        // Routes that now exist may be used.
        *live.write().await = next_live;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while started.elapsed() < MIN_LOAD {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let m = gw.metrics().await;
    let reloads = metric_value(
        &m,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    )
    .unwrap_or(0.0)
        - reloads_before;
    let refused = metric_value(
        &m,
        "gatehouse_config_reloads_total",
        &[("result", "failure")],
    )
    .unwrap_or(0.0);
    let (sent, ok, bad, conn) = (
        load.sent.load(Ordering::Relaxed),
        load.ok.load(Ordering::Relaxed),
        load.bad_status.load(Ordering::Relaxed),
        load.conn_errors.load(Ordering::Relaxed),
    );
    let extra_hits: Vec<usize> = extra.iter().map(|u| u.hits()).collect();
    println!(
        "LOAD TEST: {sent} requests in {:.1}s ({} on dynamic routes), {ok} ok, {bad} bad status, {conn} connection errors; \
         {applied} config versions applied ({by_signal} by SIGHUP, {by_admin} by POST /admin/reload, the rest by the file watcher), \
         {reloads} successful reloads counted, {refused} refused; extra endpoint hits {extra_hits:?}",
        elapsed.as_secs_f64(),
        load.dyn_sent.load(Ordering::Relaxed),
    );
    assert!(applied >= MIN_RELOADS, "only {applied} reloads");
    assert!(reloads >= MIN_RELOADS as f64);
    assert_eq!(refused, 0.0, "{}", gw.logs());
    assert_eq!((bad, conn), (0, 0), "failed requests during reloads");
    assert_eq!(ok, sent);
    assert!(sent > 1000, "too little load: {sent}");
    assert!(load.dyn_sent.load(Ordering::Relaxed) > 100);
    assert!(
        extra_hits.iter().all(|h| *h > 0),
        "every extra endpoint took traffic while present"
    );
    // In-flight accounting survived every swap: nothing is left counted.
    let idle = async || {
        let ups = admin_json(&gw, "/admin/upstreams").await;
        ups.as_object().unwrap().values().all(|u| {
            u["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["inflight"] == 0)
        })
    };
    assert!(eventually(Duration::from_secs(5), idle).await);
    assert_eq!(metric(&gw, "gatehouse_inflight_requests", &[]).await, 0.0);
}
