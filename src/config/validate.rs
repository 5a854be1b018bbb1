//! Semantic checks that serde cannot make. Collects every problem, each with its field path.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::error::{did_you_mean, ConfigError, ConfigWarning};
use super::model::{
    AccessLogConfig, AccessLogFormat, DiscoveryConfig, GatewayConfig, ListenerConfig, MatchConfig,
    RetryOn, UpstreamConfig, UpstreamProtocol,
};
use crate::client_addr::TrustedProxies;

/// Returns (errors, warnings); the config is usable only when `errors` is empty.
pub fn validate(cfg: &GatewayConfig) -> (Vec<ConfigError>, Vec<ConfigWarning>) {
    let mut errs = Vec::new();
    let mut warns = Vec::new();
    listeners(cfg, &mut errs, &mut warns);
    upstreams(cfg, &mut errs, &mut warns);
    routes(cfg, &mut errs, &mut warns);
    if let Some(r) = &cfg.redis {
        redis(r, &mut errs);
    }
    if cfg.runtime.downstream_read_buffer < 1024 {
        errs.push(ConfigError::at(
            "runtime.downstream_read_buffer",
            "must be at least 1024 bytes",
        ));
    }
    if cfg.runtime.threads == Some(0) {
        errs.push(ConfigError::at("runtime.threads", "must be at least 1"));
    }
    if cfg.runtime.upstream_burst_idle_timeout.get() > cfg.runtime.upstream_idle_timeout.get() {
        errs.push(ConfigError::at(
            "runtime.upstream_burst_idle_timeout",
            format!(
                "must be at most upstream_idle_timeout ({:?}): it shortens the idle time of connections a burst opened",
                cfg.runtime.upstream_idle_timeout.get()
            ),
        ));
    }
    if cfg.shutdown.drain_delay.get() > std::time::Duration::from_secs(300) {
        errs.push(ConfigError::at(
            "shutdown.drain_delay",
            "must be at most 300s (listeners keep accepting that long after SIGTERM)",
        ));
    }
    access_log(&cfg.access_log, &mut errs);
    if let Some(t) = &cfg.tracing {
        tracing_section(t, &mut errs);
    }
    (errs, warns)
}

/// The `tracing:` section: an http(s) collector URL, a ratio in 0..=1, a non-empty queue.
fn tracing_section(t: &crate::config::model::TracingConfig, errs: &mut Vec<ConfigError>) {
    let url = t.otlp_endpoint.as_str();
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok
        || url
            .parse::<http::Uri>()
            .map_or(true, |u| u.host().is_none())
    {
        errs.push(
            ConfigError::at(
                "tracing.otlp_endpoint",
                format!("{url:?} is not an http:// or https:// URL"),
            )
            .with_hint("e.g. `otlp_endpoint: http://127.0.0.1:4318` (4317 for grpc)"),
        );
    }
    let r = t.sampler.ratio;
    if !(0.0..=1.0).contains(&r) {
        errs.push(ConfigError::at(
            "tracing.sampler.ratio",
            format!("{r} is not between 0.0 and 1.0"),
        ));
    }
    if t.max_queue_size == 0 {
        errs.push(ConfigError::at(
            "tracing.max_queue_size",
            "must be at least 1",
        ));
    }
    if t.service_name.trim().is_empty() {
        errs.push(ConfigError::at("tracing.service_name", "must not be empty"));
    }
}

fn access_log(cfg: &AccessLogConfig, errs: &mut Vec<ConfigError>) {
    let Some(fields) = &cfg.fields else { return };
    if cfg.format != AccessLogFormat::Json {
        errs.push(
            ConfigError::at(
                "access_log.fields",
                "a field list applies to `format: json` only",
            )
            .with_hint("remove `fields`, or set `format: json`"),
        );
    }
    if fields.is_empty() {
        errs.push(
            ConfigError::at("access_log.fields", "the field list is empty")
                .with_hint("list at least one field, or set `enabled: false`"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, f) in fields.iter().enumerate() {
        if !seen.insert(f) {
            errs.push(ConfigError::at(
                format!("access_log.fields[{i}]"),
                "this field is already listed",
            ));
        }
    }
}

fn parse_addr(addr: &str, path: String, errs: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                ConfigError::at(path, format!("{addr:?} is not an ip:port address"))
                    .with_hint("write it like 127.0.0.1:8080 or [::1]:8080"),
            );
            None
        }
    }
}

fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listeners(cfg: &GatewayConfig, errs: &mut Vec<ConfigError>, warns: &mut Vec<ConfigWarning>) {
    if cfg.listeners.is_empty() {
        errs.push(ConfigError::at(
            "listeners",
            "at least one listener is needed",
        ));
    }
    let mut names = HashMap::new();
    let mut bound: Vec<(String, SocketAddr)> = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(first) = names.insert(l.name.as_str(), i) {
            errs.push(ConfigError::at(
                format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name {:?} (also listeners[{first}])",
                    l.name
                ),
            ));
        }
        let path = format!("listeners[{i}].address");
        if let Some(a) = parse_addr(&l.address, path.clone(), errs) {
            if let Some((other, _)) = bound.iter().find(|(_, b)| overlaps(&a, b)) {
                errs.push(ConfigError::at(
                    path.clone(),
                    format!("{a} overlaps {other}"),
                ));
            }
            bound.push((path, a));
        }
        let h = &l.http;
        for (field, v, min) in [
            ("max_request_header_bytes", h.max_request_header_bytes, 1024),
            ("max_header_line_bytes", h.max_header_line_bytes, 64),
            ("max_headers", h.max_headers, 1),
            ("max_uri_bytes", h.max_uri_bytes, 16),
            ("max_connections", h.max_connections, 1),
            (
                "h2.max_concurrent_streams",
                h.h2.max_concurrent_streams as usize,
                1,
            ),
            (
                "h2.max_header_list_size",
                h.h2.max_header_list_size.unwrap_or(usize::MAX),
                1024,
            ),
            (
                "h2.max_pending_reset_streams",
                h.h2.max_pending_reset_streams,
                1,
            ),
            (
                "h2.premature_reset_total_stream_count",
                usize::try_from(h.h2.premature_reset_total_stream_count).unwrap_or(usize::MAX),
                2,
            ),
        ] {
            if v < min {
                errs.push(ConfigError::at(
                    format!("listeners[{i}].http.{field}"),
                    format!("must be at least {min}"),
                ));
            }
        }
        if h.header_read_timeout.0.is_zero() {
            errs.push(ConfigError::at(
                format!("listeners[{i}].http.header_read_timeout"),
                "must be more than 0",
            ));
        }
        trust(l, &format!("listeners[{i}]"), errs, warns);
        tls(l, &format!("listeners[{i}]"), errs, warns);
        if let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) {
            acme(cfg, a, &format!("listeners[{i}].tls.acme"), errs);
        }
    }
    if let Some(a) = parse_addr(&cfg.admin.address, "admin.address".into(), errs) {
        if let Some((other, _)) = bound.iter().find(|(_, b)| overlaps(&a, b)) {
            errs.push(ConfigError::at(
                "admin.address",
                format!("{a} overlaps {other}"),
            ));
        }
    }
    if let Some(auth) = &cfg.admin.auth {
        if auth.bearer_token_env.is_none() && auth.basic_user.is_none() {
            errs.push(ConfigError::at(
                "admin.auth",
                "set bearer_token_env or basic_user + basic_password_env",
            ));
        }
        if auth.basic_user.is_some() != auth.basic_password_env.is_some() {
            errs.push(ConfigError::at(
                "admin.auth",
                "basic_user and basic_password_env go together",
            ));
        }
    }
}

/// A listener's `trusted_proxies` and `proxy_protocol` (see `client_addr`).
/// A listener's `tls`, `redirect_https` and `https_port`. The files themselves are read
/// (and refused with their path) when the config is compiled.
fn tls(
    l: &ListenerConfig,
    base: &str,
    errs: &mut Vec<ConfigError>,
    warns: &mut Vec<ConfigWarning>,
) {
    if l.https_port == Some(0) {
        errs.push(ConfigError::at(
            format!("{base}.https_port"),
            "must be 1..=65535",
        ));
    }
    if l.https_port.is_some() && !l.redirect_https {
        warns.push(ConfigError::at(
            format!("{base}.https_port"),
            "is used only with redirect_https: true",
        ));
    }
    let Some(t) = &l.tls else { return };
    let at = format!("{base}.tls");
    if l.redirect_https {
        errs.push(ConfigError::at(
            format!("{base}.redirect_https"),
            "redirects clear-text requests to https; this listener already has tls",
        ));
    }
    match (&t.cert, &t.key) {
        (Some(_), None) => errs.push(ConfigError::at(format!("{at}.key"), "cert needs its key")),
        (None, Some(_)) => errs.push(ConfigError::at(format!("{at}.cert"), "key needs its cert")),
        _ => {}
    }
    if t.cert.is_none() && t.key.is_none() && t.certificates.is_empty() && t.acme.is_none() {
        errs.push(ConfigError::at(
            at.clone(),
            "a TLS listener needs a certificate: cert and key, certificates: [ { cert, key } ], or acme",
        ));
    }
    let mut default = None;
    for (j, c) in t.certificates.iter().enumerate() {
        let cat = format!("{at}.certificates[{j}]");
        if c.default {
            match default {
                Some(first) => errs.push(ConfigError::at(
                    format!("{cat}.default"),
                    format!("only one certificate can be the default (also certificates[{first}])"),
                )),
                None => default = Some(j),
            }
        }
        for (k, n) in c.names.iter().enumerate() {
            if !dns_name_ok(n, true) {
                errs.push(ConfigError::at(
                    format!("{cat}.names[{k}]"),
                    format!("{n:?} is not a DNS name or a *.wildcard of one (a leading `*.` only)"),
                ));
            }
        }
    }
}

