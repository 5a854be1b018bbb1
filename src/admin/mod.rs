//! The admin listener (/metrics, /healthz, /readyz, /admin/* and the health dashboard)
//! and the probe listener (only /metrics, /healthz, /readyz).

pub mod status;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};

use crate::clock::mono_ms;
use crate::lifecycle::{NotReady, Readiness};
use crate::state::{reload, State};
use crate::telemetry::rfc3339;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Admin credentials resolved at start (from env vars named in the config).
#[derive(Default, Clone)]
pub struct AdminAuth {
    bearer: Option<String>,
    basic: Option<String>,
}

impl AdminAuth {
    /// Reads the secrets named by the config; a named but empty variable is an error.
    pub fn from_config(cfg: &crate::config::model::AdminConfig) -> Result<Self, String> {
        let Some(a) = &cfg.auth else {
            return Ok(Self::default());
        };
        let read = |var: &str| match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(format!(
                "admin.auth: environment variable {var} is unset or empty"
            )),
        };
        let bearer = a.bearer_token_env.as_deref().map(read).transpose()?;
        let basic = match (&a.basic_user, &a.basic_password_env) {
            (Some(u), Some(p)) => {
                use base64::Engine;
                Some(base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", read(p)?)))
            }
            _ => None,
        };
        Ok(Self { bearer, basic })
    }

    fn allows(&self, header: Option<&str>) -> bool {
        if self.bearer.is_none() && self.basic.is_none() {
            return true;
        }
        let Some(h) = header else { return false };
        let eq = |a: &str, b: &str| {
            a.len() == b.len()
                && a.bytes()
                    .zip(b.bytes())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0
        };
        if let (Some(t), Some(got)) = (&self.bearer, h.strip_prefix("Bearer ")) {
            if eq(t, got) {
                return true;
            }
        }
        if let (Some(b), Some(got)) = (&self.basic, h.strip_prefix("Basic ")) {
            if eq(b, got) {
                return true;
            }
        }
        false
    }
}

/// The admin HTTP app, serving either everything or only the probe endpoints.
pub struct Admin {
    state: Arc<State>,
    auth: AdminAuth,
    sampler: Arc<status::TrafficSampler>,
    readiness: Arc<Readiness>,
    probes_only: bool,
}

impl Admin {
    /// The admin API over the shared state: probes, metrics, `/admin/*`, the dashboard.
    pub fn new(
        state: Arc<State>,
        auth: AdminAuth,
        sampler: Arc<status::TrafficSampler>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            state,
            auth,
            sampler,
            readiness,
            probes_only: false,
        }
    }

    /// The probe listener's app: `/metrics`, `/healthz`, `/readyz` and nothing else, so
    /// it can bind a public address without exposing reloads or the dashboard.
    pub fn probes(
        state: Arc<State>,
        sampler: Arc<status::TrafficSampler>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            probes_only: true,
            ..Self::new(state, AdminAuth::default(), sampler, readiness)
        }
    }

    /// `/readyz`: 200 only while a config is loaded (the state exists only with one),
    /// the gateway is not draining, and every listener accepts.
    fn readyz(&self) -> Response<Vec<u8>> {
        if self.state.draining.load(Ordering::Relaxed) {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining"}),
            );
        }
        match self.readiness.check() {
            Ok(()) => json_response(
                StatusCode::OK,
                &json!({"status": "ready", "config_hash": self.state.current().loaded.hash, "pid": std::process::id()}),
            ),
            Err(NotReady::NotAccepting(names)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_accepting", "listeners": names}),
            ),
        }
    }
}

impl Admin {
    /// The GET answer of a probe endpoint (`/metrics`, `/healthz`, `/readyz`).
    fn probe(&self, path: &str, req: &pingora_http::RequestHeader) -> Response<Vec<u8>> {
        match path {
            "/metrics" => metrics_response(&self.state, req),
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            _ => self.readyz(),
        }
    }
}

/// `/metrics` in the Prometheus text format, gzip-compressed when the scraper accepts it
/// (Prometheus sends `Accept-Encoding: gzip`; the text of a large gateway is hundreds of
/// KiB).
fn metrics_response(state: &State, req: &pingora_http::RequestHeader) -> Response<Vec<u8>> {
    const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
    let text = state.telemetry.metrics.render();
    let gzip = req
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| gatehouse_filters::compression::quality(v, "gzip") > 0.0);
    let mut r = match gzip.then(|| gzip_bytes(&text)).flatten() {
        Some(zipped) => {
            let mut r = respond(StatusCode::OK, TEXT_FORMAT, zipped);
            r.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
            r
        }
        None => respond(StatusCode::OK, TEXT_FORMAT, text),
    };
    r.headers_mut().insert(
        http::header::VARY,
        http::HeaderValue::from_static("Accept-Encoding"),
    );
    r
}

/// `bytes` gzip-compressed at the fast level (`None` if the encoder fails).
fn gzip_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(bytes).ok()?;
    enc.finish().ok()
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = r.body().len().to_string().parse() {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

/// Replaces values of secret-looking keys (`secret`, `password`, `token`, but not the
/// `*_env` names of variables) with "<redacted>".
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = (k.contains("secret")
                    || k.contains("password")
                    || k.contains("token")
                    || k == "url")
                    && !k.ends_with("_env")
                    && val.is_string();
                if (k == "cluster" || k == "nodes") && val.is_array() {
                    // Redis Cluster seeds and sentinels: URLs that may carry a password.
                    if let Value::Array(a) = val {
                        for u in a.iter_mut() {
                            if let Some(s) = u.as_str() {
                                *u = Value::String(redact_url(s));
                            }
                        }
                    }
                } else if secret {
                    if k == "url" {
                        if let Some(s) = val.as_str() {
                            *val = Value::String(redact_url(s));
                        }
                    } else {
                        *val = Value::String("<redacted>".into());
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `redis://user:pass@host` -> `redis://user:<redacted>@host`.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &s[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &s[..scheme + 3], &s[at..]),
                None => s.to_string(),
            }
        }
        _ => s.to_string(),
    }
}

