//! `/admin/status`: the dashboard's JSON, including request rate, error rate and
//! latency percentiles over a recent window computed from the gateway's own histogram.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::clock::mono_ms;
use crate::state::State;
use crate::telemetry::rfc3339;

/// Length of the window the dashboard's rates and percentiles cover.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Sample {
    at: Instant,
    count: u64,
    errors: u64,
    /// Cumulative bucket counts.
    buckets: Vec<u64>,
    /// Per route: requests, 5xx answers, 4xx answers (`gatehouse_requests_total`).
    routes: BTreeMap<String, [u64; 3]>,
    /// Requests the jwt filter refused (`gatehouse_auth_failures_total`).
    auth_failures: u64,
}

/// Per-route request counts and the auth failures, read from the registry.
fn route_counts(state: &State) -> (BTreeMap<String, [u64; 3]>, u64) {
    let mut routes: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut auth = 0.0;
    for mf in state.telemetry.metrics.registry.gather() {
        let requests = mf.name() == "gatehouse_requests_total";
        if !requests && mf.name() != "gatehouse_auth_failures_total" {
            continue;
        }
        for m in mf.get_metric() {
            let value = m.get_counter().get_value();
            if !requests {
                auth += value;
                continue;
            }
            let label = |k: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == k)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let e = routes.entry(label("route")).or_default();
            let n = value as u64;
            e[0] += n;
            match label("status_class").as_str() {
                "5xx" => e[1] += n,
                "4xx" => e[2] += n,
                _ => {}
            }
        }
    }
    (routes, auth as u64)
}

/// Periodic samples of the request histogram; rates come from differences.
#[derive(Default)]
pub struct TrafficSampler {
    samples: Mutex<VecDeque<Sample>>,
}

fn take(state: &State) -> (Sample, Vec<f64>) {
    let h = state.telemetry.metrics.request_duration_all.clone();
    let mut bounds = Vec::new();
    let mut buckets = Vec::new();
    use prometheus::core::Collector;
    for mf in h.collect() {
        for m in mf.get_metric() {
            let hist = m.get_histogram();
            for b in hist.get_bucket() {
                bounds.push(b.upper_bound());
                buckets.push(b.cumulative_count());
            }
        }
    }
    let (routes, auth_failures) = route_counts(state);
    (
        Sample {
            at: Instant::now(),
            count: h.get_sample_count(),
            errors: state.telemetry.metrics.errors_all.get(),
            buckets,
            routes,
            auth_failures,
        },
        bounds,
    )
}

