//! One maintenance loop over the *current* snapshot: active health checks, passive
//! ejection expiry, and endpoint discovery (DNS, file, Redis registry). Upstreams added by
//! a reload are picked up on the next step; removed ones are simply no longer visited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::model::DiscoveryConfig;
use crate::state::State;
use crate::upstream::{health, now_ms, Endpoint, Upstream};

/// Runs due jobs on each step.
pub struct Maintainer {
    state: Arc<State>,
    /// Job key -> next due time. Keys include the config so a changed job restarts.
    due: Mutex<HashMap<String, Instant>>,
}

impl Maintainer {
    /// A maintainer over the shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state, due: Mutex::new(HashMap::new()) }
    }

    fn take_due(&self, key: String, every: Duration) -> bool {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match due.get(&key) {
            Some(t) if *t > now => false,
            _ => {
                due.insert(key, now + health::jittered(every));
                true
            }
        }
    }

    /// Sleeps a short tick, then starts whatever is due. Never blocks on a job.
    pub async fn step(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snap = self.state.current();
        for (name, u) in &snap.upstreams {
            if let Some(hc) = &u.config.health_check {
                if self.take_due(format!("hc|{name}|{:?}", hc), hc.interval.get()) {
                    for ep in u.endpoints().iter() {
                        tokio::spawn(run_check(self.state.clone(), u.clone(), ep.clone()));
                    }
                }
            }
            match &u.config.discovery {
                DiscoveryConfig::Static(_) => {}
                DiscoveryConfig::Dns(d) => {
                    if self.take_due(format!("dns|{name}|{d:?}"), d.refresh.get()) {
                        tokio::spawn(super::discovery::refresh_dns(self.state.clone(), u.clone()));
                    }
                }
                DiscoveryConfig::File(f) => {
                    if self.take_due(format!("file|{name}|{f:?}"), Duration::from_secs(1)) {
                        tokio::spawn(super::discovery::refresh_file(self.state.clone(), u.clone()));
                    }
                }
                DiscoveryConfig::Redis(r) => {
                    if self.take_due(format!("redis|{name}|{r:?}"), r.refresh.get()) {
                        tokio::spawn(super::discovery::refresh_redis(self.state.clone(), u.clone()));
                    }
                }
            }
        }
        if self.take_due("health-gauges".into(), Duration::from_millis(500)) {
            crate::state::reload::publish_health(&self.state, &snap);
        }
    }
}

/// Publishes a health transition once: log, event, metrics.
pub fn announce(state: &State, upstream: &str, ep: &Endpoint, healthy: bool, why: &str) {
    let to = if healthy { "healthy" } else { "unhealthy" };
    if healthy {
        tracing::info!(upstream, endpoint = %ep.address, reason = why, "endpoint is healthy");
    } else {
        tracing::warn!(upstream, endpoint = %ep.address, reason = why, "endpoint is unhealthy");
    }
    state.events.push("health", format!("{upstream} {} is {to}: {why}", ep.address));
    state.metrics.health_transitions.with_label_values(&[upstream, &ep.address, to]).inc();
    state
        .metrics
        .endpoint_healthy
        .with_label_values(&[upstream, &ep.address])
        .set(i64::from(ep.is_available(now_ms())));
}

async fn run_check(state: Arc<State>, u: Arc<Upstream>, ep: Arc<Endpoint>) {
    let Some(hc) = u.config.health_check.clone() else { return };
    let result = health::check(ep.addr, &hc).await;
    crate::resilience::on_health_check(&state, &u, result.is_ok());
    if let Some(now_healthy) = ep.record_check(result.is_ok(), hc.healthy_threshold, hc.unhealthy_threshold) {
        let why = match &result {
            Ok(()) => format!("{} consecutive checks passed", hc.healthy_threshold),
            Err(e) => format!("{} consecutive checks failed, last: {e}", hc.unhealthy_threshold),
        };
        announce(&state, &u.name, &ep, now_healthy, &why);
    }
}