/// Whether `n` is a DNS name of letters, digits, `-` and `_` labels (`*.` allowed first
/// when `wildcard`).
fn dns_name_ok(n: &str, wildcard: bool) -> bool {
    let label_ok = |x: &str| {
        !x.is_empty()
            && x.len() <= 63
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let body = if wildcard {
        n.strip_prefix("*.").unwrap_or(n)
    } else {
        n
    };
    body.len() <= 253 && body.split('.').all(label_ok)
}

/// A listener's `tls.acme` (at `at`). The storage directory and `ca_file` are opened when
/// the renewal service starts.
fn acme(
    cfg: &GatewayConfig,
    a: &crate::config::model::AcmeConfig,
    at: &str,
    errs: &mut Vec<ConfigError>,
) {
    use crate::config::model::AcmeChallenge;
    match http::Uri::try_from(a.directory.as_str()) {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
        // RFC 8555 §6.1: ACME runs over HTTPS only.
        _ => errs.push(ConfigError::at(
            format!("{at}.directory"),
            format!(
                "{:?} is not an https:// URL (RFC 8555 §6.1: ACME is served over HTTPS)",
                a.directory
            ),
        )),
    }
    if let Some(e) = &a.email {
        let e = e.strip_prefix("mailto:").unwrap_or(e);
        if !e.contains('@')
            || e.starts_with('@')
            || e.ends_with('@')
            || e.contains(char::is_whitespace)
        {
            errs.push(ConfigError::at(
                format!("{at}.email"),
                format!("{e:?} is not an email address"),
            ));
        }
    }
    if a.domains.is_empty() {
        errs.push(ConfigError::at(
            format!("{at}.domains"),
            "at least one domain is needed",
        ));
    }
    let mut seen = BTreeSet::new();
    for (k, d) in a.domains.iter().enumerate() {
        let path = format!("{at}.domains[{k}]");
        if d.starts_with("*.") {
            errs.push(ConfigError::at(path, format!("{d:?}: wildcard names need the DNS-01 challenge, which gatehouse does not answer")));
        } else if !dns_name_ok(d, false) || !d.contains('.') {
            errs.push(ConfigError::at(
                path,
                format!("{d:?} is not a fully qualified DNS name"),
            ));
        } else if !seen.insert(d.to_ascii_lowercase()) {
            errs.push(ConfigError::at(path, format!("{d:?} is listed twice")));
        }
    }
    if a.storage.trim().is_empty() {
        errs.push(ConfigError::at(
            format!("{at}.storage"),
            "must name a directory",
        ));
    }
    if a.renew_before.get().is_zero() {
        errs.push(ConfigError::at(
            format!("{at}.renew_before"),
            "must be more than 0",
        ));
    }
    if a.challenge == AcmeChallenge::Http01 && cfg.listeners.iter().all(|l| l.tls.is_some()) {
        errs.push(ConfigError::at(
            format!("{at}.challenge"),
            "http-01 is answered on a clear-text listener (port 80), and this config has none: add one, or use tls-alpn-01",
        ));
    }
}

fn trust(
    l: &ListenerConfig,
    base: &str,
    errs: &mut Vec<ConfigError>,
    warns: &mut Vec<ConfigWarning>,
) {
    let mut all_parse = true;
    for (j, entry) in l.trusted_proxies.iter().enumerate() {
        if let Err(e) = TrustedProxies::parse(std::slice::from_ref(entry)) {
            errs.push(ConfigError::at(
                format!("{base}.trusted_proxies[{j}]"),
                e.to_string(),
            ));
            all_parse = false;
        }
    }
    if all_parse && TrustedProxies::parse(&l.trusted_proxies).is_ok_and(|t| t.trusts_everyone()) {
        warns.push(
            ConfigError::at(
                format!("{base}.trusted_proxies"),
                "trusts every address: any client can choose the address it is seen with",
            )
            .with_hint("list only the load balancers in front of the gateway"),
        );
    }
    if l.proxy_protocol && l.trusted_proxies.is_empty() {
        errs.push(
            ConfigError::at(
                format!("{base}.proxy_protocol"),
                "PROXY protocol headers are accepted only from trusted_proxies, and none are listed",
            )
            .with_hint("add the load balancer's address to trusted_proxies"),
        );
    }
}

/// `protocol` and `tls` of upstream `base`: `h2` is HTTP/2 over TLS (RFC 9113 §3.2) and
/// `h2c` clear text (§3.3); a client certificate needs its key; with `verify` on, an
/// endpoint given as an IP address needs `server_name` (an IP is not sent as SNI, RFC 6066
/// §3, and OpenSSL matches the name against the certificate's DNS names).
fn upstream_tls(base: &str, u: &UpstreamConfig, errs: &mut Vec<ConfigError>) {
    match (u.protocol, &u.tls) {
        (UpstreamProtocol::H2, None) => errs.push(
            ConfigError::at(
                format!("{base}.protocol"),
                "`h2` is HTTP/2 over TLS, and this upstream has no `tls` block",
            )
            .with_hint("add `tls: {}` (system roots) or use `protocol: h2c` for clear-text HTTP/2"),
        ),
        (UpstreamProtocol::H2c, Some(_)) => errs.push(
            ConfigError::at(
                format!("{base}.tls"),
                "`h2c` is clear-text HTTP/2 and cannot be combined with `tls`",
            )
            .with_hint("use `protocol: h2` for HTTP/2 over TLS"),
        ),
        _ => {}
    }
    let Some(t) = &u.tls else { return };
    let p = format!("{base}.tls");
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => errs.push(ConfigError::at(
            format!("{p}.client_key"),
            "`client_cert` needs its `client_key`",
        )),
        (None, Some(_)) => errs.push(ConfigError::at(
            format!("{p}.client_cert"),
            "`client_key` without `client_cert`",
        )),
        _ => {}
    }
    if t.server_name.as_deref().is_some_and(str::is_empty) {
        errs.push(ConfigError::at(
            format!("{p}.server_name"),
            "must not be empty",
        ));
    }
    if let (true, None, DiscoveryConfig::Static(list)) = (t.verify, &t.server_name, &u.discovery) {
        if let Some(ep) = list
            .iter()
            .find(|ep| ep.address.parse::<SocketAddr>().is_ok())
        {
            errs.push(
                ConfigError::at(
                    format!("{p}.server_name"),
                    format!(
                        "endpoint {:?} is an IP address: name the certificate's host to verify it",
                        ep.address
                    ),
                )
                .with_hint(
                    "add `server_name: api.internal` (a DNS name in the endpoint's certificate)",
                ),
            );
        }
    }
}