impl TrafficSampler {
    /// Records a sample now; called every few seconds by the maintenance task.
    pub fn sample(&self, state: &State) {
        let (s, _) = take(state);
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while q
            .front()
            .is_some_and(|f| s.at.duration_since(f.at) > WINDOW + Duration::from_secs(10))
        {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Requests per second and 5xx share between consecutive samples of the window, oldest
    /// first, ending with `now`: the dashboard's sparklines.
    fn trend(&self, now: &Sample) -> Vec<Value> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<&Sample> = q
            .iter()
            .filter(|s| now.at.duration_since(s.at) <= WINDOW)
            .chain(std::iter::once(now))
            .collect();
        recent
            .windows(2)
            .filter_map(|w| {
                let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
                (secs >= 0.5).then(|| {
                    let n = w[1].count.saturating_sub(w[0].count);
                    let e = w[1].errors.saturating_sub(w[0].errors);
                    json!({
                        "requests_per_second": (n as f64 / secs * 100.0).round() / 100.0,
                        "error_rate": if n == 0 { 0.0 } else { e as f64 / n as f64 },
                    })
                })
            })
            .collect()
    }

    fn window(&self, state: &State) -> Value {
        let (now, bounds) = take(state);
        let base = {
            let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            q.iter()
                .find(|s| now.at.duration_since(s.at) <= WINDOW)
                .cloned()
        };
        let Some(base) = base else {
            return json!({"window_seconds": WINDOW.as_secs(), "total_requests": now.count});
        };
        let trend = self.trend(&now);
        let secs = now.at.duration_since(base.at).as_secs_f64().max(1.0);
        let n = now.count.saturating_sub(base.count);
        let errors = now.errors.saturating_sub(base.errors);
        let diff: Vec<u64> = now
            .buckets
            .iter()
            .zip(base.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let pct = |q: f64| -> Value {
            if n == 0 {
                return Value::Null;
            }
            let rank = (q * n as f64).ceil() as u64;
            let mut prev_bound = 0.0;
            let mut prev_count = 0u64;
            for (i, c) in diff.iter().enumerate() {
                if *c >= rank {
                    let bound = bounds[i];
                    // linear interpolation inside the bucket, as histogram_quantile does
                    let in_bucket = (*c - prev_count).max(1) as f64;
                    let frac = (rank - prev_count) as f64 / in_bucket;
                    return json!(
                        ((prev_bound + (bound - prev_bound) * frac) * 1000.0 * 100.0).round()
                            / 100.0
                    );
                }
                prev_bound = bounds[i];
                prev_count = *c;
            }
            json!(bounds.last().map(|b| b * 1000.0))
        };
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let rate = |k: u64| (k as f64 / secs * 100.0).round() / 100.0;
        let mut client_errors = 0;
        let routes: Vec<Value> = now
            .routes
            .iter()
            .filter_map(|(route, c)| {
                let b = base.routes.get(route).copied().unwrap_or_default();
                let d = [0, 1, 2].map(|i| c[i].saturating_sub(b[i]));
                client_errors += d[2];
                (d[0] > 0).then(|| {
                    json!({
                        "route": route,
                        "requests_per_second": rate(d[0]),
                        "error_rate": share(d[1], d[0]),
                        "client_error_rate": share(d[2], d[0]),
                        "requests": d[0],
                    })
                })
            })
            .collect();
        json!({
            "window_seconds": secs.round(),
            "requests_per_second": rate(n),
            "error_rate": share(errors, n),
            "client_error_rate": share(client_errors, n),
            "auth_failures_per_second": rate(now.auth_failures.saturating_sub(base.auth_failures)),
            "routes": routes,
            "trend": trend,
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "total_requests": now.count,
            "total_in_window": n,
        })
    }
}

/// The sum of the series of metric `name` in one scrape (`families`), optionally only
/// those with `label`.
fn metric_sum(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    families
        .iter()
        .filter(|mf| mf.name() == name)
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// One upstream as the status rule sees it.
#[derive(Debug, Clone)]
pub struct UpstreamFacts {
    /// Its name.
    pub name: String,
    /// Whether some route sends traffic to it (an upstream no route uses cannot affect
    /// traffic, so it does not change the status).
    pub routed: bool,
    /// Endpoints taking traffic (healthy and not ejected).
    pub healthy: usize,
    /// Endpoints in all.
    pub total: usize,
    /// Breaker state (`CLOSED`, `OPEN`, `HALF_OPEN`), `None` without a breaker.
    pub breaker: Option<String>,
}

/// A service behind the gateway as its own `/metrics` describes it (read with the pools).
#[derive(Debug, Clone)]
pub struct ServiceFacts {
    /// `name (endpoint)`.
    pub name: String,
    /// Domain operations between its last two readings.
    pub operations: f64,
    /// Share of them that failed, 0.0..=1.0.
    pub error_rate: f64,
}

/// Fewest operations between two readings before a service's error rate counts.
const MIN_OPERATIONS: f64 = 10.0;

/// What the overall status is computed from: capacity (upstreams), traffic over the
/// sampler's window, and the services' own operation figures.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Every configured upstream.
    pub upstreams: Vec<UpstreamFacts>,
    /// Services that export operation counters (upstreams with `metrics_path`).
    pub services: Vec<ServiceFacts>,
    /// Requests answered in the window.
    pub requests_in_window: u64,
    /// Share of them answered 5xx, 0.0..=1.0.
    pub error_rate: f64,
    /// p99 latency over the window in ms, when there was traffic.
    pub p99_ms: Option<f64>,
    /// Redis reachable (`None`: no `redis` section).
    pub redis_up: Option<bool>,
    /// Whether the newest reload was refused.
    pub last_reload_failed: bool,
}

/// Fewest requests in the window before traffic figures decide anything.
const MIN_REQUESTS: u64 = 20;

/// The overall status (`HEALTHY`, `DEGRADED`, `DOWN`) and its reason, from capacity and
/// traffic, with the reference system's thresholds (error rate above 5%, availability below
/// 99.9%, p99 above 1 s). The rule is documented in docs/observability.md; keep the two
/// in step.
pub fn severity(f: &Facts) -> (&'static str, String) {
    let routed: Vec<&UpstreamFacts> = f.upstreams.iter().filter(|u| u.routed).collect();
    let unavailable: Vec<String> = routed
        .iter()
        .filter_map(|u| {
            if u.healthy == 0 {
                Some(format!("{} (no healthy endpoint)", u.name))
            } else if u.breaker.as_deref() == Some("OPEN") {
                Some(format!("{} (breaker OPEN)", u.name))
            } else {
                None
            }
        })
        .collect();
    let traffic = f.requests_in_window >= MIN_REQUESTS;
    if !routed.is_empty() && unavailable.len() == routed.len() {
        return (
            "DOWN",
            format!("all upstreams unavailable: {}", unavailable.join(", ")),
        );
    }
    if traffic && f.error_rate >= 0.9 {
        return (
            "DOWN",
            format!(
                "{:.1}% of the last minute's requests failed (5xx)",
                f.error_rate * 100.0
            ),
        );
    }
    let mut why: Vec<String> = unavailable
        .iter()
        .map(|u| format!("upstream {u} unavailable"))
        .collect();
    for u in &routed {
        if u.healthy > 0 && u.healthy < u.total {
            why.push(format!(
                "upstream {} at reduced capacity ({}/{} endpoints)",
                u.name, u.healthy, u.total
            ));
        }
        if u.breaker.as_deref() == Some("HALF_OPEN") {
            why.push(format!("breaker {} HALF_OPEN", u.name));
        }
    }
    if traffic && f.error_rate > 0.05 {
        why.push(format!(
            "error rate {:.1}% over the last minute is above 5%",
            f.error_rate * 100.0
        ));
    } else if traffic && f.error_rate > 0.001 {
        why.push(format!(
            "availability {:.2}% over the last minute is below 99.9%",
            (1.0 - f.error_rate) * 100.0
        ));
    }
    for svc in &f.services {
        if svc.operations >= MIN_OPERATIONS && svc.error_rate > 0.05 {
            why.push(format!(
                "service {} fails {:.1}% of its operations (above 5%)",
                svc.name,
                svc.error_rate * 100.0
            ));
        }
    }
    if let Some(p99) = f.p99_ms.filter(|p| traffic && *p > 1000.0) {
        why.push(format!("p99 latency {p99:.0} ms is above 1 s"));
    }
    if f.redis_up == Some(false) {
        why.push("Redis is unreachable: rate limits run on their failure policy".into());
    }
    if f.last_reload_failed {
        why.push("the last config reload failed; the last good config is serving".into());
    }
    if why.is_empty() {
        (
            "HEALTHY",
            "every routed upstream at full capacity, no breaker open, availability >= 99.9%, p99 <= 1 s, last reload succeeded".to_string(),
        )
    } else {
        ("DEGRADED", why.join("; "))
    }
}

/// The whole `/admin/status` document.
pub fn status_json(state: &State, sampler: &TrafficSampler) -> Value {
    let snap = state.current();
    let now = mono_ms();
    let traffic = sampler.window(state);
    let mut upstreams = Vec::new();
    // Upstreams some route sends traffic to: only they decide the overall status.
    let routed: std::collections::BTreeSet<&str> = snap
        .loaded
        .config
        .routes
        .iter()
        .map(|r| r.upstream.as_str())
        .collect();
    let mut facts = Vec::new();
    for (name, c) in &snap.upstreams {
        let eps = c.upstream.endpoints();
        let healthy = eps.iter().filter(|e| e.is_available(now)).count();
        let breaker = c.resilience.breaker_json();
        facts.push(UpstreamFacts {
            name: name.clone(),
            routed: routed.contains(name.as_str()),
            healthy,
            total: eps.len(),
            breaker: breaker["state"].as_str().map(str::to_string),
        });
        upstreams.push(json!({
            "name": name,
            "healthy_endpoints": healthy,
            "total_endpoints": eps.len(),
            "breaker": breaker,
            "endpoints": eps.iter().map(|e| super::endpoint_json(e, now)).collect::<Vec<_>>(),
        }));
    }
    // One scrape of the registry for every figure read below.
    let families = state.telemetry.metrics.registry.gather();
    let redis_configured = snap.loaded.config.redis.is_some();
    let redis_up = if redis_configured {
        Some(metric_sum(&families, "gatehouse_redis_up", None) >= 1.0)
    } else {
        None
    };
    let reloads = state.telemetry.events.reloads();
    let services = state.service_pools.snapshot(now);
    let (status, reason) = severity(&Facts {
        upstreams: facts,
        services: services
            .iter()
            .map(|((name, endpoint), r)| ServiceFacts {
                name: format!("{name} ({endpoint})"),
                operations: r.recent_operations,
                error_rate: r.operation_error_rate().unwrap_or(0.0),
            })
            .collect(),
        requests_in_window: traffic["total_in_window"].as_u64().unwrap_or(0),
        error_rate: traffic["error_rate"].as_f64().unwrap_or(0.0),
        p99_ms: traffic["p99_ms"].as_f64(),
        redis_up,
        last_reload_failed: reloads.first().is_some_and(|r| r.result == "failure"),
    });
    let decisions = |names: &[&str]| -> f64 {
        names
            .iter()
            .map(|d| {
                metric_sum(
                    &families,
                    "gatehouse_ratelimit_decisions_total",
                    Some(("decision", d)),
                )
            })
            .sum()
    };
    let rl_allowed = decisions(&[
        "allowed",
        "local_allowed",
        "fail_open",
        "key_missing_skipped",
    ]);
    let rl_rejected = decisions(&[
        "limited",
        "local_limited",
        "fail_closed",
        "key_missing_rejected",
    ]);
    let uptime = SystemTime::now()
        .duration_since(state.started_at)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "status": status,
        "status_reason": reason,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(state.started_at),
        "uptime_seconds": uptime,
        "config": {
            "hash": snap.loaded.hash,
            "loaded_at": rfc3339(snap.loaded_at),
            "path": snap.loaded.file.as_ref().map(|p| p.display().to_string()),
            // Restart-only sections the file changes but the process still runs the old
            // values of (from the newest successful reload).
            "pending_restart": reloads
                .iter()
                .find(|r| r.result == "success")
                .map(|r| r.pending_restart.clone())
                .unwrap_or_default(),
        },
        "traffic": traffic,
        "upstreams": upstreams,
        "rate_limits": { "allowed": rl_allowed, "rejected": rl_rejected },
        "redis": { "configured": redis_configured, "up": redis_up },
        "reloads": reloads,
        "events": state.telemetry.events.events(),
        "services": services.iter().map(|((name, endpoint), r)| json!({
            "name": name,
            "endpoint": endpoint,
            "age_seconds": now.saturating_sub(r.read_at_ms) / 1000,
            "db_pool": { "in_use": r.pool.in_use, "idle": r.pool.idle, "max": r.pool.max },
            "operations": {
                "recent": r.recent_operations,
                "failed": r.recent_failed,
                "error_rate": r.operation_error_rate(),
            },
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, healthy: usize, total: usize, breaker: Option<&str>) -> UpstreamFacts {
        UpstreamFacts {
            name: name.into(),
            routed: true,
            healthy,
            total,
            breaker: breaker.map(str::to_string),
        }
    }

    fn facts(upstreams: Vec<UpstreamFacts>) -> Facts {
        Facts {
            upstreams,
            services: vec![],
            requests_in_window: 100,
            error_rate: 0.0,
            p99_ms: Some(20.0),
            redis_up: None,
            last_reload_failed: false,
        }
    }

    /// One row per rule of docs/observability.md: the status and a word of the reason.
    #[test]
    fn each_row_of_the_status_rule() {
        let two = || vec![up("user", 2, 2, Some("CLOSED")), up("pay", 1, 1, None)];
        let rows: Vec<(&str, Facts, &str, &str)> = vec![
            ("all fine", facts(two()), "HEALTHY", "full capacity"),
            (
                "every routed upstream unavailable",
                facts(vec![up("user", 0, 2, None), up("pay", 1, 1, Some("OPEN"))]),
                "DOWN",
                "all upstreams unavailable",
            ),
            (
                "94% 5xx with 2 of 4 upstreams unavailable",
                Facts {
                    error_rate: 0.94,
                    ..facts(vec![
                        up("a", 0, 1, None),
                        up("b", 1, 1, Some("OPEN")),
                        up("c", 1, 1, None),
                        up("d", 1, 1, None),
                    ])
                },
                "DOWN",
                "94.0% of the last minute's requests failed",
            ),
            (
                "one of two endpoints down: half capacity",
                facts(vec![up("user", 1, 2, None)]),
                "DEGRADED",
                "reduced capacity (1/2 endpoints)",
            ),
            (
                "one upstream unavailable",
                facts(two().into_iter().chain([up("x", 0, 1, None)]).collect()),
                "DEGRADED",
                "upstream x (no healthy endpoint) unavailable",
            ),
            (
                "breaker half open",
                facts(vec![up("user", 2, 2, Some("HALF_OPEN"))]),
                "DEGRADED",
                "breaker user HALF_OPEN",
            ),
            (
                "error rate above 5%",
                Facts {
                    error_rate: 0.5,
                    ..facts(two())
                },
                "DEGRADED",
                "error rate 50.0%",
            ),
            (
                "availability below 99.9%",
                Facts {
                    error_rate: 0.01,
                    ..facts(two())
                },
                "DEGRADED",
                "availability 99.00%",
            ),
            (
                "p99 above 1 s",
                Facts {
                    p99_ms: Some(1500.0),
                    ..facts(two())
                },
                "DEGRADED",
                "p99 latency 1500 ms",
            ),
            (
                "too little traffic to judge",
                Facts {
                    requests_in_window: 5,
                    error_rate: 1.0,
                    p99_ms: Some(5000.0),
                    ..facts(two())
                },
                "HEALTHY",
                "",
            ),
            (
                "a backend failing every operation behind 2xx answers",
                Facts {
                    services: vec![ServiceFacts {
                        name: "payment (127.0.0.1:3004)".into(),
                        operations: 40.0,
                        error_rate: 1.0,
                    }],
                    ..facts(two())
                },
                "DEGRADED",
                "service payment (127.0.0.1:3004) fails 100.0% of its operations",
            ),
            (
                "redis down",
                Facts {
                    redis_up: Some(false),
                    ..facts(two())
                },
                "DEGRADED",
                "Redis is unreachable",
            ),
            (
                "last reload failed",
                Facts {
                    last_reload_failed: true,
                    ..facts(two())
                },
                "DEGRADED",
                "last config reload failed",
            ),
            (
                "an upstream no route uses is down: no traffic affected",
                facts(
                    two()
                        .into_iter()
                        .chain([UpstreamFacts {
                            routed: false,
                            ..up("typo", 0, 1, None)
                        }])
                        .collect(),
                ),
                "HEALTHY",
                "",
            ),
        ];
        for (row, f, status, reason) in rows {
            let (got, why) = severity(&f);
            assert_eq!(got, status, "{row}: {why}");
            assert!(why.contains(reason), "{row}: {why}");
        }
    }
}
