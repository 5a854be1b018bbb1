//! Snapshot-wide gauge sync: brings the metrics that describe the running config in line
//! with a snapshot (at start, after each reload, and periodically from the maintenance
//! loop). State changes themselves are reported where they happen, through `telemetry`.

use super::{Snapshot, State};
use crate::clock::mono_ms;
use crate::config::model::DiscoveryConfig;
use crate::telemetry::{remove_series, Telemetry, BREAKER_STATES};

/// Drops metric series of endpoints that no longer exist and publishes the health of new
/// ones, after `old` was replaced by the current snapshot.
pub fn after_swap(state: &State, old: &Snapshot) {
    let new = state.current();
    let keep = new.endpoint_keys();
    for (u, e) in old.endpoint_keys() {
        if !keep.contains(&(u.clone(), e.clone())) {
            state.telemetry.endpoint_removed(&u, &e);
        }
    }
    publish(&state.telemetry, &new);
}

/// Sets every gauge that follows `snap`: `gatehouse_upstream_endpoint_healthy` of every
/// endpoint, the one-hot breaker state of every upstream with a breaker (series of others
/// dropped), and series known now at 0 so that rate() and alerts see them before traffic.
/// Also announces the return of endpoints whose ejection time is over.
pub fn publish(tel: &Telemetry, snap: &Snapshot) {
    let now = mono_ms();
    let m = &tel.metrics;
    for (name, c) in &snap.upstreams {
        let (u, r) = (&c.upstream, &c.resilience);
        let checked = u.config.health_check.is_some() || u.config.outlier_detection.is_some();
        for e in u.endpoints().iter() {
            if r.outlier.is_some() && e.end_ejection(now) && e.is_healthy() {
                e.announce_health(tel, name, true, "outlier ejection time is over");
            }
            tel.endpoint_available(name, &e.address, e.is_available(now));
            if checked {
                for to in ["healthy", "unhealthy"] {
                    m.health_transitions.with_label_values(&[
                        name,
                        tel.endpoint_label(&e.address),
                        to,
                    ]);
                }
            }
        }
        let source = match &u.config.discovery {
            DiscoveryConfig::Static(_) => None,
            DiscoveryConfig::Dns(_) => Some("dns"),
            DiscoveryConfig::File(_) => Some("file"),
            DiscoveryConfig::Redis(_) => Some("redis"),
        };
        if let Some(source) = source {
            m.discovery_errors.with_label_values(&[name, source]);
        }
        if r.retry.is_some() {
            for reason in ["connect_error", "timeout", "reset", "status"] {
                m.retries.with_label_values(&[name, reason]);
            }
            m.retry_budget_exhausted.with_label_values(&[name.as_str()]);
        }
        if let Some(b) = &r.breaker {
            tel.breaker_state(name, b.state().as_label());
            for to in BREAKER_STATES {
                m.breaker_transitions
                    .with_label_values(&[name.as_str(), to]);
            }
            m.breaker_rejections.with_label_values(&[name.as_str()]);
        }
        if r.bulkhead.is_some() {
            m.bulkhead_rejections.with_label_values(&[name.as_str()]);
        }
    }
    drop_stale_breaker_series(tel, snap);
}

/// Removes `gatehouse_circuit_breaker_state` series of upstreams that are gone or lost
/// their breaker.
fn drop_stale_breaker_series(tel: &Telemetry, snap: &Snapshot) {
    remove_series(&tel.metrics.breaker_state, |label| {
        !label("upstream").is_some_and(|u| {
            snap.upstreams
                .get(&u)
                .is_some_and(|c| c.resilience.breaker.is_some())
        })
    });
}