fn upstreams(cfg: &GatewayConfig, errs: &mut Vec<ConfigError>, warns: &mut Vec<ConfigWarning>) {
    for (name, u) in &cfg.upstreams {
        let base = format!("upstreams.{name}");
        match &u.discovery {
            DiscoveryConfig::Static(list) => {
                let path = format!("{base}.discovery.static");
                if list.is_empty() {
                    errs.push(ConfigError::at(path.clone(), "the endpoint list is empty"));
                }
                if !list.is_empty() && list.iter().all(|ep| ep.weight == 0) {
                    warns.push(
                        ConfigError::at(
                            path.clone(),
                            "every endpoint has weight 0 (drained): the upstream takes no new requests (503)",
                        )
                        .with_hint("give at least one endpoint a weight of 1 or more"),
                    );
                }
                let mut seen = HashMap::new();
                for (i, ep) in list.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if !valid_host_port(&ep.address) {
                        errs.push(
                            ConfigError::at(
                                format!("{p}.address"),
                                format!("{:?} is not a host:port address", ep.address),
                            )
                            .with_hint("write it like 127.0.0.1:3001"),
                        );
                    }
                    if let Some(first) = seen.insert(ep.address.as_str(), i) {
                        errs.push(ConfigError::at(
                            format!("{p}.address"),
                            format!("duplicate endpoint {:?} (also {path}[{first}])", ep.address),
                        ));
                    }
                }
            }
            DiscoveryConfig::Dns(d) => {
                if d.name.is_empty() {
                    errs.push(ConfigError::at(
                        format!("{base}.discovery.dns.name"),
                        "must not be empty",
                    ));
                }
                if d.port == 0 {
                    errs.push(ConfigError::at(
                        format!("{base}.discovery.dns.port"),
                        "must not be 0",
                    ));
                }
                if d.refresh.get().is_zero() {
                    errs.push(ConfigError::at(
                        format!("{base}.discovery.dns.refresh"),
                        "must be more than 0",
                    ));
                }
            }
            DiscoveryConfig::File(f) => {
                if f.path.is_empty() {
                    errs.push(ConfigError::at(
                        format!("{base}.discovery.file.path"),
                        "must not be empty",
                    ));
                }
            }
            DiscoveryConfig::Redis(r) => {
                if cfg.redis.is_none() {
                    errs.push(
                        ConfigError::at(
                            format!("{base}.discovery.redis"),
                            "redis discovery needs a top-level `redis` section",
                        )
                        .with_hint("add `redis: { url: redis://127.0.0.1:6379 }`"),
                    );
                }
                if r.service.is_empty() {
                    errs.push(ConfigError::at(
                        format!("{base}.discovery.redis.service"),
                        "must not be empty",
                    ));
                }
            }
        }
        upstream_tls(&base, u, errs);
        let t = &u.timeouts;
        for (field, d) in [("connect", t.connect), ("read", t.read), ("write", t.write)] {
            if d.get().is_zero() {
                errs.push(ConfigError::at(
                    format!("{base}.timeouts.{field}"),
                    "must be more than 0",
                ));
            }
        }
        if let Some(h) = &u.health_check {
            let p = format!("{base}.health_check");
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                errs.push(ConfigError::at(p.clone(), "thresholds must be at least 1"));
            }
            if h.interval.get().is_zero() || h.timeout.get().is_zero() {
                errs.push(ConfigError::at(
                    p.clone(),
                    "interval and timeout must be more than 0",
                ));
            }
            if !h.path.starts_with('/') {
                errs.push(ConfigError::at(format!("{p}.path"), "must start with /"));
            }
            if h.expected_status[0] > h.expected_status[1]
                || h.expected_status[0] < 100
                || h.expected_status[1] > 599
            {
                errs.push(ConfigError::at(
                    format!("{p}.expected_status"),
                    "must be [low, high] within 100..599",
                ));
            }
            if http::Method::from_bytes(h.method.as_bytes()).is_err() {
                errs.push(ConfigError::at(
                    format!("{p}.method"),
                    format!("{:?} is not an HTTP method", h.method),
                ));
            }
        }
        if let Some(o) = &u.outlier_detection {
            let p = format!("{base}.outlier_detection");
            if o.consecutive_failures == 0 {
                errs.push(ConfigError::at(
                    format!("{p}.consecutive_failures"),
                    "must be at least 1",
                ));
            }
            if o.max_ejection_percent > 100 {
                errs.push(ConfigError::at(
                    format!("{p}.max_ejection_percent"),
                    "must be within 0..100",
                ));
            }
        }
        if let Some(b) = &u.circuit_breaker {
            let p = format!("{base}.circuit_breaker");
            if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
                errs.push(ConfigError::at(
                    format!("{p}.failure_rate"),
                    "must be within (0, 1]",
                ));
            }
            if b.half_open_probes == 0 {
                errs.push(ConfigError::at(
                    format!("{p}.half_open_probes"),
                    "must be at least 1",
                ));
            }
            if b.window.get().is_zero() || b.open_for.get().is_zero() {
                errs.push(ConfigError::at(
                    p.clone(),
                    "window and open_for must be more than 0",
                ));
            }
            if b.max_open_for < b.open_for {
                errs.push(ConfigError::at(
                    format!("{p}.max_open_for"),
                    "must be at least open_for",
                ));
            }
        }
        if let Some(r) = &u.retry {
            let p = format!("{base}.retry");
            if r.attempts == 0 || r.attempts > 10 {
                errs.push(ConfigError::at(
                    format!("{p}.attempts"),
                    "must be within 1..10 (it counts the first try)",
                ));
            }
            if !(0.0..=1.0).contains(&r.budget) {
                errs.push(ConfigError::at(
                    format!("{p}.budget"),
                    "must be within [0, 1]",
                ));
            }
            for (i, on) in r.on.iter().enumerate() {
                if let RetryOn::Status(s) = on {
                    if !(100..=599).contains(s) {
                        errs.push(ConfigError::at(
                            format!("{p}.on[{i}]"),
                            format!("{s} is not an HTTP status"),
                        ));
                    }
                }
            }
            if r.backoff.max < r.backoff.base {
                errs.push(ConfigError::at(
                    format!("{p}.backoff.max"),
                    "must be at least backoff.base",
                ));
            }
        }
        if let Some(p) = &u.metrics_path {
            if !p.starts_with('/') {
                errs.push(ConfigError::at(
                    format!("{base}.metrics_path"),
                    "must start with /",
                ));
            }
        }
        if u.max_concurrent == Some(0) {
            errs.push(ConfigError::at(
                format!("{base}.max_concurrent"),
                "must be at least 1",
            ));
        }
    }
}

