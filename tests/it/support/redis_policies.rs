//! The Redis failure-policy routes of the chaos and Redis-topology tests: one route per
//! `on_redis_error` policy, with a load limit that is never reached and a probe limit that
//! shows whether Redis (not the policy's fallback) enforces it.

use std::net::SocketAddr;
use std::time::Duration;

use super::{get_with, metric_value, unique, TestGateway};

/// Redis call timeout of these tests (`redis.timeout`): longer than the 50 ms default
/// because a debug gateway on two busy cores sometimes takes over 100 ms for a healthy call.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(200);

/// Every `on_redis_error` policy, in lane order.
pub const POLICIES: [&str; 3] = ["fail_open", "fail_closed", "local"];

/// One route per failure policy (`/<policy>`), each with a load limit (key `x-k`, never
/// reached) and a probe limit (key `x-p`, 3 a minute, skipped without the header).
/// `redis_yaml`: the `redis` block's connection keys (`url: ...`, `cluster: [...]`).
pub fn policies_config(app: SocketAddr, redis_yaml: &str) -> String {
    let mut routes = String::new();
    for p in POLICIES {
        routes += &format!(
            "  - name: {p}\n    match: {{ path_prefix: /{p} }}\n    upstream: app\n    filters:\n      \
             - rate_limit: {{ name: {p}_load, key: \"header:x-k\", limit: 1000000, window: 1m, on_redis_error: {p} }}\n      \
             - rate_limit: {{ name: {p}_probe, key: \"header:x-p\", limit: 3, window: 1m, on_redis_error: {p}, on_missing_key: skip }}\n"
        );
    }
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\n\
         runtime: {{ threads: 2 }}\naccess_log: {{ enabled: false }}\n\
         redis: {{ {redis_yaml}, timeout: {}ms }}\n\
         upstreams:\n  app: {{ discovery: {{ static: [ {{ address: \"{app}\" }} ] }} }}\nroutes:\n{routes}",
        REDIS_TIMEOUT.as_millis()
    )
}

fn decisions(m: &str, limit: &str, kinds: &[&str]) -> f64 {
    kinds
        .iter()
        .filter_map(|d| {
            metric_value(
                m,
                "gatehouse_ratelimit_decisions_total",
                &[("limit", limit), ("decision", d)],
            )
        })
        .sum()
}

/// Decisions of `limit` that Redis made (allowed or limited), as opposed to a policy's
/// fallback (`fail_open`, `local_*`) or a refusal (`fail_closed`).
pub fn redis_decisions(m: &str, limit: &str) -> f64 {
    decisions(m, limit, &["allowed", "limited"])
}

/// Decisions of `limit` that were not Redis's (the policy's fallback while Redis failed).
pub fn fallback_decisions(m: &str, limit: &str) -> f64 {
    decisions(
        m,
        limit,
        &["fail_open", "fail_closed", "local_allowed", "local_limited"],
    )
}

/// The statuses of 4 requests to policy `p`'s route with a fresh probe key (limit 3):
/// `[200, 200, 200, 429]` when the limit is enforced.
pub async fn probe(gw: &TestGateway, p: &str) -> Vec<u16> {
    let key = unique("probe");
    let mut got = Vec::with_capacity(4);
    for _ in 0..4 {
        let r = get_with(gw, &format!("/{p}"), &[("x-k", "probe"), ("x-p", &key)]).await;
        got.push(r.status().as_u16());
    }
    got
}
