//! Snapshot::compile: config -> router, upstreams and filter chains, reusing the live
//! state of upstreams and endpoints that still exist in the previous snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use gatehouse_filters::{FilterKinds, FilterRuntime};

use super::{Cluster, Route, Snapshot, DEFAULT_MAX_BODY_BYTES, MAX_BODY_PREFIX};
use crate::client_addr::{ListenerTrust, TrustedProxies};
use crate::config::model::{DiscoveryConfig, UpstreamConfig};
use crate::config::{self, ConfigError, ConfigErrors, LoadedConfig};
use crate::resilience::Resilience;
use crate::router::{Matcher, Router};
use crate::upstream::discovery::{self, Found};
use crate::upstream::tls::UpstreamTls;
use crate::upstream::{Endpoint, Source, Upstream};

/// Compile errors are config errors with their field path and location.
pub type CompileError = ConfigErrors;

/// Builds the endpoint list of a static upstream, reusing `prev`'s endpoints with the
/// same address (and weight) so their health survives (`discovery::merge`'s rule).
fn static_endpoints(
    list: &[crate::config::model::EndpointConfig],
    cfg: &UpstreamConfig,
    prev: Option<&Upstream>,
    path: &str,
    errs: &mut Vec<ConfigError>,
) -> Vec<Arc<Endpoint>> {
    let mut found: Vec<Found> = Vec::with_capacity(list.len());
    for (i, ep) in list.iter().enumerate() {
        match discovery::resolve(&ep.address) {
            Ok(addr) => found.push((ep.address.clone(), addr, ep.weight)),
            Err(e) => errs.push(ConfigError::at(format!("{path}[{i}].address"), e)),
        }
    }
    let prev_eps = prev.map(|u| u.endpoints()).unwrap_or_default();
    discovery::merge(
        &prev_eps,
        found,
        Source::Static,
        discovery::initial_health(cfg),
    )
}

/// The error for a filter entry whose kind is neither built in nor registered: the
/// known kinds listed, the closest one suggested.
fn unknown_kind(at: String, kind: &str, kinds: &FilterKinds) -> ConfigError {
    let known: Vec<&str> = kinds.names().collect();
    let err = ConfigError::at(
        at,
        format!(
            "unknown filter kind `{kind}`; known kinds: {}",
            known.join(", ")
        ),
    );
    match config::error::did_you_mean(kind, known) {
        Some(hint) => err.with_hint(hint),
        None => err,
    }
}

/// The low-cardinality path pattern of a route for traces (`http.route`).
fn http_route(m: &crate::config::model::MatchConfig) -> Option<Arc<str>> {
    if let Some(p) = m.path.as_deref().or(m.path_template.as_deref()) {
        return Some(Arc::from(p));
    }
    let prefix = m.path_prefix.as_deref()?;
    Some(Arc::from(
        format!("{}/*", prefix.trim_end_matches('/')).as_str(),
    ))
}