/// One endpoint as `/admin/upstreams` and `/admin/status` show it, at `now` (monotonic,
/// `clock::mono_ms`).
pub fn endpoint_json(e: &crate::upstream::Endpoint, now: u64) -> Value {
    json!({
        "address": e.address,
        "resolved": e.addr.to_string(),
        "weight": e.weight,
        "healthy": e.is_available(now),
        "health_check": if e.is_healthy() { "healthy" } else { "unhealthy" },
        "ejected": e.is_ejected(now),
        "ejections": e.ejections(),
        "since": rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.since_ms())),
        "inflight": e.inflight.load(Ordering::Relaxed),
        "source": e.source.as_str(),
    })
}

/// The endpoints of every upstream, as `/admin/upstreams` shows them.
pub fn upstreams_json(state: &State) -> Value {
    let snap = state.current();
    let now = mono_ms();
    let mut out = serde_json::Map::new();
    for (name, c) in &snap.upstreams {
        let eps: Vec<Value> = c
            .upstream
            .endpoints()
            .iter()
            .map(|e| endpoint_json(e, now))
            .collect();
        out.insert(
            name.clone(),
            json!({ "endpoints": eps, "breaker": c.resilience.breaker_json() }),
        );
    }
    Value::Object(out)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let open = matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz");
        if self.probes_only && !open {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "hint": "the probe listener serves /metrics, /healthz and /readyz; the admin API is on admin.address"}),
            );
        }
        if !open && !self.auth.allows(auth.as_deref()) {
            let mut r = json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"gatehouse admin\""),
            );
            return r;
        }
        // HEAD on a probe endpoint: the GET answer's status and headers (Content-Length
        // included, RFC 9110 section 9.3.2), no body.
        if method == http::Method::HEAD && open {
            let mut r = self.probe(&path, req);
            r.body_mut().clear();
            return r;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics" | "/healthz" | "/readyz") => self.probe(&path, req),
            ("GET", "/") | ("GET", "/dashboard") => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                DASHBOARD.as_bytes().to_vec(),
            ),
            ("GET", "/admin/status") => json_response(
                StatusCode::OK,
                &status::status_json(&self.state, &self.sampler),
            ),
            ("GET", "/admin/upstreams") => {
                json_response(StatusCode::OK, &upstreams_json(&self.state))
            }
            ("GET", "/admin/config") => {
                let snap = self.state.current();
                let mut cfg = serde_json::to_value(&snap.loaded.config).unwrap_or(Value::Null);
                redact(&mut cfg);
                json_response(
                    StatusCode::OK,
                    &json!({
                        "hash": snap.loaded.hash,
                        "loaded_at": rfc3339(snap.loaded_at),
                        "path": snap.loaded.file.as_ref().map(|p| p.display().to_string()),
                        "config": cfg,
                    }),
                )
            }
            ("POST", "/admin/reload") => {
                let state = self.state.clone();
                let result =
                    tokio::task::spawn_blocking(move || reload::reload(&state, "admin")).await;
                match result {
                    Ok(Ok(report)) => json_response(
                        StatusCode::OK,
                        &json!({"result": "success", "hash": report.hash, "changed": report.changed, "warnings": report.warnings, "diff": report.diff, "changes": report.diff.summary()}),
                    ),
                    Ok(Err(errs)) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"result": "failure", "errors": errs.0.iter().map(|e| json!({
                            "file": e.file.as_ref().map(|f| f.display().to_string()),
                            "line": e.line, "column": e.column, "path": e.path,
                            "message": e.message, "hint": e.hint, "text": e.to_string(),
                        })).collect::<Vec<_>>()}),
                    ),
                    Err(e) => json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"result": "failure", "errors": [e.to_string()]}),
                    ),
                }
            }
            (_, "/admin/reload") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "use POST"}),
            ),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets_but_not_env_names() {
        let mut v = json!({"jwt": {"secret": "s3cr3t", "hs256_secret_env": "VAR", "keys": [{"secret": "x"}]},
                           "redis": {"url": "redis://u:pw@h:6379"}, "name": "keep"});
        redact(&mut v);
        assert_eq!(v["jwt"]["secret"], "<redacted>");
        assert_eq!(v["jwt"]["keys"][0]["secret"], "<redacted>");
        assert_eq!(v["jwt"]["hs256_secret_env"], "VAR");
        assert_eq!(v["redis"]["url"], "redis://u:<redacted>@h:6379");
        assert_eq!(v["name"], "keep");
    }

    #[test]
    fn auth_checks_bearer() {
        let a = AdminAuth {
            bearer: Some("tok".into()),
            basic: None,
        };
        assert!(a.allows(Some("Bearer tok")));
        assert!(!a.allows(Some("Bearer tok2")));
        assert!(!a.allows(None));
        assert!(AdminAuth::default().allows(None));
    }
}
