//! Endpoint discovery refreshes: DNS names, endpoint files and the Redis registry. A
//! failed refresh keeps the last good set; endpoints that stay keep their live state.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::model::{DiscoveryConfig, InitialHealth};
use crate::state::State;
use crate::upstream::{Endpoint, Source, Upstream};

/// Replaces the endpoint set of `u` with `found` (address string, socket address, weight),
/// reusing live endpoints with the same address.
pub fn apply(state: &State, u: &Upstream, source: Source, found: Vec<(String, std::net::SocketAddr, u32)>) {
    let current = u.endpoints();
    let same = current.len() == found.len()
        && found.iter().all(|(a, s, w)| current.iter().any(|e| &e.address == a && e.addr == *s && e.weight == *w));
    if same {
        return;
    }
    let initial = !matches!(u.config.health_check.as_ref().map(|h| h.initial_state), Some(InitialHealth::Unhealthy));
    let next: Vec<Arc<Endpoint>> = found
        .into_iter()
        .map(|(address, addr, weight)| match current.iter().find(|e| e.address == address && e.addr == addr) {
            Some(e) if e.weight == weight => e.clone(),
            Some(e) => Arc::new(e.reweighted(weight)),
            None => Arc::new(Endpoint::new(addr, address, weight, source, initial)),
        })
        .collect();
    let before: Vec<String> = current.iter().map(|e| e.address.clone()).collect();
    let after: Vec<String> = next.iter().map(|e| e.address.clone()).collect();
    for gone in before.iter().filter(|a| !after.contains(a)) {
        let _ = state.metrics.endpoint_healthy.remove_label_values(&[&*u.name, gone.as_str()]);
    }
    tracing::info!(upstream = %u.name, source = source.as_str(), endpoints = ?after, "endpoints changed");
    state.events.push("discovery", format!("{}: endpoints now {}", u.name, after.join(", ")));
    u.set_endpoints(next);
}

fn failed(state: &State, u: &Upstream, source: Source, err: &str) {
    tracing::warn!(upstream = %u.name, source = source.as_str(), error = err, "discovery refresh failed; keeping the last good endpoints");
    state.metrics.discovery_errors.with_label_values(&[&u.name, source.as_str()]).inc();
}

/// Re-resolves a DNS upstream (A and AAAA); all addresses get weight 1.
pub async fn refresh_dns(state: Arc<State>, u: Arc<Upstream>) {
    let DiscoveryConfig::Dns(d) = &u.config.discovery else { return };
    match tokio::net::lookup_host((d.name.as_str(), d.port)).await {
        Ok(addrs) => {
            let mut found: Vec<_> = addrs.map(|a| (a.to_string(), a, 1)).collect();
            found.sort();
            found.dedup();
            if found.is_empty() {
                failed(&state, &u, Source::Dns, "no addresses");
            } else {
                apply(&state, &u, Source::Dns, found);
            }
        }
        Err(e) => failed(&state, &u, Source::Dns, &e.to_string()),
    }
}

/// One entry of an endpoint file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    /// `host:port`.
    pub address: String,
    /// Weight, default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Free-form metadata (kept for operators; not used for routing).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// Parses an endpoint file (YAML or JSON: a list of endpoints).
pub fn parse_endpoint_file(text: &str) -> Result<Vec<(String, std::net::SocketAddr, u32)>, String> {
    let list: Vec<FileEndpoint> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.into_iter().enumerate() {
        if e.weight == 0 {
            return Err(format!("[{i}].weight: must be at least 1"));
        }
        let addr = crate::state::compile::resolve(&e.address).map_err(|m| format!("[{i}].address: {m}"))?;
        out.push((e.address, addr, e.weight));
    }
    if out.is_empty() {
        return Err("the endpoint list is empty".into());
    }
    Ok(out)
}

/// Re-reads an endpoint file; a bad file is refused and the last good set stays.
pub async fn refresh_file(state: Arc<State>, u: Arc<Upstream>) {
    let DiscoveryConfig::File(f) = &u.config.discovery else { return };
    let snap = state.current();
    let base = snap.loaded.file.as_ref().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default();
    let path = base.join(&f.path);
    let result = tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display())).and_then(|t| parse_endpoint_file(&t))
    })
    .await;
    match result {
        Ok(Ok(found)) => apply(&state, &u, Source::File, found),
        Ok(Err(e)) => failed(&state, &u, Source::File, &e),
        Err(e) => failed(&state, &u, Source::File, &e.to_string()),
    }
}

/// Polls the Redis registry for live members of the service.
pub async fn refresh_redis(state: Arc<State>, u: Arc<Upstream>) {
    let DiscoveryConfig::Redis(r) = &u.config.discovery else { return };
    let _ = (&state, r);
    failed(&state, &u, Source::Redis, "redis discovery is not wired yet");
}
