//! What every wasm filter of the process shares: the module cache, shared data, the host's
//! and guests' metrics, the HTTP client for `proxy_http_call`, and the resolver that turns an
//! upstream's name into an address (set by the gateway once its state exists).

use std::sync::{Arc, OnceLock};

use crate::engine::ModuleCache;
use crate::metrics::HostMetrics;
use crate::shared::SharedData;

/// Resolves the upstream a guest names in `proxy_http_call` (`dispatch_http_call("authz", ..)`).
pub trait Upstreams: Send + Sync {
    /// The `host:port` to send a call for upstream `name` to (an endpoint chosen as for a
    /// request), or `None` when no upstream has that name or none of its endpoints is up.
    fn resolve(&self, name: &str) -> Option<String>;
}

/// The process-wide part of the host; one per gateway (made with its filter runtime).
pub struct WasmRuntime {
    pub(crate) shared: SharedData,
    pub(crate) metrics: HostMetrics,
    pub(crate) modules: ModuleCache,
    pub(crate) http: reqwest::Client,
    upstreams: OnceLock<Arc<dyn Upstreams>>,
}

impl WasmRuntime {
    /// The runtime, its metrics registered on `registry`.
    ///
    /// # Errors
    ///
    /// The metrics are registered on `registry` already, or the HTTP client cannot be built.
    pub fn new(registry: &prometheus::Registry) -> Result<Self, String> {
        let metrics = HostMetrics::register(registry)
            .map_err(|e| format!("registering wasm metrics: {e}"))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client for wasm calls: {e}"))?;
        Ok(Self {
            shared: SharedData::default(),
            metrics,
            modules: ModuleCache::default(),
            http,
            upstreams: OnceLock::new(),
        })
    }

    /// Sets the resolver of upstream names (once; later calls are ignored). Until it is set,
    /// every `proxy_http_call` fails (the guest gets a response with no headers).
    pub fn set_upstreams(&self, upstreams: Arc<dyn Upstreams>) {
        let _ = self.upstreams.set(upstreams);
    }

    pub(crate) fn upstreams(&self) -> Option<&Arc<dyn Upstreams>> {
        self.upstreams.get()
    }

    /// How many distinct modules were compiled (cached by content hash).
    pub fn cached_modules(&self) -> usize {
        self.modules.len()
    }
}