fn valid_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

fn routes(cfg: &GatewayConfig, errs: &mut Vec<ConfigError>, warns: &mut Vec<ConfigWarning>) {
    let mut names = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        if r.name.is_empty() {
            errs.push(ConfigError::at(format!("{base}.name"), "must not be empty"));
        }
        if let Some(first) = names.insert(r.name.as_str(), i) {
            errs.push(ConfigError::at(
                format!("{base}.name"),
                format!("duplicate route name {:?} (also routes[{first}])", r.name),
            ));
        }
        if !cfg.upstreams.contains_key(&r.upstream) {
            let defined: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
            let mut e = ConfigError::at(
                format!("{base}.upstream"),
                format!(
                    "no upstream named {:?} (defined: {})",
                    r.upstream,
                    if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    }
                ),
            );
            e.hint = did_you_mean(&r.upstream, defined.iter().copied());
            errs.push(e);
        }
        matcher(&r.matcher, &format!("{base}.match"), errs, warns);
        for (field, v) in [
            ("strip_prefix", &r.strip_prefix),
            ("add_prefix", &r.add_prefix),
            ("rewrite_path", &r.rewrite_path),
        ] {
            if let Some(v) = v {
                if !v.starts_with('/') {
                    errs.push(ConfigError::at(
                        format!("{base}.{field}"),
                        format!("{v:?} must start with /"),
                    ));
                }
            }
        }
        if let Some(b) = &r.request_buffering {
            if !(1..=65536).contains(&b.max_bytes) {
                errs.push(ConfigError::at(
                    format!("{base}.request_buffering.max_bytes"),
                    "must be 1..=65536 (pingora replays at most 64 KiB of a body)",
                ));
            }
        }
        if let Some(rw) = r.rewrite_path.as_deref().filter(|rw| rw.contains('{')) {
            let template = r
                .matcher
                .path_template
                .as_deref()
                .and_then(|t| crate::path::template::PathTemplate::parse(t).ok());
            let names: Vec<&str> = template
                .as_ref()
                .map_or(Vec::new(), |t| t.names().collect());
            if let Err(e) = crate::path::template::check_rewrite(rw, &names) {
                errs.push(ConfigError::at(
                    format!("{base}.rewrite_path"),
                    e.to_string(),
                ));
            }
        }
        if r.max_body_bytes == Some(0) {
            errs.push(ConfigError::at(
                format!("{base}.max_body_bytes"),
                "must be more than 0",
            ));
        }
    }
    shadowed(cfg, warns);
}

fn matcher(
    m: &MatchConfig,
    base: &str,
    errs: &mut Vec<ConfigError>,
    warns: &mut Vec<ConfigWarning>,
) {
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_template.is_some(),
        m.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        errs.push(ConfigError::at(
            base,
            "use only one of path, path_prefix, path_template, path_regex",
        ));
    }
    if let Some(t) = &m.path_template {
        if let Err(e) = crate::path::template::PathTemplate::parse(t) {
            errs.push(ConfigError::at(
                format!("{base}.path_template"),
                e.to_string(),
            ));
        }
    }
    for (field, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if v.as_deref().is_some_and(|v| v.contains('{')) {
            errs.push(
                ConfigError::at(
                    format!("{base}.{field}"),
                    "`{` is not allowed in a plain path",
                )
                .with_hint("for parameters use path_template: /users/{id}"),
            );
        }
    }
    for (field, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                errs.push(ConfigError::at(
                    format!("{base}.{field}"),
                    format!("{v:?} must start with /"),
                ));
            } else {
                let core = if field == "path_prefix" {
                    v.trim_end_matches('/')
                } else {
                    v.as_str()
                };
                let core = if core.is_empty() { "/" } else { core };
                if crate::path::normalize_path(core.as_bytes()).as_deref() != Ok(core) {
                    errs.push(ConfigError::at(
                        format!("{base}.{field}"),
                        format!("{v:?} is not a normalized path (no //, . or .. segments, no encoded unreserved characters)"),
                    ));
                }
            }
        }
    }
    if let Some(re) = &m.path_regex {
        // The router anchors the pattern as `^(?:re)$`; the error shows the user's own
        // pattern, so compile that first.
        let err = regex::Regex::new(re)
            .err()
            .or_else(|| regex::Regex::new(&format!("^(?:{re})$")).err());
        if let Some(e) = err {
            errs.push(ConfigError::at(
                format!("{base}.path_regex"),
                format!("invalid regex: {e}"),
            ));
        }
    }
    for (i, meth) in m.methods.iter().enumerate() {
        if http::Method::from_bytes(meth.as_bytes()).is_err()
            || meth.chars().any(|c| c.is_ascii_lowercase())
        {
            errs.push(ConfigError::at(
                format!("{base}.methods[{i}]"),
                format!("{meth:?} is not an HTTP method (use upper case, e.g. GET)"),
            ));
        }
    }
    for (i, h) in m.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty()
            || bare.contains('*')
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
        {
            errs.push(ConfigError::at(
                format!("{base}.hosts[{i}]"),
                format!("{h:?} is not a host name or *.wildcard"),
            ));
        }
    }
    for (i, h) in m.hosts.iter().enumerate() {
        if let Some((host, port)) = h.rsplit_once(':') {
            if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                warns.push(
                    ConfigError::at(
                        format!("{base}.hosts[{i}]"),
                        format!("{h:?} can never match: the port is not part of the host a request is matched on"),
                    )
                    .with_hint(format!("write {host:?}")),
                );
            }
        }
    }
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    for (i, meth) in m.methods.iter().enumerate() {
        if !STANDARD.contains(&meth.as_str()) && http::Method::from_bytes(meth.as_bytes()).is_ok() {
            let mut w = ConfigError::at(
                format!("{base}.methods[{i}]"),
                format!("{meth:?} is not a standard method (RFC 9110, PATCH): only a client that sends exactly it matches"),
            );
            w.hint = did_you_mean(meth, STANDARD.iter().copied());
            warns.push(w);
        }
    }
    for name in m.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(ConfigError::at(
                format!("{base}.headers.{name}"),
                format!("{name:?} is not a header name"),
            ));
        }
    }
}