/// Compiles a loaded config into a snapshot. `prev` donates live state.
pub fn compile(
    loaded: LoadedConfig,
    prev: Option<&Snapshot>,
    runtime: &Arc<FilterRuntime>,
) -> Result<Snapshot, CompileError> {
    let cfg = &loaded.config;
    let mut errs: Vec<ConfigError> = Vec::new();

    // Relative paths in a filter's config are relative to the config file (FilterBuildContext).
    let config_dir = loaded
        .file
        .as_deref()
        .map(|f| f.parent().unwrap_or(std::path::Path::new("")))
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        });

    let mut upstreams: BTreeMap<String, Arc<Cluster>> = BTreeMap::new();
    for (name, ucfg) in &cfg.upstreams {
        // The TLS files are read on every compile, so that a reload picks up renewed ones.
        let tls = match &ucfg.tls {
            None => None,
            Some(t) => {
                let dir = config_dir.unwrap_or(std::path::Path::new("."));
                let at = format!("upstreams.{name}.tls");
                match UpstreamTls::load(t, &ucfg.discovery, dir, &at, name) {
                    Ok(t) => Some(Arc::new(t)),
                    // The compile fails; the upstream still exists for its routes.
                    Err(e) => {
                        errs.extend(e);
                        None
                    }
                }
            }
        };
        let prev_cluster = prev.and_then(|p| p.upstreams.get(name));
        if let Some(p) = prev_cluster {
            if p.upstream.config == *ucfg && p.upstream.peer.tls == tls {
                upstreams.insert(name.clone(), p.clone());
                continue;
            }
        }
        let prev_up = prev_cluster.map(|c| &c.upstream);
        let endpoints = match &ucfg.discovery {
            DiscoveryConfig::Static(list) => static_endpoints(
                list,
                ucfg,
                prev_up.map(|u| u.as_ref()),
                &format!("upstreams.{name}.discovery.static"),
                &mut errs,
            ),
            // Dynamic sources keep what the previous snapshot discovered until their own
            // refresh replaces it; a new or changed source starts from a first lookup.
            _ => match prev_up.filter(|p| p.config.discovery == ucfg.discovery) {
                Some(p) => p.endpoints().as_ref().clone(),
                None => {
                    discovery::initial_endpoints(ucfg, loaded.file.as_deref()).unwrap_or_else(|e| {
                        errs.push(ConfigError::at(
                            format!("upstreams.{name}.discovery.file.path"),
                            e.to_string(),
                        ));
                        Vec::new()
                    })
                }
            },
        };
        // A changed upstream that still exists keeps its breaker state and retry budget.
        let resilience = match prev_cluster {
            Some(p) => Resilience::inherit(ucfg, &p.resilience),
            None => Resilience::new(ucfg),
        };
        let upstream = Upstream::new(name, ucfg.clone(), endpoints)
            .with_idle_timeout(
                cfg.runtime.upstream_idle_timeout.get(),
                cfg.runtime.upstream_burst_threshold,
                cfg.runtime.upstream_burst_idle_timeout.get(),
            )
            .with_tls(tls);
        let upstream = Arc::new(upstream);
        upstreams.insert(
            name.clone(),
            Arc::new(Cluster {
                upstream,
                resilience,
            }),
        );
    }

    let mut owned_headers: Vec<http::HeaderName> = Vec::new();
    let mut entries = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        let matcher = match Matcher::compile(&r.matcher) {
            Ok(m) => m.with_priority(r.priority),
            Err(e) => {
                errs.push(ConfigError::at(format!("routes[{i}].match"), e.to_string()));
                continue;
            }
        };
        let Some(cluster) = upstreams.get(&r.upstream).cloned() else {
            errs.push(ConfigError::at(
                format!("routes[{i}].upstream"),
                format!("no upstream named {:?}", r.upstream),
            ));
            continue;
        };
        let mut filters = Vec::with_capacity(r.filters.len());
        for (j, f) in r.filters.iter().enumerate() {
            for h in f.owned_request_headers() {
                if !owned_headers.contains(&h) {
                    owned_headers.push(h);
                }
            }
            let at = format!("routes[{i}].filters[{j}].{}", f.kind());
            if !runtime.kinds().contains(f.kind()) {
                errs.push(unknown_kind(at, f.kind(), runtime.kinds()));
                continue;
            }
            let cx = gatehouse_filters::FilterBuildContext {
                kind: f.kind(),
                route: &r.name,
                config_dir,
            };
            match gatehouse_filters::build_with(f, &cx, runtime) {
                Ok(built) => filters.push(built),
                Err(e) => {
                    let hint = config::unknown_name_hint(&e.message);
                    let path = match &e.path {
                        Some(p) if p.starts_with('[') => format!("{at}{p}"),
                        Some(p) => format!("{at}.{p}"),
                        None => at,
                    };
                    let mut err = ConfigError::at(path, e.message);
                    err.hint = hint;
                    errs.push(err);
                }
            }
        }
        let filters = gatehouse_filters::Chain::new(filters, runtime.metrics());
        let body_prefix = filters.body_prefix().min(MAX_BODY_PREFIX);
        let max_body_bytes = r.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let filter_body = filters.buffers_request_body();
        let mut buffer_body = r.request_buffering.as_ref().map_or(0, |b| b.max_bytes);
        if filter_body {
            buffer_body = buffer_body.max(usize::try_from(max_body_bytes).unwrap_or(usize::MAX));
        }
        let route = Route {
            name: Arc::from(r.name.as_str()),
            cluster,
            strip_prefix: r.strip_prefix.clone(),
            add_prefix: r.add_prefix.clone(),
            rewrite_path: r.rewrite_path.clone(),
            encoded_slashes: r.encoded_slashes,
            max_body_bytes,
            tunnel_idle_timeout: r.websocket.idle_timeout.get(),
            filters,
            http_route: http_route(&r.matcher),
            body_prefix,
            buffer_body,
            filter_body,
            metrics: std::sync::OnceLock::new(),
        };
        entries.push((matcher, Arc::new(route)));
    }

    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    for (i, l) in cfg.listeners.iter().enumerate() {
        match (
            l.address.parse::<SocketAddr>(),
            TrustedProxies::parse(&l.trusted_proxies),
        ) {
            (Ok(address), Ok(trusted)) => listeners.push(ListenerTrust {
                address,
                trusted,
                proxy_protocol: l.proxy_protocol,
                redirect_https: l.redirect_https.then_some(l.https_port),
            }),
            (Err(e), _) => errs.push(ConfigError::at(
                format!("listeners[{i}].address"),
                e.to_string(),
            )),
            (_, Err(e)) => errs.push(ConfigError::at(
                format!("listeners[{i}].trusted_proxies"),
                e.to_string(),
            )),
        }
    }

    let mut tls_files = BTreeMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let dir = config_dir.unwrap_or(std::path::Path::new("."));
        match crate::tls::load_files(tls, &format!("listeners[{i}].tls"), &l.name, dir) {
            Ok(files) => {
                tls_files.insert(l.name.clone(), files);
            }
            Err(e) => errs.extend(e),
        }
    }

    if !errs.is_empty() {
        return Err(ConfigErrors(
            errs.into_iter().map(|e| loaded.locate(e)).collect(),
        ));
    }
    Ok(Snapshot {
        router: Router::new(entries),
        upstreams,
        owned_headers,
        listeners,
        access_log: cfg.access_log.enabled.then(|| cfg.access_log.clone()),
        tls_files,
        loaded,
        loaded_at: SystemTime::now(),
    })
}
