//! One maintenance loop over the *current* snapshot: active health checks, passive
//! ejection expiry, and endpoint discovery (DNS, file, Redis registry). Upstreams added by
//! a reload are picked up on the next step; removed ones are simply no longer visited.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::model::DiscoveryConfig;
use crate::state::State;
use crate::upstream::discovery::Discovery;
use crate::upstream::{health, now_ms, Endpoint, Upstream};

/// How often an endpoint file is looked at (a read and a hash; parsed only when changed).
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Runs due jobs on each step.
pub struct Maintainer {
    state: Arc<State>,
    discovery: Arc<Discovery>,
    /// Job key -> next due time. Keys include the config so a changed job restarts;
    /// keys of jobs that no longer exist are dropped.
    due: Mutex<HashMap<String, Instant>>,
    /// Discovery jobs still running: a slow refresh (DNS, an unreachable Redis) is not
    /// started again until it ends.
    running: Arc<Mutex<HashSet<String>>>,
}

/// Removes a job from the running set when it ends (or is dropped).
struct Running(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Maintainer {
    /// A maintainer over the shared state. Discovery's Redis connection is made from the
    /// `redis:` section of the config the gateway runs with now (a restart-only field).
    pub fn new(state: Arc<State>) -> Self {
        let url = state
            .current()
            .loaded
            .config
            .redis
            .as_ref()
            .map(|r| r.url.clone());
        Self::with_discovery(state, Arc::new(Discovery::new(url)))
    }

    /// A maintainer with a given discovery state.
    pub fn with_discovery(state: Arc<State>, discovery: Arc<Discovery>) -> Self {
        Self {
            state,
            discovery,
            due: Mutex::new(HashMap::new()),
            running: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn take_due(&self, seen: &mut HashSet<String>, key: String, every: Duration) -> bool {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        seen.insert(key.clone());
        match due.get(&key) {
            Some(t) if *t > now => false,
            _ => {
                due.insert(key, now + health::jittered(every));
                true
            }
        }
    }

    /// Spawns a discovery job unless the previous run of the same job is still going.
    fn spawn_once<F>(&self, key: &str, job: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
        {
            return;
        }
        let guard = Running(self.running.clone(), key.to_string());
        tokio::spawn(async move {
            let _guard = guard;
            job.await;
        });
    }

    /// Sleeps a short tick, then starts whatever is due. Never blocks on a job.
    pub async fn step(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snap = self.state.current();
        let mut seen = HashSet::new();
        for (name, u) in &snap.upstreams {
            if let Some(hc) = &u.config.health_check {
                if self.take_due(&mut seen, format!("hc|{name}|{:?}", hc), hc.interval.get()) {
                    for ep in u.endpoints().iter() {
                        tokio::spawn(run_check(self.state.clone(), u.clone(), ep.clone()));
                    }
                }
            }
            if let Some(path) = &u.config.metrics_path {
                if self.take_due(
                    &mut seen,
                    format!("pools|{name}|{path}"),
                    super::pools::SCRAPE_EVERY,
                ) {
                    for ep in u.endpoints().iter() {
                        let (state, ep, path) = (self.state.clone(), ep.clone(), path.clone());
                        self.spawn_once(&format!("pools|{name}|{}", ep.address), async move {
                            super::pools::scrape(&state.service_pools, ep.addr, &ep.address, &path)
                                .await
                        });
                    }
                }
            }
            let (state, up, disc) = (self.state.clone(), u.clone(), self.discovery.clone());
            match &u.config.discovery {
                DiscoveryConfig::Static(_) => {}
                DiscoveryConfig::Dns(d) => {
                    let key = format!("dns|{name}|{d:?}");
                    if self.take_due(&mut seen, key.clone(), d.refresh.get()) {
                        self.spawn_once(&key, super::discovery::refresh_dns(state, up));
                    }
                }
                DiscoveryConfig::File(f) => {
                    let key = format!("file|{name}|{f:?}");
                    if self.take_due(&mut seen, key.clone(), FILE_POLL) {
                        self.spawn_once(&key, super::discovery::refresh_file(state, up, disc));
                    }
                }
                DiscoveryConfig::Redis(r) => {
                    let key = format!("redis|{name}|{r:?}");
                    if self.take_due(&mut seen, key.clone(), r.refresh.get()) {
                        self.spawn_once(&key, super::discovery::refresh_redis(state, up, disc));
                    }
                }
            }
        }
        if self.take_due(
            &mut seen,
            "health-gauges".into(),
            Duration::from_millis(500),
        ) {
            crate::state::reload::publish_health(&self.state, &snap);
        }
        self.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| seen.contains(k));
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
    state.events.push(
        "health",
        format!("{upstream} {} is {to}: {why}", ep.address),
    );
    state
        .metrics
        .health_transitions
        .with_label_values(&[upstream, &ep.address, to])
        .inc();
    state
        .metrics
        .endpoint_healthy
        .with_label_values(&[upstream, &ep.address])
        .set(i64::from(ep.is_available(now_ms())));
}

async fn run_check(state: Arc<State>, u: Arc<Upstream>, ep: Arc<Endpoint>) {
    let Some(hc) = u.config.health_check.clone() else {
        return;
    };
    let result = health::check(ep.addr, &hc).await;
    crate::resilience::on_health_check(&state, &u, result.is_ok());
    if let Some(now_healthy) =
        ep.record_check(result.is_ok(), hc.healthy_threshold, hc.unhealthy_threshold)
    {
        let why = match &result {
            Ok(()) => format!("{} consecutive checks passed", hc.healthy_threshold),
            Err(e) => format!(
                "{} consecutive checks failed, last: {e}",
                hc.unhealthy_threshold
            ),
        };
        announce(&state, &u.name, &ep, now_healthy, &why);
    }
}