/// Routes that can never match because one of the same priority declared earlier takes
/// every request they would: same hosts, same exact path, prefix, template shape or regex
/// pattern, same header conditions, and a superset of methods.
fn shadowed(cfg: &GatewayConfig, warns: &mut Vec<ConfigWarning>) {
    type Key = (BTreeSet<String>, String, Vec<(String, String)>);
    fn key(m: &MatchConfig) -> Option<Key> {
        let hosts = m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let path = match (&m.path, &m.path_prefix, &m.path_template, &m.path_regex) {
            (Some(p), ..) => format!("= {p}"),
            (None, Some(p), ..) => format!("^ {}", p.trim_end_matches('/')),
            // Templates of the same shape (parameter names aside) take the same paths.
            (None, None, Some(t), _) => format!(
                "{{}} {}",
                t.split('/')
                    .map(|seg| match seg.strip_prefix("{*") {
                        Some(_) => "{*}",
                        None if seg.starts_with('{') => "{}",
                        None => seg,
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            // A regex's language cannot be compared cheaply: only the same pattern.
            (None, None, None, Some(r)) => format!("~ {r}"),
            (None, None, None, None) => "^ ".to_string(),
        };
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), format!("{v:?}")))
            .collect();
        Some((hosts, path, headers))
    }
    // Only routes with the same hosts, path and header conditions can shadow each other:
    // group them once (linear), then compare methods inside each group.
    let mut groups: std::collections::HashMap<(i32, Key), Vec<usize>> =
        std::collections::HashMap::new();
    for (j, b) in cfg.routes.iter().enumerate() {
        let Some(kb) = key(&b.matcher) else { continue };
        // Only routes of the same priority compete on declared order.
        let earlier = groups.entry((b.priority, kb)).or_default();
        for &i in earlier.iter() {
            let a = &cfg.routes[i];
            let methods_cover = if a.matcher.methods.is_empty() {
                b.matcher.methods.is_empty()
            } else {
                !b.matcher.methods.is_empty()
                    && b.matcher
                        .methods
                        .iter()
                        .all(|m| a.matcher.methods.contains(m))
            };
            if methods_cover {
                warns.push(ConfigError::at(
                    format!("routes[{j}].match"),
                    format!(
                        "route {:?} can never match: route {:?} (routes[{i}]) takes every request it would",
                        b.name, a.name
                    ),
                ));
                break;
            }
        }
        earlier.push(j);
    }
}

