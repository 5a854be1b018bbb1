//! Upstream clusters: endpoints with their live health, and picking one for a request.

pub mod discovery;
pub mod health;
pub mod pools;
pub mod probe;
pub mod select;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use std::time::Duration;

use crate::config::model::{HostHeaderPolicy, UpstreamConfig, UpstreamProtocol};
pub use select::Swrr;

/// Where an endpoint came from, shown on `/admin/upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The YAML list.
    Static,
    /// A DNS lookup.
    Dns,
    /// A discovery file.
    File,
    /// The Redis registry.
    Redis,
}

impl Source {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns => "dns",
            Source::File => "file",
            Source::Redis => "redis",
        }
    }
}

use crate::clock::wall_ms;
use crate::telemetry::Telemetry;

/// One endpoint of an upstream and its live state. Kept across reloads and discovery
/// refreshes while its (upstream, address) stays.
#[derive(Debug)]
pub struct Endpoint {
    /// Socket address connected to.
    pub addr: SocketAddr,
    /// The address as configured or discovered (`host:port`), used in labels.
    pub address: String,
    /// SWRR weight; 0 drains the endpoint (no new requests, in-flight ones finish).
    pub weight: u32,
    /// Discovery source.
    pub source: Source,
    /// Verdict of active health checks.
    healthy: AtomicBool,
    /// Unix ms (wall clock, for display) of the last health transition (or of creation).
    since_ms: AtomicU64,
    /// Passive ejection: monotonic ms (`clock::mono_ms`) until which the endpoint takes
    /// no traffic; a wall-clock step neither ends nor stretches an ejection.
    ejected_until_ms: AtomicU64,
    /// How many times it was ejected (the ejection time grows with it).
    ejections: AtomicU32,
    /// Consecutive failures seen on real traffic.
    consecutive_failures: AtomicU32,
    /// Consecutive active-check successes/failures (positive/negative streak).
    check_streak: std::sync::atomic::AtomicI32,
    /// Requests in flight to it.
    pub inflight: AtomicU64,
    /// `gatehouse_upstream_requests_total` handles by outcome, resolved on first use.
    outcome_counters: std::sync::OnceLock<[prometheus::IntCounter; 8]>,
}

impl Endpoint {
    /// A new endpoint, healthy or not at start.
    pub fn new(
        addr: SocketAddr,
        address: String,
        weight: u32,
        source: Source,
        healthy: bool,
    ) -> Self {
        Self {
            addr,
            address,
            weight,
            source,
            healthy: AtomicBool::new(healthy),
            since_ms: AtomicU64::new(wall_ms()),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            check_streak: std::sync::atomic::AtomicI32::new(0),
            inflight: AtomicU64::new(0),
            outcome_counters: std::sync::OnceLock::new(),
        }
    }

    /// The same live state under a new weight (weights can change by discovery).
    pub fn reweighted(&self, weight: u32) -> Self {
        Self {
            addr: self.addr,
            address: self.address.clone(),
            weight,
            source: self.source,
            healthy: AtomicBool::new(self.healthy.load(Ordering::Relaxed)),
            since_ms: AtomicU64::new(self.since_ms.load(Ordering::Relaxed)),
            ejected_until_ms: AtomicU64::new(self.ejected_until_ms.load(Ordering::Relaxed)),
            ejections: AtomicU32::new(self.ejections.load(Ordering::Relaxed)),
            consecutive_failures: AtomicU32::new(self.consecutive_failures.load(Ordering::Relaxed)),
            check_streak: std::sync::atomic::AtomicI32::new(
                self.check_streak.load(Ordering::Relaxed),
            ),
            inflight: AtomicU64::new(0),
            outcome_counters: std::sync::OnceLock::new(),
        }
    }

