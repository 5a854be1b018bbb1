//! `/admin/status`: the dashboard's JSON, including request rate, error rate and
//! latency percentiles over a recent window computed from the gateway's own histogram.

use std::collections::VecDeque;
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
    (
        Sample {
            at: Instant::now(),
            count: h.get_sample_count(),
            errors: state.telemetry.metrics.errors_all.get(),
            buckets,
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
        json!({
            "window_seconds": secs.round(),
            "requests_per_second": ((n as f64 / secs) * 100.0).round() / 100.0,
            "error_rate": if n == 0 { 0.0 } else { errors as f64 / n as f64 },
            "p50_ms": pct(0.50),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "total_requests": now.count,
            "total_in_window": n,
        })
    }
}

fn metric_sum(state: &State, name: &str, label: Option<(&str, &str)>) -> f64 {
    state
        .telemetry
        .metrics
        .registry
        .gather()
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

/// The whole `/admin/status` document.
pub fn status_json(state: &State, sampler: &TrafficSampler) -> Value {
    let snap = state.current();
    let now = mono_ms();
    let traffic = sampler.window(state);
    let mut upstreams = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    let mut half_open: Vec<String> = Vec::new();
    for (name, c) in &snap.upstreams {
        let eps = c.upstream.endpoints();
        let healthy = eps.iter().filter(|e| e.is_available(now)).count();
        let breaker = c.resilience.breaker_json();
        if healthy == 0 {
            unavailable.push(format!("{name} (no healthy endpoint)"));
        } else if breaker["state"] == "OPEN" {
            unavailable.push(format!("{name} (breaker OPEN)"));
        } else if breaker["state"] == "HALF_OPEN" {
            half_open.push(name.clone());
        }
        upstreams.push(json!({
            "name": name,
            "healthy_endpoints": healthy,
            "total_endpoints": eps.len(),
            "breaker": breaker,
            "endpoints": eps.iter().map(|e| super::endpoint_json(e, now)).collect::<Vec<_>>(),
        }));
    }
    let redis_configured = snap.loaded.config.redis.is_some();
    let redis_up = if redis_configured {
        Some(metric_sum(state, "gatehouse_redis_up", None) >= 1.0)
    } else {
        None
    };
    let reloads = state.telemetry.events.reloads();
    // The rule is documented in docs/observability.md; keep the two in step.
    let (status, reason) = if !snap.upstreams.is_empty()
        && unavailable.len() == snap.upstreams.len()
    {
        (
            "DOWN",
            format!("all upstreams unavailable: {}", unavailable.join(", ")),
        )
    } else {
        let mut why: Vec<String> = Vec::new();
        for u in &unavailable {
            why.push(format!("upstream {u} unavailable"));
        }
        for u in &half_open {
            why.push(format!("breaker {u} HALF_OPEN"));
        }
        let n = traffic["total_in_window"].as_u64().unwrap_or(0);
        let error_rate = traffic["error_rate"].as_f64().unwrap_or(0.0);
        if n >= 20 && error_rate > 0.05 {
            why.push(format!(
                "error rate {:.1}% over the last minute is above 5%",
                error_rate * 100.0
            ));
        }
        if redis_up == Some(false) {
            why.push("Redis is unreachable: rate limits run on their failure policy".into());
        }
        if reloads.first().is_some_and(|r| r.result == "failure") {
            why.push("the last config reload failed; the last good config is serving".into());
        }
        if why.is_empty() {
            ("HEALTHY", "every upstream available, no breaker open, error rate <= 5%, last reload succeeded".to_string())
        } else {
            ("DEGRADED", why.join("; "))
        }
    };
    let decisions = |names: &[&str]| -> f64 {
        names
            .iter()
            .map(|d| {
                metric_sum(
                    state,
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
        "services": state.service_pools.snapshot().into_iter().map(|(name, p)| json!({
            "name": name,
            "endpoint": p.endpoint,
            "db_pool": { "in_use": p.in_use, "idle": p.idle, "max": p.max },
        })).collect::<Vec<_>>(),
    })
}