/// The `redis:` section: exactly one topology, and redis:// URLs in it.
fn redis(r: &crate::config::model::RedisConfig, errs: &mut Vec<ConfigError>) {
    let set = [r.url.is_some(), r.cluster.is_some(), r.sentinel.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        errs.push(
            ConfigError::at(
                "redis",
                "set exactly one of `url` (standalone), `cluster` or `sentinel`",
            )
            .with_hint("e.g. `redis: { url: redis://127.0.0.1:6379 }`"),
        );
    }
    let mut check = |path: String, u: &str| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            errs.push(ConfigError::at(
                path,
                format!("{u:?} is not a redis:// URL"),
            ));
        }
    };
    if let Some(u) = &r.url {
        check("redis.url".into(), u);
    }
    if let Some(nodes) = &r.cluster {
        for (i, u) in nodes.iter().enumerate() {
            check(format!("redis.cluster[{i}]"), u);
        }
    }
    if let Some(s) = &r.sentinel {
        for (i, u) in s.nodes.iter().enumerate() {
            check(format!("redis.sentinel.nodes[{i}]"), u);
        }
    }
    if let Some(tls) = &r.tls {
        if let Err(e) = r.tls_material() {
            let (path, msg) = e.split_once(": ").unwrap_or(("redis.tls", e.as_str()));
            errs.push(ConfigError::at(path.to_string(), msg.to_string()));
        }
        if r.sentinel.is_some() {
            errs.push(ConfigError::at(
                "redis.tls",
                "is not supported with sentinel (use rediss:// URLs with the system's roots)",
            ));
        }
        let urls = r
            .url
            .iter()
            .chain(r.cluster.iter().flatten())
            .collect::<Vec<_>>();
        if tls.ca_file.is_some() || tls.client_cert.is_some() {
            if let Some(u) = urls.iter().find(|u| !u.starts_with("rediss://")) {
                errs.push(
                    ConfigError::at(
                        "redis.tls",
                        format!("needs rediss:// URLs; {u:?} is clear text"),
                    )
                    .with_hint("write the URL as rediss://host:port"),
                );
            }
        }
    }
    if r.cluster.as_ref().is_some_and(|n| n.is_empty()) {
        errs.push(ConfigError::at(
            "redis.cluster",
            "needs at least one node URL",
        ));
    }
    if let Some(s) = &r.sentinel {
        if s.nodes.is_empty() {
            errs.push(ConfigError::at(
                "redis.sentinel.nodes",
                "needs at least one sentinel URL",
            ));
        }
        if s.master.is_empty() {
            errs.push(ConfigError::at(
                "redis.sentinel.master",
                "must not be empty",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    fn errors(yaml: &str) -> Vec<String> {
        load_str(yaml, None)
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn collects_all_errors_with_paths() {
        let yaml = r#"
listeners:
  - { name: a, address: "127.0.0.1:8080" }
  - { name: a, address: "0.0.0.0:8080" }
  - { name: b, address: "nonsense" }
upstreams:
  app: { discovery: { static: [ { address: "127.0.0.1:1", weight: 0 } ] } }
  empty: { discovery: { static: [] } }
routes:
  - { name: r, match: { path_prefix: /api }, upstream: apq }
  - { name: r, match: { path: "/a/../b" }, upstream: app }
"#;
        let errs = errors(yaml);
        let expect = [
            "listeners[1].name: duplicate listener name \"a\" (also listeners[0])",
            "listeners[1].address: 0.0.0.0:8080 overlaps listeners[0].address",
            "listeners[2].address: \"nonsense\" is not an ip:port address",
            "upstreams.empty.discovery.static: the endpoint list is empty",
            "routes[0].upstream: no upstream named \"apq\" (defined: app, empty)",
            "routes[1].name: duplicate route name \"r\" (also routes[0])",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        assert!(
            errs.iter().any(
                |x| x.starts_with("routes[1].match.path: \"/a/../b\" is not a normalized path")
            ),
            "{errs:#?}"
        );
    }

    #[test]
    fn acme_settings_are_checked_where_they_are_written() {
        let yaml = r#"
listeners:
  - name: tls
    address: "127.0.0.1:8443"
    tls:
      acme:
        directory: http://ca.example/dir
        email: nobody
        domains: ["*.example.com", "localhost", "a.example.com", "A.example.com"]
        storage: " "
        renew_before: 0s
"#;
        let err = load_str(yaml, None).unwrap_err();
        let got: Vec<String> = err
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message))
            .collect();
        let at = "listeners[0].tls.acme";
        assert_eq!(
            got,
            [
                format!("7:{at}.directory: \"http://ca.example/dir\" is not an https:// URL (RFC 8555 §6.1: ACME is served over HTTPS)"),
                format!("8:{at}.email: \"nobody\" is not an email address"),
                format!("9:{at}.domains[0]: \"*.example.com\": wildcard names need the DNS-01 challenge, which gatehouse does not answer"),
                format!("9:{at}.domains[1]: \"localhost\" is not a fully qualified DNS name"),
                format!("9:{at}.domains[3]: \"A.example.com\" is listed twice"),
                format!("10:{at}.storage: must name a directory"),
                format!("11:{at}.renew_before: must be more than 0"),
                format!("6:{at}.challenge: http-01 is answered on a clear-text listener (port 80), and this config has none: add one, or use tls-alpn-01"),
            ],
        );
        let ok = yaml
            .replace("http://ca.example", "https://ca.example")
            .replace("nobody", "ops@example.com")
            .replace("\"*.example.com\", \"localhost\", ", "")
            .replace(", \"A.example.com\"", "")
            .replace("\" \"", "acme")
            .replace("0s", "30d")
            + "        challenge: tls-alpn-01\n";
        assert!(load_str(&ok, None).is_ok(), "{ok}");
    }

    #[test]
    fn a_burst_idle_timeout_longer_than_the_idle_timeout_is_refused() {
        let base = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\n";
        let errs = errors(&format!(
            "{base}runtime: {{ upstream_idle_timeout: 5s, upstream_burst_idle_timeout: 10s }}\n"
        ));
        assert_eq!(
            errs,
            ["runtime.upstream_burst_idle_timeout: must be at most upstream_idle_timeout (5s): it shortens the idle time of connections a burst opened"]
        );
        let equal = format!(
            "{base}runtime: {{ upstream_idle_timeout: 5s, upstream_burst_idle_timeout: 5s }}\n"
        );
        assert!(load_str(&equal, None).is_ok(), "{equal}");
    }

    #[test]
    fn access_log_field_lists_are_checked() {
        let base = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\n";
        let errs = errors(&format!(
            "{base}access_log: {{ format: common, fields: [status, status] }}\n"
        ));
        assert_eq!(
            errs,
            [
                "access_log.fields: a field list applies to `format: json` only",
                "access_log.fields[1]: this field is already listed",
            ]
        );
        let errs = errors(&format!("{base}access_log: {{ fields: [] }}\n"));
        assert_eq!(errs, ["access_log.fields: the field list is empty"]);
        let e = load_str(
            &format!("{base}access_log: {{ fields: [status, statsu] }}\n"),
            None,
        )
        .unwrap_err();
        assert!(
            e.0[0].message.contains("unknown variant `statsu`"),
            "{}",
            e.0[0].message
        );
        assert_eq!(e.0[0].line, Some(2));
        assert!(load_str(&format!("{base}access_log: {{ format: combined }}\n"), None).is_ok());
    }

    #[test]
    fn unknown_upstream_gets_hint_and_line() {
        let yaml = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  payment: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - name: r\n    upstream: payments\n";
        let errs = load_str(yaml, None).unwrap_err();
        let e = &errs.0[0];
        assert_eq!(e.path, "routes[0].upstream");
        assert_eq!(e.hint.as_deref(), Some("did you mean `payment`?"));
        assert_eq!((e.line, e.column), (Some(6), Some(5)));
    }

    #[test]
    fn checks_trusted_proxies_and_proxy_protocol() {
        let yaml = "listeners:\n  - { name: a, address: \"127.0.0.1:8080\", trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, nonsense] }\n  - { name: b, address: \"127.0.0.1:8081\", proxy_protocol: true }\n";
        let errs = errors(yaml);
        for e in [
            "listeners[0].trusted_proxies[1]: \"10.0.0.0/33\" is not a CIDR block (10.0.0.0/8, fd00::/8) or an IP address",
            "listeners[0].trusted_proxies[2]: \"nonsense\" is not a CIDR block (10.0.0.0/8, fd00::/8) or an IP address",
            "listeners[1].proxy_protocol: PROXY protocol headers are accepted only from trusted_proxies, and none are listed",
        ] {
            assert!(errs.iter().any(|x| x == e), "missing {e:?} in {errs:#?}");
        }
        let c = load_str(
            "listeners: [ { name: a, address: \"127.0.0.1:8080\", trusted_proxies: [\"0.0.0.0/0\"], proxy_protocol: true } ]\n",
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].path, "listeners[0].trusted_proxies");
        assert!(c.warnings[0].message.starts_with("trusts every address"));
    }

    #[test]
    fn warns_about_routes_that_can_never_match() {
        let yaml = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { name: t1, match: { path_template: \"/users/{id}\" }, upstream: app }\n  - { name: t2, match: { path_template: \"/users/{name}\" }, upstream: app }\n  - { name: r1, match: { path_regex: \"/x/[0-9]+\" }, upstream: app }\n  - { name: r2, match: { path_regex: \"/x/[0-9]+\" }, upstream: app }\n  - { name: hp, match: { hosts: [\"api.example.com:8080\"] }, upstream: app }\n  - { name: m, match: { path: /m, methods: [PSOT] }, upstream: app }\n  - { name: t3, priority: 5, match: { path_template: \"/users/{x}\" }, upstream: app }\n";
        let c = load_str(yaml, None).unwrap();
        let w: Vec<String> = c
            .warnings
            .iter()
            .map(|w| {
                format!(
                    "{}: {} {}",
                    w.path,
                    w.message,
                    w.hint.clone().unwrap_or_default()
                )
            })
            .collect();
        let expect = [
            "routes[1].match: route \"t2\" can never match: route \"t1\" (routes[0])",
            "routes[3].match: route \"r2\" can never match: route \"r1\" (routes[2])",
            "routes[4].match.hosts[0]: \"api.example.com:8080\" can never match",
            "write \"api.example.com\"",
            "routes[5].match.methods[0]: \"PSOT\" is not a standard method",
            "did you mean `POST`?",
        ];
        for e in expect {
            assert!(w.iter().any(|x| x.contains(e)), "missing {e:?} in {w:#?}");
        }
        assert_eq!(w.len(), 4, "t3 has its own priority: {w:#?}");
        let errs = errors("listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { name: a, match: { path_template: \"/u/{id\" }, upstream: app }\n  - { name: b, match: { path_template: \"/u/{id}\" }, rewrite_path: \"/v/{user}\", upstream: app }\n  - { name: c, match: { path: \"/u/{id}\" }, upstream: app }\n");
        for e in [
            "routes[0].match.path_template: segment \"{id\"",
            "routes[1].rewrite_path: {user} is not a parameter of the route's path_template",
            "routes[2].match.path: `{` is not allowed in a plain path",
        ] {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_tracing_section_needs_a_url_a_ratio_in_range_and_a_queue() {
        let base = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\n";
        let bad = format!("{base}tracing: {{ otlp_endpoint: \"127.0.0.1:4318\", sampler: {{ ratio: 1.5 }}, max_queue_size: 0 }}\n");
        let errs = errors(&bad);
        for e in [
            "tracing.otlp_endpoint: \"127.0.0.1:4318\" is not an http:// or https:// URL",
            "tracing.sampler.ratio: 1.5 is not between 0.0 and 1.0",
            "tracing.max_queue_size: must be at least 1",
        ] {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), 3, "{errs:#?}");
        let good = format!("{base}tracing: {{ otlp_endpoint: \"http://127.0.0.1:4317\", protocol: grpc, sampler: {{ ratio: 0.01 }} }}\n");
        let c = load_str(&good, None).unwrap();
        let t = c.config.tracing.unwrap();
        assert_eq!(t.protocol, crate::config::model::OtlpProtocol::Grpc);
        assert_eq!(t.service_name, "gatehouse");
        assert_eq!(t.scheduled_delay.get(), std::time::Duration::from_secs(5));
    }

    #[test]
    fn an_invalid_regex_shows_the_pattern_as_written() {
        let errs = errors("listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { name: r, match: { path_regex: \"/a(\" }, upstream: app }\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("/a("), "{}", errs[0]);
        assert!(!errs[0].contains("^(?:"), "{}", errs[0]);
    }

    #[test]
    fn warns_about_shadowed_routes() {
        let yaml = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { name: first, match: { path_prefix: /api, methods: [GET, POST] }, upstream: app }\n  - { name: second, match: { path_prefix: /api/, methods: [GET] }, upstream: app }\n  - { name: third, match: { path_prefix: /api, methods: [DELETE] }, upstream: app }\n";
        let c = load_str(yaml, None).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0]
            .message
            .contains("\"second\" can never match: route \"first\""));
    }

    #[test]
    fn redis_needs_exactly_one_topology_with_located_errors() {
        let base = "listeners: [ { name: a, address: \"127.0.0.1:8080\" } ]\nupstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: app }\n";
        let both = format!("{base}redis: {{ url: \"redis://h:1\", cluster: [\"redis://h:2\"] }}\n");
        assert!(errors(&both)
            .iter()
            .any(|e| e.starts_with("redis: set exactly one of")));
        let none = format!("{base}redis: {{ timeout: 10ms }}\n");
        assert!(errors(&none)
            .iter()
            .any(|e| e.starts_with("redis: set exactly one of")));
        let bad = format!(
            "{base}redis: {{ sentinel: {{ master: m, nodes: [\"redis://h:1\", \"http://h:2\"] }} }}\n"
        );
        assert_eq!(
            errors(&bad),
            ["redis.sentinel.nodes[1]: \"http://h:2\" is not a redis:// URL"]
        );
        let ok = format!("{base}redis: {{ cluster: [\"redis://h:1\", \"redis://h:2\"] }}\n");
        assert!(crate::config::load_str(&ok, None).is_ok());
    }
}