    /// Counts one try's outcome (`success`, `http_error`, `connect_error`, `tls_error`,
    /// `timeout`, `reset`, `protocol_error`, `truncated`) without hashing labels on the
    /// request path.
    pub fn count_outcome(&self, tel: &Telemetry, upstream: &str, outcome: &str) {
        let metrics = &tel.metrics;
        const OUTCOMES: [&str; 8] = [
            "success",
            "http_error",
            "connect_error",
            "tls_error",
            "timeout",
            "reset",
            "protocol_error",
            "truncated",
        ];
        let endpoint = tel.endpoint_label(&self.address);
        let counters = self.outcome_counters.get_or_init(|| {
            OUTCOMES.map(|o| {
                metrics
                    .upstream_requests
                    .with_label_values(&[upstream, endpoint, o])
            })
        });
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => counters[i].inc(),
            None => metrics
                .upstream_requests
                .with_label_values(&[upstream, endpoint, outcome])
                .inc(),
        }
    }

    /// Active-check verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by passive outlier detection at `now_ms` (monotonic, `clock::mono_ms`).
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Takes traffic: healthy and not ejected.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now_ms)
    }

    /// Unix ms of the last health transition.
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Monotonic ms until which it is ejected (0 when never).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Sets the active-check verdict; returns true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            self.since_ms.store(wall_ms(), Ordering::Relaxed);
        }
        changed
    }

    /// Records one active-check result; returns `Some(new verdict)` on a transition.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let streak = self
            .check_streak
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(if ok {
                    s.max(0).saturating_add(1)
                } else {
                    s.min(0).saturating_sub(1)
                })
            })
            .map(|prev| if ok { prev.max(0) + 1 } else { prev.min(0) - 1 })
            .unwrap_or(0);
        let healthy = self.is_healthy();
        if ok && !healthy && streak >= healthy_threshold as i32 {
            self.set_healthy(true);
            return Some(true);
        }
        if !ok && healthy && -streak >= unhealthy_threshold as i32 {
            self.set_healthy(false);
            return Some(false);
        }
        None
    }

    /// Records a real-traffic outcome for passive outlier detection; returns the number of
    /// consecutive failures after it (0 after a success).
    pub fn record_traffic(&self, failure: bool) -> u32 {
        if failure {
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            0
        }
    }

    /// Ejects until `until_ms` (monotonic); returns the ejection count including this one.
    pub fn eject(&self, until_ms: u64) -> u32 {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.since_ms.store(wall_ms(), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Times ejected so far.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Clears an ejection whose time is over at `now_ms` (monotonic); true once per ejection, so that
    /// the return is announced once.
    pub fn end_ejection(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0
            && until <= now_ms
            && self
                .ejected_until_ms
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Reports a health transition of this endpoint of `upstream` (active checks or
    /// passive ejection) to the telemetry sink, with its availability now.
    pub fn announce_health(&self, tel: &Telemetry, upstream: &str, healthy: bool, why: &str) {
        let available = self.is_available(crate::clock::mono_ms());
        tel.endpoint_health(upstream, &self.address, healthy, available, why);
    }
}

/// Which `Host` header goes upstream (`upstreams.*.host_header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's.
    Preserve,
    /// The endpoint's `host:port`.
    Endpoint,
    /// A fixed value.
    Set(String),
}

/// How a try is dialed, lowered from the YAML model when the config compiles so that the
/// request path reads no config type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// TCP connect timeout.
    pub connect: Duration,
    /// Per-read timeout of a try.
    pub read: Duration,
    /// Per-write timeout of a try.
    pub write: Duration,
    /// Deadline of the whole request across tries, if any.
    pub total: Option<Duration>,
    /// How long an idle pooled connection is kept (`runtime.upstream_idle_timeout`).
    pub idle: Duration,
    /// Requests in flight to the endpoint above which a try's connection is pooled for
    /// `burst_idle` only (`runtime.upstream_burst_threshold`).
    pub burst_threshold: u64,
    /// Pool idle time of a connection used above `burst_threshold`
    /// (`runtime.upstream_burst_idle_timeout`).
    pub burst_idle: Duration,
    /// The `Host` header policy.
    pub host_header: HostHeader,
    /// The HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// TLS to the endpoints; clear text when `None`.
    pub tls: Option<Arc<tls::UpstreamTls>>,
}

/// The HTTP version of an upstream's connections (`upstreams.*.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 in clear text, prior knowledge.
    H2c,
}

