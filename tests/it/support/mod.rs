//! Support for the gateway's integration tests: the workspace's shared test kit
//! (ports, private Redis, test upstreams, the gateway launcher, the JSON client) and the
//! gateway-specific helpers (YAML builders, admin queries, config file operations).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

pub use gatehouse_testkit::*;

pub mod https_upstream;
pub mod load;
pub mod pki;
pub mod raw;
pub mod redis_policies;
pub mod tls;

pub fn upstream_yaml(name: &str, eps: &[(&std::net::SocketAddr, u32)]) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|(a, w)| format!("{{ address: \"{a}\", weight: {w} }}"))
        .collect();
    format!("  {name}:\n    discovery: {{ static: [ {} ] }}\n    timeouts: {{ connect: 500ms, read: 1s }}\n", list.join(", "))
}

/// The routes of the single-upstream tests: every path to upstream `a`.
pub const ALL_TO_A: &str = "  - { name: all, match: { path_prefix: / }, upstream: a }\n";

/// A gateway ([`base`] config) with one upstream `a` (the endpoint `a`, weight 1) and
/// `routes`.
pub async fn gateway_to_a(a: &TestUpstream, routes: &str) -> TestGateway {
    TestGateway::start(&base(&upstream_yaml("a", &[(&a.addr, 1)]), routes)).await
}

pub fn base(upstreams: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\nshutdown: {{ grace_period: 5s }}\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

pub async fn get(gw: &TestGateway, path: &str) -> reqwest::Response {
    client().get(gw.url(path)).send().await.unwrap()
}

/// `POST <path>` with `body` through the shared client; panics when no answer comes.
pub async fn post(
    gw: &TestGateway,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client().post(gw.url(path)).body(body).send().await.unwrap()
}

/// `GET <path>` with extra request headers; panics when no answer comes.
pub async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.send().await.unwrap()
}

/// The status of `GET <path>` on the admin listener.
pub async fn admin_status(gw: &TestGateway, path: &str) -> u16 {
    send(client().get(gw.admin_url(path))).await.status
}

/// `POST /admin/reload`, read whole (its JSON report in `body`).
pub async fn admin_reload(gw: &TestGateway) -> JsonResponse {
    send(client().post(gw.admin_url("/admin/reload"))).await
}

/// Waits until the gateway's config hash differs from `before` (a reload was applied);
/// the assertion message carries the gateway's log.
pub async fn assert_reloaded_from(gw: &TestGateway, before: &str, within: Duration) {
    assert!(
        eventually(within, async || gw.config_hash().await != before).await,
        "reload applied:\n{}",
        gw.logs()
    );
}

/// Starts one test upstream per name, in order.
pub async fn upstreams<const N: usize>(names: [&str; N]) -> [TestUpstream; N] {
    let started = futures_util::future::join_all(names.map(TestUpstream::start)).await;
    started.try_into().ok().expect("one upstream per name")
}

/// Sends `GET <path>` byte for byte and returns the status and the response head.
pub async fn raw_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
}

pub async fn upstream_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let name = resp
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, name)
}

/// A config with the test's listener and admin placeholders, one thread, short grace.
pub fn config(upstreams: &str, routes: &str) -> String {
    let mut s = String::from(
        "listeners: [ { name: public, address: \"{listen}\" } ]\nadmin: { address: \"{admin}\" }\nruntime: { threads: 1 }\nshutdown: { grace_period: 2s }\n",
    );
    s.push_str("upstreams:\n");
    s.push_str(upstreams);
    s.push_str("routes:\n");
    s.push_str(routes);
    s
}

/// An upstream with one static endpoint and the default timeouts.
pub fn plain_upstream(name: &str, addr: impl std::fmt::Display) -> String {
    format!("  {name}: {{ discovery: {{ static: [ {{ address: \"{addr}\" }} ] }} }}\n")
}

pub fn static_upstream(name: &str, eps: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!("  {name}:\n    discovery: {{ static: [ {} ] }}\n    timeouts: {{ connect: 500ms, read: 5s }}\n{extra}", list.join(", "))
}

pub fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, upstream: {upstream} }}\n")
}

/// The hash the gateway reports once it runs `yaml` (placeholders filled).
pub fn hash_of(gw: &TestGateway, yaml: &str) -> String {
    gatehouse::config::hash_text(&fill(yaml, gw.port, gw.admin_port))
}

/// Waits until the gateway runs exactly `yaml`.
pub async fn wait_applied(gw: &TestGateway, yaml: &str, within: Duration) -> bool {
    let want = hash_of(gw, yaml);
    eventually(within, async || gw.config_hash().await == want).await
}

/// Asserts that the gateway runs exactly `yaml` within 10 s; the message carries its log.
pub async fn assert_applied(gw: &TestGateway, yaml: &str) {
    let applied = wait_applied(gw, yaml, Duration::from_secs(10)).await;
    assert!(applied, "not applied:\n{}", gw.logs());
}

/// The endpoints of an upstream as `/admin/upstreams` shows them.
pub async fn endpoints(gw: &TestGateway, upstream: &str) -> Vec<Value> {
    admin_json(gw, "/admin/upstreams").await[upstream]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub async fn addresses(gw: &TestGateway, upstream: &str) -> BTreeSet<String> {
    endpoints(gw, upstream)
        .await
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

/// Waits up to 10 s until `/admin/upstreams` shows exactly `addrs` for `upstream`.
pub async fn wait_addresses(
    gw: &TestGateway,
    upstream: &str,
    addrs: &[std::net::SocketAddr],
) -> bool {
    let want = set_of(addrs);
    eventually(Duration::from_secs(10), async || {
        addresses(gw, upstream).await == want
    })
    .await
}

pub fn set_of(addrs: &[std::net::SocketAddr]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

pub async fn status_of(gw: &TestGateway, path: &str) -> u16 {
    match client().get(gw.url(path)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("GET {path}: {e:?}"),
    }
}

pub async fn metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

/// Runs `gatehouse validate -c <path>` and returns what it printed and its exit status.
pub fn validate(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["validate", "-c"])
        .arg(path)
        .output()
        .unwrap()
}

/// How many config reloads had `result` (success, failure) so far (0 before the first).
pub async fn reloads(gw: &TestGateway, result: &str) -> f64 {
    metric(gw, "gatehouse_config_reloads_total", &[("result", result)]).await
}

/// How many config reloads failed so far.
pub async fn reload_failures(gw: &TestGateway) -> f64 {
    reloads(gw, "failure").await
}

/// How many config reloads succeeded so far.
pub async fn reload_successes(gw: &TestGateway) -> f64 {
    reloads(gw, "success").await
}

/// Writes `text` to `path` by writing a temporary file beside it and renaming it over
/// (what most editors and config tools do).
pub fn rename_over(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Replaces the gateway's config file by a symlink to a file in another directory, so
/// that edits of that file are invisible to the directory watcher: only SIGHUP or the
/// admin endpoint can apply them. Returns the real file.
pub fn detach_config(gw: &TestGateway, outside: &tempfile::TempDir) -> std::path::PathBuf {
    let real = outside.path().join("real.yaml");
    std::fs::copy(&gw.config_path, &real).unwrap();
    let link = gw.config_path.with_extension("link~");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::rename(&link, &gw.config_path).unwrap();
    real
}

pub fn checked_upstream(
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
