//! Endpoint discovery: DNS names, endpoint files and the Redis registry. A failed refresh
//! keeps the last good set; endpoints that stay keep their live state (same `Arc`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gatehouse_registry::topology::{RedisTls, Topology};
use gatehouse_registry::Registry;
use serde::Deserialize;

use crate::config::model::{DiscoveryConfig, InitialHealth, UpstreamConfig};
use crate::telemetry::Telemetry;
use crate::upstream::{Endpoint, Source, Upstream};

/// One discovered endpoint: the address as found (`host:port`), where it connects, its weight.
pub type Found = (String, SocketAddr, u32);

/// Why a discovery refresh failed (the last good set stays).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The DNS lookup failed or found nothing.
    #[error("dns lookup of {name}:{port} failed: {reason}")]
    Dns {
        /// Name looked up.
        name: String,
        /// Port.
        port: u16,
        /// What went wrong.
        reason: String,
    },
    /// The endpoint file could not be read.
    #[error("{path}: {reason}")]
    FileRead {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The endpoint file was read but is not a valid endpoint list.
    #[error("{path}: {reason}")]
    FileInvalid {
        /// The file.
        path: String,
        /// What is wrong, with the entry's index.
        reason: String,
    },
    /// No `redis:` section at start (discovery uses the connection made from it).
    #[error("redis discovery needs a top-level `redis` section at start")]
    NoRedis,
    /// Redis could not be reached or answered with an error.
    #[error(transparent)]
    Registry(#[from] gatehouse_registry::RegistryError),
    /// A registry member is not a usable `host:port`.
    #[error("registry member {member:?}: {reason}")]
    Member {
        /// The member.
        member: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// What an endpoint file held when last read: its content hash (or read error) and, when
/// valid, the endpoints it listed.
struct SeenFile {
    fingerprint: String,
    found: Option<Vec<Found>>,
}

/// Discovery state that outlives snapshots: the one Redis registry connection (made
/// lazily from the `redis:` section the gateway started with, then reused) and what each
/// endpoint file looked like when last read (so an unchanged file is not parsed again and
/// a bad one is reported once, not every second).
pub struct Discovery {
    redis: Option<Topology>,
    tls: Option<RedisTls>,
    registry: tokio::sync::OnceCell<Registry>,
    prefix: String,
    seen_files: Mutex<HashMap<(String, PathBuf), SeenFile>>,
}

impl Discovery {
    /// Discovery over the Redis of the start config's `redis:` section, if any.
    pub fn new(redis: Option<Topology>) -> Self {
        Self::with_prefix(redis, gatehouse_registry::DEFAULT_PREFIX)
    }

    /// With TLS material (CA, client certificate) for the `rediss://` URLs.
    pub fn with_tls(mut self, tls: Option<RedisTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Same, with another registry key prefix.
    pub fn with_prefix(redis: Option<Topology>, prefix: &str) -> Self {
        Self {
            redis,
            tls: None,
            registry: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
            seen_files: Mutex::new(HashMap::new()),
        }
    }

    /// The registry client, connecting on first use; a failed connect is retried by the
    /// next refresh. Once made, the connection manager reconnects by itself.
    async fn registry(&self) -> Result<&Registry, DiscoveryError> {
        let Some(topology) = self.redis.as_ref() else {
            return Err(DiscoveryError::NoRedis);
        };
        self.registry
            .get_or_try_init(|| async {
                let r = Registry::connect_topology_tls(topology, self.tls.as_ref(), &self.prefix)
                    .await?;
                tracing::info!("connected to the redis registry for discovery");
                Ok(r)
            })
            .await
    }
}

/// Initial health of endpoints new to an upstream (`health_check.initial_state`).
pub fn initial_health(cfg: &UpstreamConfig) -> bool {
    !matches!(
        cfg.health_check.as_ref().map(|h| h.initial_state),
        Some(InitialHealth::Unhealthy)
    )
}

/// Builds the next endpoint list from `found`, reusing `current`'s endpoint with the same
/// address (same `Arc`, so health, ejections and in-flight counts stay with it). The one
/// rule of endpoint reuse: config compiles and discovery refreshes both go through it.
pub fn merge(
    current: &[Arc<Endpoint>],
    found: Vec<Found>,
    source: Source,
    healthy: bool,
) -> Vec<Arc<Endpoint>> {
    found
        .into_iter()
        .map(|(address, addr, weight)| {
            match current
                .iter()
                .find(|e| e.address == address && e.addr == addr)
            {
                Some(e) if e.weight == weight => e.clone(),
                Some(e) => Arc::new(e.reweighted(weight)),
                None => Arc::new(Endpoint::new(addr, address, weight, source, healthy)),
            }
        })
        .collect()
}

/// Replaces the endpoint set of `u` with `found`, reusing live endpoints with the same
/// address. Does nothing when the set is unchanged.
pub fn apply(tel: &Telemetry, u: &Upstream, source: Source, found: Vec<Found>) {
    let current = u.endpoints();
    let same = current.len() == found.len()
        && found.iter().all(|(a, s, w)| {
            current
                .iter()
                .any(|e| &e.address == a && e.addr == *s && e.weight == *w)
        });
    if same {
        return;
    }
    let next = merge(&current, found, source, initial_health(&u.config));
    let after: Vec<String> = next.iter().map(|e| e.address.clone()).collect();
    for gone in current.iter().filter(|e| !after.contains(&e.address)) {
        tel.endpoint_removed(&u.name, &gone.address);
    }
    let now = crate::clock::mono_ms();
    for e in &next {
        tel.endpoint_available(&u.name, &e.address, e.is_available(now));
    }
    tel.endpoints_changed(&u.name, source.as_str(), &after);
    u.set_endpoints(next);
}

/// Applies a refresh's result: the new set, or the failure reported (the last good set
/// stays). Hands the error back so the caller can count what it owns (Redis errors).
fn settle(
    tel: &Telemetry,
    u: &Upstream,
    source: Source,
    result: Result<Vec<Found>, DiscoveryError>,
) -> Result<(), DiscoveryError> {
    match result {
        Ok(found) => {
            apply(tel, u, source, found);
            Ok(())
        }
        Err(e) => {
            tel.discovery_failed(&u.name, source.as_str(), &e);
            Err(e)
        }
    }
}

// === DNS ===

/// Resolves `host:port` (IP literals without a lookup; blocking for names).
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolved to no address"))
}

/// Resolves `name:port` (A and AAAA), sorted and deduplicated, all with weight 1.
pub async fn lookup_dns(name: &str, port: u16) -> Result<Vec<Found>, DiscoveryError> {
    let err = |reason: String| DiscoveryError::Dns {
        name: name.to_string(),
        port,
        reason,
    };
    let addrs = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut found: Vec<Found> = addrs.map(|a| (a.to_string(), a, 1)).collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(err("no addresses".into()));
    }
    Ok(found)
}

/// Re-resolves a DNS upstream; a failed lookup keeps the last set and is counted.
pub async fn refresh_dns(tel: Arc<Telemetry>, u: Arc<Upstream>) -> Result<(), DiscoveryError> {
    let DiscoveryConfig::Dns(d) = &u.config.discovery else {
        return Ok(());
    };
    settle(&tel, &u, Source::Dns, lookup_dns(&d.name, d.port).await)
}

// === file ===

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

/// Parses an endpoint file (YAML or JSON: a non-empty list of endpoints). Host names are
/// resolved once here (blocking: call it off the async threads).
pub fn parse_endpoint_file(text: &str) -> Result<Vec<Found>, String> {
    let list: Vec<FileEndpoint> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Found> = Vec::with_capacity(list.len());
    for (i, e) in list.into_iter().enumerate() {
        if e.weight == 0 {
            return Err(format!("[{i}].weight: must be at least 1"));
        }
        let addr = resolve(&e.address).map_err(|m| format!("[{i}].address: {m}"))?;
        if out.iter().any(|(a, _, _)| *a == e.address) {
            return Err(format!("[{i}].address: {:?} is listed twice", e.address));
        }
        out.push((e.address, addr, e.weight));
    }
    if out.is_empty() {
        return Err("the endpoint list is empty".into());
    }
    Ok(out)
}

/// The endpoint file of a file-discovery upstream: relative paths are relative to the
/// directory of the config file.
pub fn endpoint_file_path(config_file: Option<&Path>, path: &str) -> PathBuf {
    let base = config_file
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    base.join(path)
}

/// Reads and parses an endpoint file (blocking).
pub fn read_endpoint_file(path: &Path) -> Result<Vec<Found>, DiscoveryError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DiscoveryError::FileRead {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse_endpoint_file(&text).map_err(|reason| DiscoveryError::FileInvalid {
        path: shown,
        reason,
    })
}

/// What one look at an endpoint file found.
enum FileLook {
    /// Same content (or same error) as last time: nothing to do.
    Unchanged,
    /// A valid list.
    Good(Vec<Found>),
    /// Unreadable or invalid.
    Bad(DiscoveryError),
}

/// Re-reads an endpoint file (relative to `config_file`'s directory) when its content
/// changed; a bad file is refused (logged and counted once per distinct bad content) and
/// the last good set stays.
pub async fn refresh_file(
    tel: Arc<Telemetry>,
    u: Arc<Upstream>,
    disc: Arc<Discovery>,
    config_file: Option<PathBuf>,
) -> Result<(), DiscoveryError> {
    let DiscoveryConfig::File(f) = &u.config.discovery else {
        return Ok(());
    };
    let path = endpoint_file_path(config_file.as_deref(), &f.path);
    let key = (u.name.to_string(), path.clone());
    let memo = disc.clone();
    let read = tokio::task::spawn_blocking(move || {
        let shown = path.display().to_string();
        let (fingerprint, text) = match std::fs::read_to_string(&path) {
            Ok(t) => (crate::config::hash_text(&t), Ok(t)),
            Err(e) => (format!("error: {e}"), Err(e.to_string())),
        };
        let mut seen = memo.seen_files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = seen.get(&key).filter(|l| l.fingerprint == fingerprint) {
            // Re-applied (a no-op when nothing changed): a reload may have built this
            // upstream from a copy taken just before the last change was applied.
            return last
                .found
                .clone()
                .map_or(FileLook::Unchanged, FileLook::Good);
        }
        let look = match text {
            Err(reason) => FileLook::Bad(DiscoveryError::FileRead {
                path: shown,
                reason,
            }),
            Ok(t) => match parse_endpoint_file(&t) {
                Ok(found) => FileLook::Good(found),
                Err(reason) => FileLook::Bad(DiscoveryError::FileInvalid {
                    path: shown,
                    reason,
                }),
            },
        };
        let found = match &look {
            FileLook::Good(f) => Some(f.clone()),
            _ => None,
        };
        seen.insert(key, SeenFile { fingerprint, found });
        look
    })
    .await;
    match read {
        Ok(FileLook::Unchanged) => Ok(()),
        Ok(FileLook::Good(found)) => settle(&tel, &u, Source::File, Ok(found)),
        Ok(FileLook::Bad(e)) => settle(&tel, &u, Source::File, Err(e)),
        Err(e) => {
            tracing::error!(upstream = %u.name, error = %e, "file discovery task failed");
            Ok(())
        }
    }
}

// === Redis registry ===

/// Resolves a registry member `host:port` without blocking.
async fn resolve_member(member: &str) -> Result<SocketAddr, DiscoveryError> {
    if let Ok(a) = member.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = |reason: String| DiscoveryError::Member {
        member: member.to_string(),
        reason,
    };
    tokio::net::lookup_host(member)
        .await
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolved to no address".into()))
}

/// The live members of `service` in the registry (expired heartbeats are dropped and
/// pruned by the registry client). Members that cannot be resolved are skipped with a
/// warning rather than failing the whole refresh.
pub async fn lookup_registry(
    disc: &Discovery,
    service: &str,
) -> Result<Vec<Found>, DiscoveryError> {
    let live = disc.registry().await?.list_live(service).await?;
    let mut found = Vec::with_capacity(live.len());
    for (member, weight) in live {
        match resolve_member(&member).await {
            Ok(addr) => found.push((member, addr, weight.max(1))),
            Err(e) => tracing::warn!(service, error = %e, "skipping registry member"),
        }
    }
    Ok(found)
}

/// Polls the Redis registry for the live members of the service. An unreachable Redis
/// keeps the last known set; an empty registry (every heartbeat expired) empties it.
pub async fn refresh_redis(
    tel: Arc<Telemetry>,
    u: Arc<Upstream>,
    disc: Arc<Discovery>,
) -> Result<(), DiscoveryError> {
    let DiscoveryConfig::Redis(r) = &u.config.discovery else {
        return Ok(());
    };
    let found = lookup_registry(&disc, &r.service).await;
    settle(&tel, &u, Source::Redis, found)
}

// === first endpoint set of a new upstream ===

/// The endpoints a dynamic upstream starts with when a config (re)load creates it, so
/// that it serves at once instead of after its first refresh: the endpoint file is read
/// (a bad one refuses the config, like a bad config), the DNS name resolved (a failed
/// lookup starts empty and is retried on every refresh). The registry is read by the
/// first refresh, within a fraction of a second of the swap.
pub fn initial_endpoints(
    cfg: &UpstreamConfig,
    config_file: Option<&Path>,
) -> Result<Vec<Arc<Endpoint>>, DiscoveryError> {
    let healthy = initial_health(cfg);
    let (found, source) = match &cfg.discovery {
        DiscoveryConfig::Static(_) | DiscoveryConfig::Redis(_) => return Ok(Vec::new()),
        DiscoveryConfig::File(f) => (
            read_endpoint_file(&endpoint_file_path(config_file, &f.path))?,
            Source::File,
        ),
        DiscoveryConfig::Dns(d) => {
            use std::net::ToSocketAddrs;
            match (d.name.as_str(), d.port).to_socket_addrs() {
                Ok(addrs) => {
                    let mut found: Vec<Found> = addrs.map(|a| (a.to_string(), a, 1)).collect();
                    found.sort();
                    found.dedup();
                    (found, Source::Dns)
                }
                Err(e) => {
                    tracing::warn!(name = %d.name, error = %e, "dns lookup failed; the upstream starts empty and is retried");
                    (Vec::new(), Source::Dns)
                }
            }
        }
    };
    Ok(merge(&[], found, source, healthy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_file_parses_yaml_and_json() {
        let y = parse_endpoint_file("- { address: 127.0.0.1:1, weight: 3, metadata: { zone: a } }\n- address: 127.0.0.1:2\n").unwrap();
        assert_eq!(
            y.iter().map(|f| (f.0.as_str(), f.2)).collect::<Vec<_>>(),
            [("127.0.0.1:1", 3), ("127.0.0.1:2", 1)]
        );
        let j = parse_endpoint_file(r#"[{"address": "127.0.0.1:1"}]"#).unwrap();
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn endpoint_file_errors_name_the_entry() {
        assert_eq!(
            parse_endpoint_file("[]").unwrap_err(),
            "the endpoint list is empty"
        );
        assert_eq!(
            parse_endpoint_file("- { address: 127.0.0.1:1, weight: 0 }").unwrap_err(),
            "[0].weight: must be at least 1"
        );
        assert!(
            parse_endpoint_file("- { address: 127.0.0.1:1 }\n- { address: 127.0.0.1:1 }")
                .unwrap_err()
                .starts_with("[1].address")
        );
        assert!(parse_endpoint_file("- { adress: 127.0.0.1:1 }")
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse_endpoint_file("- { address: nope }")
            .unwrap_err()
            .starts_with("[0].address"));
    }

    /// A gateway state with one DNS upstream `app` on a name that never resolves.
    fn state_with_unresolvable_dns() -> Arc<crate::state::State> {
        let yaml = "listeners: [ { name: p, address: \"127.0.0.1:1\" } ]\nupstreams:\n  app: { discovery: { dns: { name: no-such-host.invalid, port: 80, refresh: 1s } } }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: app }\n";
        let loaded = crate::config::load_str(yaml, None).unwrap();
        crate::app::build_state(loaded, None, Default::default()).unwrap()
    }

    #[tokio::test]
    async fn failed_dns_lookup_keeps_the_last_set_and_counts() {
        let state = state_with_unresolvable_dns();
        let u = state.current().upstreams["app"].upstream.clone();
        assert!(
            u.endpoints().is_empty(),
            "an unresolvable name starts empty"
        );
        let a: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        u.set_endpoints(merge(&[], vec![(a.to_string(), a, 1)], Source::Dns, true));
        let before = u.endpoints();
        let tel = state.telemetry.clone();
        let _ = refresh_dns(tel.clone(), u.clone()).await;
        let _ = refresh_dns(tel, u.clone()).await;
        assert!(
            Arc::ptr_eq(&before, &u.endpoints()),
            "the last good set stays"
        );
        let errors = state
            .telemetry
            .metrics
            .discovery_errors
            .with_label_values(&["app", "dns"])
            .get();
        assert_eq!(errors, 2);
    }

    #[tokio::test]
    async fn unreachable_registry_keeps_the_last_set() {
        // Nothing listens on port 1: every connect fails fast.
        let yaml = "listeners: [ { name: p, address: \"127.0.0.1:1\" } ]\nredis: { url: \"redis://127.0.0.1:1\" }\nupstreams:\n  app: { discovery: { redis: { service: svc } } }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: app }\n";
        let state = crate::app::build_state(
            crate::config::load_str(yaml, None).unwrap(),
            None,
            Default::default(),
        )
        .unwrap();
        let u = state.current().upstreams["app"].upstream.clone();
        let a: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        u.set_endpoints(merge(&[], vec![(a.to_string(), a, 1)], Source::Redis, true));
        let before = u.endpoints();
        let disc = Arc::new(Discovery::new(Some(Topology::Standalone(
            "redis://127.0.0.1:1".into(),
        ))));
        let tel = state.telemetry.clone();
        let _ = refresh_redis(tel.clone(), u.clone(), disc.clone()).await;
        let _ = refresh_redis(tel, u.clone(), disc).await;
        assert!(
            Arc::ptr_eq(&before, &u.endpoints()),
            "the last known set stays"
        );
        assert_eq!(
            state
                .telemetry
                .metrics
                .discovery_errors
                .with_label_values(&["app", "redis"])
                .get(),
            2
        );
        assert!(matches!(
            lookup_registry(&Discovery::new(None), "svc").await,
            Err(DiscoveryError::NoRedis)
        ));
    }

    #[test]
    fn merge_keeps_live_state_of_endpoints_that_stay() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let first = merge(
            &[],
            vec![(a.to_string(), a, 1), (b.to_string(), b, 1)],
            Source::File,
            true,
        );
        first[0].set_healthy(false);
        let next = merge(&first, vec![(a.to_string(), a, 1)], Source::File, true);
        assert!(Arc::ptr_eq(&first[0], &next[0]));
        assert!(!next[0].is_healthy());
        let reweighted = merge(&first, vec![(a.to_string(), a, 5)], Source::File, true);
        assert_eq!(reweighted[0].weight, 5);
        assert!(!reweighted[0].is_healthy(), "a new weight keeps the health");
        let back = merge(
            &next,
            vec![(a.to_string(), a, 1), (b.to_string(), b, 1)],
            Source::File,
            false,
        );
        assert!(
            !back[1].is_healthy(),
            "a new endpoint starts in the configured initial state"
        );
    }
}
