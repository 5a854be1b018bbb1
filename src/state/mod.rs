//! The running configuration as one immutable [`Snapshot`] behind an `ArcSwap`, plus the
//! long-lived state that outlives snapshots (telemetry, filter runtime), the maintenance
//! loop that walks the current snapshot, and the gauges synced from it.

pub mod calls;
pub mod compile;
pub mod maintain;
pub mod publish;
pub mod reload;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use gatehouse_filters::{Chain, FilterRuntime};

use crate::client_addr::ListenerTrust;
use crate::config::LoadedConfig;
use crate::resilience::Resilience;
use crate::router::Router;
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;
pub use compile::{compile, CompileError};

/// An upstream and its resilience, side by side: the load balancer picks endpoints and
/// knows no breaker; the breaker, retry budget, bulkhead and outlier policy judge the
/// upstream's tries. Routes point at a cluster; a reload reuses the whole `Arc<Cluster>`
/// when its definition is unchanged.
pub struct Cluster {
    /// Endpoints and their selection (shared with discovery and health-check jobs).
    pub upstream: Arc<Upstream>,
    /// Breaker, retry policy and budget, bulkhead, outlier detection.
    pub resilience: Resilience,
}

impl Cluster {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.upstream.name
    }
}

/// Default request body limit: 10 MiB, as in the reference system.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Largest body prefix a filter may read (pingora replays at most its 64 KiB retry buffer).
pub const MAX_BODY_PREFIX: usize = 64 * 1024;

/// One route, compiled.
pub struct Route {
    /// Route name (metric label).
    pub name: Arc<str>,
    /// Where it goes.
    pub cluster: Arc<Cluster>,
    /// Prefix removed before forwarding.
    pub strip_prefix: Option<String>,
    /// Prefix added after stripping.
    pub add_prefix: Option<String>,
    /// Replacement path.
    pub rewrite_path: Option<String>,
    /// What `%2F` in the path does on this route.
    pub encoded_slashes: crate::config::model::EncodedSlashes,
    /// Request body limit in bytes (not applied to a tunnel's bytes).
    pub max_body_bytes: u64,
    /// Read timeout of an upgraded connection's both sides (`websocket.idle_timeout`).
    pub tunnel_idle_timeout: std::time::Duration,
    /// Filters in order, run as one chain.
    pub filters: Chain,
    /// The path pattern the route matches, as the span attribute `http.route` (OTel HTTP
    /// semantic conventions): the exact path, the template, or the prefix with `/*`;
    /// `None` for regex and path-less routes.
    pub http_route: Option<Arc<str>>,
    /// Bytes of body the filters need to see before running (0: none).
    pub body_prefix: usize,
    /// Whole bodies up to this many bytes are read before connecting upstream (0: bodies
    /// stream; `request_buffering`, or `max_body_bytes` when a filter buffers the body).
    pub buffer_body: usize,
    /// Whether a filter needs the whole body (and may replace it): the body read before the
    /// filters is given to them as `RequestCx::body`.
    pub filter_body: bool,
    /// This route's metric handles, resolved on first use.
    pub metrics: std::sync::OnceLock<crate::telemetry::RouteMetrics>,
}

/// Everything a request needs, immutable once built. A request pins one snapshot for
/// its whole life, so a reload never changes a request half way.
pub struct Snapshot {
    /// The config it was compiled from.
    pub loaded: LoadedConfig,
    /// The router over compiled routes.
    pub router: Router<Arc<Route>>,
    /// Upstreams (with their resilience) by name.
    pub upstreams: BTreeMap<String, Arc<Cluster>>,
    /// Request headers that filters write from verified data (JWT claim headers);
    /// client-sent copies are removed on every route.
    pub owned_headers: Vec<http::HeaderName>,
    /// Each listener's trusted proxies and PROXY protocol setting.
    pub listeners: Vec<ListenerTrust>,
    /// The access log's format and fields; `None` when `access_log.enabled` is false.
    pub access_log: Option<crate::config::model::AccessLogConfig>,
    /// Each TLS listener's certificates as the config's files say (by listener name),
    /// handed to `State::tls` when the snapshot goes live.
    pub tls_files: BTreeMap<String, crate::tls::FileCerts>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// The set of endpoint labels per upstream, used to drop metrics of removed ones.
    pub fn endpoint_keys(&self) -> HashSet<(String, String)> {
        self.upstreams
            .iter()
            .flat_map(|(n, c)| {
                c.upstream
                    .endpoints()
                    .iter()
                    .map(|e| (n.clone(), e.address.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Process-wide state: the current snapshot and what outlives it.
pub struct State {
    /// The current snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics and the event history: the one sink for state changes.
    pub telemetry: Arc<Telemetry>,
    /// Long-lived filter state (rate-limit counters, JWKS caches, Redis).
    pub filter_runtime: Arc<FilterRuntime>,
    /// The config file, when there is one (reloads read it again).
    pub config_path: Option<PathBuf>,
    /// Process start.
    pub started_at: SystemTime,
    /// DB pools read from the services' metrics (upstreams with `metrics_path`).
    pub service_pools: crate::upstream::pools::Pools,
    /// Set on SIGTERM: /readyz turns 503 and responses ask clients to close.
    pub draining: std::sync::atomic::AtomicBool,
    /// The certificate store of each TLS listener (outlives snapshots: ACME installs
    /// certificates there at run time).
    pub tls: crate::tls::TlsStores,
    /// The tracer and its exporter, when `tracing` was configured at start (its
    /// `sampler.ratio` follows reloads; the rest needs a restart).
    pub tracing: Option<Arc<gatehouse_otel::Tracing>>,
    /// The `redis.tls` files' contents, read once at start (the section is restart-only):
    /// the filters' Redis and registry discovery both connect with them.
    pub redis_tls: Option<gatehouse_registry::topology::RedisTls>,
}

impl State {
    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}
