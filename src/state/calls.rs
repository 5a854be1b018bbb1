//! The upstreams a wasm filter may call (`proxy_http_call` / the SDKs' `dispatch_http_call`):
//! a call names an upstream of the config, and goes to one of its endpoints picked from the
//! current snapshot as a request's would be (smooth weighted round-robin over the endpoints
//! that take traffic).

use std::sync::{Arc, Weak};

use super::State;

/// Resolves upstream names against the state's current snapshot; holds the state weakly (the
/// filter runtime that keeps this resolver is inside the state).
pub struct SnapshotUpstreams(Weak<State>);

impl SnapshotUpstreams {
    /// A resolver over `state`.
    pub fn new(state: &Arc<State>) -> Self {
        Self(Arc::downgrade(state))
    }
}

impl gatehouse_wasm::Upstreams for SnapshotUpstreams {
    fn resolve(&self, name: &str) -> Option<String> {
        let state = self.0.upgrade()?;
        let snap = state.snapshot.load();
        let cluster = snap.upstreams.get(name)?;
        cluster
            .upstream
            .pick(&[], crate::clock::mono_ms())
            .map(|e| e.address.clone())
    }
}
