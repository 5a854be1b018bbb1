//! One maintenance loop over the *current* snapshot: active health checks, passive
//! ejection expiry, endpoint discovery (DNS, file, Redis registry), the services' pool
//! scraping and the snapshot-wide gauge sync. Upstreams added by a reload are picked up on
//! the next step; removed ones are simply no longer visited.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Cluster, State};
use crate::config::model::DiscoveryConfig;
use crate::upstream::discovery::{self, Discovery, DiscoveryError};
use crate::upstream::probe::Target;
use crate::upstream::{health, pools, Endpoint};

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
            .map(|r| r.topology());
        let tls = state.redis_tls.clone();
        Self::with_discovery(state, Arc::new(Discovery::new(url).with_tls(tls)))
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
        for (name, c) in &snap.upstreams {
            let u = &c.upstream;
            if let Some(hc) = &u.config.health_check {
                if self.take_due(&mut seen, format!("hc|{name}|{:?}", hc), hc.interval.get()) {
                    for ep in u.endpoints().iter() {
                        tokio::spawn(run_check(self.state.clone(), c.clone(), ep.clone()));
                    }
                }
            }
            if let Some(path) = &u.config.metrics_path {
                if self.take_due(
                    &mut seen,
                    format!("pools|{name}|{path}"),
                    pools::SCRAPE_EVERY,
                ) {
                    for ep in u.endpoints().iter() {
                        let (state, ep, path) = (self.state.clone(), ep.clone(), path.clone());
                        let tls = u.peer.tls.clone();
                        self.spawn_once(&format!("pools|{name}|{}", ep.address), async move {
                            let target = Target {
                                addr: ep.addr,
                                tls: tls.as_deref(),
                                address: &ep.address,
                            };
                            pools::scrape(&state.service_pools, target, &ep.address, &path).await
                        });
                    }
                }
            }
            let (tel, up, disc) = (
                self.state.telemetry.clone(),
                u.clone(),
                self.discovery.clone(),
            );
            let (key, every) = match &u.config.discovery {
                DiscoveryConfig::Static(_) => continue,
                DiscoveryConfig::Dns(d) => (format!("dns|{name}|{d:?}"), d.refresh.get()),
                DiscoveryConfig::File(f) => (format!("file|{name}|{f:?}"), FILE_POLL),
                DiscoveryConfig::Redis(r) => (format!("redis|{name}|{r:?}"), r.refresh.get()),
            };
            if !self.take_due(&mut seen, key.clone(), every) {
                continue;
            }
            let runtime = self.state.filter_runtime.clone();
            let config_file = snap.loaded.file.clone();
            self.spawn_once(&key, async move {
                let result = match &up.config.discovery {
                    DiscoveryConfig::Static(_) => Ok(()),
                    DiscoveryConfig::Dns(_) => discovery::refresh_dns(tel, up).await,
                    DiscoveryConfig::File(_) => {
                        discovery::refresh_file(tel, up, disc, config_file).await
                    }
                    DiscoveryConfig::Redis(_) => discovery::refresh_redis(tel, up, disc).await,
                };
                if let Err(DiscoveryError::Registry(_)) = result {
                    runtime.metrics().redis_error("discovery");
                }
            });
        }
        if self.take_due(
            &mut seen,
            "health-gauges".into(),
            Duration::from_millis(500),
        ) {
            super::publish::publish(&self.state.telemetry, &snap);
        }
        self.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| seen.contains(k));
    }
}

async fn run_check(state: Arc<State>, c: Arc<Cluster>, ep: Arc<Endpoint>) {
    let u = &c.upstream;
    let Some(hc) = u.config.health_check.clone() else {
        return;
    };
    let target = Target {
        addr: ep.addr,
        tls: u.peer.tls.as_deref(),
        address: &ep.address,
    };
    let result = health::check(target, &hc).await;
    let tel = &state.telemetry;
    c.resilience.on_health_check(tel, &u.name, result.is_ok());
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
        ep.announce_health(tel, &u.name, now_healthy, &why);
    }
}