impl PeerSettings {
    /// From an upstream's definition, with pingora pool idle time `idle`.
    pub fn new(cfg: &UpstreamConfig, idle: Duration) -> Self {
        let t = &cfg.timeouts;
        Self {
            connect: t.connect.get(),
            read: t.read.get(),
            write: t.write.get(),
            total: t.total.map(|d| d.get()),
            idle,
            burst_threshold: u64::MAX,
            burst_idle: idle,
            host_header: match &cfg.host_header {
                HostHeaderPolicy::Preserve => HostHeader::Preserve,
                HostHeaderPolicy::Endpoint => HostHeader::Endpoint,
                HostHeaderPolicy::Set(v) => HostHeader::Set(v.clone()),
            },
            protocol: match cfg.protocol {
                UpstreamProtocol::Http1 => Protocol::Http1,
                UpstreamProtocol::H2 => Protocol::H2,
                UpstreamProtocol::H2c => Protocol::H2c,
            },
            tls: None,
        }
    }
}

/// Pool idle time of upstream connections when no `runtime` section says otherwise.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// A named cluster: its endpoint set (swapped by discovery) and selection state.
pub struct Upstream {
    /// Name from the config.
    pub name: Arc<str>,
    /// The definition it was built from; a reload reuses this `Upstream` when unchanged.
    pub config: UpstreamConfig,
    /// How its tries are dialed.
    pub peer: PeerSettings,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    swrr: Mutex<Swrr>,
}

impl Upstream {
    /// A cluster with an initial endpoint set.
    pub fn new(name: &str, config: UpstreamConfig, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self {
            name: Arc::from(name),
            peer: PeerSettings::new(&config, DEFAULT_IDLE),
            endpoints: ArcSwap::from_pointee(endpoints),
            swrr: Mutex::new(Swrr::default()),
            config,
        }
    }

    /// Sets its TLS settings (loaded from `config.tls` by the compile).
    pub fn with_tls(mut self, tls: Option<Arc<tls::UpstreamTls>>) -> Self {
        self.peer.tls = tls;
        self
    }

    /// Sets the pool idle time of its connections (`runtime.upstream_idle_timeout`), and the
    /// shorter one of connections used while more than `burst_threshold` requests were in
    /// flight to their endpoint (`runtime.upstream_burst_*`).
    pub fn with_idle_timeout(
        mut self,
        idle: Duration,
        burst_threshold: u64,
        burst_idle: Duration,
    ) -> Self {
        self.peer.idle = idle;
        self.peer.burst_threshold = burst_threshold;
        self.peer.burst_idle = burst_idle.min(idle);
        self
    }

    /// Pool idle time of the connection of a try that found `inflight` requests (its own
    /// included) in flight to its endpoint: HTTP/1.1 connections used above the burst
    /// threshold are kept `burst_idle`, so that a burst's extra connections close soon
    /// after it while steady traffic keeps reusing its own.
    pub fn pool_idle(&self, inflight: u64) -> Duration {
        let s = &self.peer;
        if s.protocol == Protocol::Http1 && inflight > s.burst_threshold {
            s.burst_idle
        } else {
            s.idle
        }
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set (discovery); endpoints that stay keep their state
    /// because the caller passes the same `Arc`s.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Picks an endpoint by smooth weighted round-robin among those that take traffic at
    /// `now_ms` (monotonic), preferring ones not in `tried` (retries go elsewhere when they
    /// can). The upstream's breaker, if any, was asked before: this knows no breaker.
    pub fn pick(&self, tried: &[Arc<Endpoint>], now_ms: u64) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.load();
        let fresh =
            |e: &Endpoint| e.is_available(now_ms) && !tried.iter().any(|t| t.addr == e.addr);
        let mut swrr = match self.swrr.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(i) = swrr.pick(&eps, |e| fresh(e)) {
            return eps.get(i).cloned();
        }
        if tried.is_empty() {
            return None;
        }
        swrr.pick(&eps, |e| e.is_available(now_ms))
            .and_then(|i| eps.get(i).cloned())
    }
}
