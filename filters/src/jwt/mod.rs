//! The `jwt` filter: bearer-token authentication, claim requirements (403) and claim
//! forwarding to the upstream as headers.

pub mod cache;
pub mod claims;
pub mod jwks;
pub mod keys;
mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use keys::{JwtAlgorithm, KeySourceConfig};
pub use verify::Reason;

use crate::util::OneOrMany;
use crate::{
    BuildError, Duration, Filter, FilterError, FilterMetrics, FilterOutcome, FilterRuntime,
    RequestCx, RequestResult, Response,
};

/// Config of the `jwt` filter. Keys are a list of key sources, each bound to its
/// algorithm(s); `hs256_secret_env` is a shorthand for one HS256 secret from the
/// environment.
///
/// ```yaml
/// - jwt:
///     issuer: gatehouse                 # one or a list; the token's iss must match
///     audience: [gatehouse, api]        # one or a list; the token's aud must contain one
///     keys:
///       - secret_env: GATEHOUSE_JWT_SECRET
///         algorithms: [HS256]
///       - jwks_url: https://id.example.com/.well-known/jwks.json
///         algorithms: [RS256, ES256]
///     leeway: 30s                       # clock skew allowed on exp, nbf and iat
///     required_claims: [sub]
///     require: { role: ADMIN }          # 403 unless the claim equals (or contains) one value
///     require_scopes: [users:write]     # 403 unless every scope is in `scope`/`scp`
///     forward_claims: { sub: X-User-Id, role: X-User-Role }
///     cookie: session                   # also accept the token from this cookie
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted issuers (`iss`). When set, `iss` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<OneOrMany>,
    /// Accepted audiences (`aud`, a string or a list in the token). When set, `aud` is
    /// required and must contain one of them; when unset, `aud` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<OneOrMany>,
    /// Shorthand for `keys: [{secret_env: <VAR>, algorithms: [HS256]}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_env: Option<String>,
    /// Key sources, each with its algorithm(s). A token is verified with the keys that
    /// accept its header `alg` (and `kid`, when both name one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeySourceConfig>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (a token whose `iat` is later than
    /// now plus the leeway is refused, RFC 8725 section 3.10). Default 30s.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Require an `exp` claim. Default true.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Refuse tokens whose `nbf` is in the future. Default true.
    #[serde(default = "yes")]
    pub validate_nbf: bool,
    /// Claims that must be present (any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Authorization: claim name -> accepted value(s). The claim must equal one of
    /// them, or, if it is a list, contain one. Failing it is a 403.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, OneOrMany>,
    /// Authorization: scopes that must all be granted, looked up in `scope`
    /// (space-separated) and `scp` (list or space-separated). Failing it is a 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_scopes: Vec<String>,
    /// Claim name -> upstream request header. Client-sent copies of these headers are
    /// removed on every route of the gateway. Lists become comma-separated values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Also look for the token in this cookie (after `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Also look for the token in this request header (after `Authorization`); a
    /// `Bearer ` prefix is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Tokens longer than this are refused before parsing. Default 8192 bytes.
    #[serde(
        default = "default_max_token_bytes",
        deserialize_with = "crate::size::de"
    )]
    #[schemars(with = "crate::size::ByteSize")]
    pub max_token_bytes: usize,
    /// How many accepted tokens to remember, so a repeated token skips the signature
    /// check (its `exp`/`nbf` are still honoured on every request, and it is verified
    /// again at least once a minute). Tokens over 2 KiB are not cached, which bounds
    /// the cache at 2 MiB of token text per 1024 entries. 0 turns the cache off.
    /// Default 1024.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_token_cache_size() -> usize {
    1024
}

impl JwtConfig {
    /// A config with one HS256 secret from env var `var` and every other field at its
    /// default (handy in code and tests).
    pub fn hs256_from_env(var: impl Into<String>) -> Self {
        Self {
            issuer: None,
            audience: None,
            hs256_secret_env: Some(var.into()),
            keys: Vec::new(),
            leeway: default_leeway(),
            require_exp: true,
            validate_nbf: true,
            required_claims: Vec::new(),
            require: BTreeMap::new(),
            require_scopes: Vec::new(),
            forward_claims: BTreeMap::new(),
            cookie: None,
            header: None,
            max_token_bytes: default_max_token_bytes(),
            token_cache_size: default_token_cache_size(),
        }
    }

    /// The upstream headers this filter writes (`forward_claims` values).
    pub fn owned_request_headers(&self) -> Vec<HeaderName> {
        self.forward_claims
            .values()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    }
}

/// The runtime `jwt` filter.
pub struct JwtAuth {
    route: Arc<str>,
    verifier: verify::Verifier,
    requirements: claims::Requirements,
    forward: Vec<(String, HeaderName)>,
    cookie: Option<String>,
    header: Option<HeaderName>,
    max_token_bytes: usize,
    cache: Option<cache::TokenCache>,
    metrics: FilterMetrics,
    /// One refusal line per reason per interval (the metric counts every one).
    refusal_log: crate::refusal_log::RefusalLog,
}

impl JwtAuth {
    /// Builds the filter: loads secrets and PEM files, attaches JWKS caches.
    pub fn new(cfg: &JwtConfig, route: &str, runtime: &FilterRuntime) -> Result<Self, BuildError> {
        let mut sources = Vec::new();
        if let Some(var) = &cfg.hs256_secret_env {
            let ks = KeySourceConfig::secret_env(var.clone(), JwtAlgorithm::HS256);
            sources.push(keys::build_source(&ks, "hs256_secret_env", runtime)?);
        }
        for (i, k) in cfg.keys.iter().enumerate() {
            sources.push(keys::build_source(k, &format!("keys[{i}]"), runtime)?);
        }
        if sources.is_empty() {
            return Err(BuildError::new(
                "no keys: set hs256_secret_env or list keys (secret_env, pem_file, jwks_url)",
            ));
        }
        if cfg.max_token_bytes == 0 {
            return Err(BuildError::new("max_token_bytes must be positive"));
        }
        let mut forward = Vec::new();
        for (claim, h) in &cfg.forward_claims {
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                BuildError::new(format!("forward_claims.{claim}: invalid header name {h:?}"))
            })?;
            forward.push((claim.clone(), name));
        }
        let header = match &cfg.header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| BuildError::new(format!("header: invalid header name {h:?}")))?,
            ),
            None => None,
        };
        runtime.metrics.init_auth(route);
        Ok(Self {
            route: Arc::from(route),
            verifier: verify::Verifier::new(cfg, sources),
            requirements: claims::Requirements::new(cfg),
            forward,
            cookie: cfg.cookie.clone(),
            header,
            max_token_bytes: cfg.max_token_bytes,
            cache: (cfg.token_cache_size > 0).then(|| {
                cache::TokenCache::new(cfg.token_cache_size, cfg.leeway.get(), cfg.validate_nbf)
            }),
            metrics: runtime.metrics.clone(),
            refusal_log: Default::default(),
        })
    }

    /// Verifies a token and checks the route's requirements: the verified claims, or
    /// the reason it is refused.
    pub async fn authenticate(&self, token: &str) -> Result<serde_json::Value, Reason> {
        if token.len() > self.max_token_bytes {
            return Err(Reason::TokenTooLarge);
        }
        let claims = self.verifier.verify(token).await?;
        self.requirements.check(&claims)?;
        Ok(claims)
    }

    fn token<'r>(&self, req: &'r RequestHeader) -> Option<&'r str> {
        if let Some(t) = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
        {
            return Some(t);
        }
        if let Some(h) = &self.header {
            if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
                let v = v.trim();
                let t = bearer(v).unwrap_or(v);
                if !t.is_empty() {
                    return Some(t);
                }
            }
        }
        if let Some(name) = &self.cookie {
            for v in req.headers.get_all(http::header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name && !val.is_empty() {
                            return Some(val.trim_matches('"'));
                        }
                    }
                }
            }
        }
        None
    }

    fn refuse(&self, reason: Reason, cx: &RequestCx<'_>) -> FilterOutcome {
        let label = reason.as_str();
        self.metrics.auth_failure(cx.route, label);
        let route = Arc::clone(&self.route);
        let summary = move |suppressed: u64| {
            tracing::info!(
                route = %route,
                reason = label,
                suppressed,
                interval_s = crate::refusal_log::INTERVAL.as_secs(),
                "jwt: more requests refused (lines held back)"
            );
        };
        if let Some(suppressed) = self.refusal_log.admit(label, summary) {
            tracing::info!(
                route = %self.route,
                request_id = %cx.request_id,
                reason = label,
                detail = %reason.detail(),
                suppressed,
                "jwt: request refused"
            );
        }
        let resp = if matches!(reason, Reason::Forbidden(_)) {
            Response::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token does not grant access to this resource",
            )
            .with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            )
        } else {
            let msg = if reason == Reason::MissingToken {
                "a bearer token is required"
            } else {
                "the bearer token is invalid"
            };
            Response::error(StatusCode::UNAUTHORIZED, "unauthorized", msg).with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )
        };
        FilterOutcome::Respond(resp)
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(v: &str) -> Option<&str> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let t = rest.trim();
        (!t.is_empty()).then_some(t)
    } else {
        None
    }
}

#[async_trait]
impl Filter for JwtAuth {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    async fn on_request(&self, req: &mut RequestHeader, cx: &mut RequestCx<'_>) -> RequestResult {
        // Forwarded headers come from verified claims only, whatever happens below.
        for (_, h) in &self.forward {
            req.remove_header(h);
        }
        let Some(token) = self.token(req) else {
            return Ok(self.refuse(Reason::MissingToken, cx));
        };
        let now = cache::unix_now();
        let claims = match self.cache.as_ref().and_then(|c| c.get(token, now)) {
            Some(claims) => claims,
            None => match self.authenticate(token).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    if let Some(cache) = &self.cache {
                        cache.insert(token, Arc::clone(&c), now);
                    }
                    c
                }
                Err(reason) => return Ok(self.refuse(reason, cx)),
            },
        };
        for (claim, h) in &self.forward {
            if let Some(v) = claims.get(claim).and_then(claims::header_value) {
                req.insert_header(h.clone(), v).map_err(|e| FilterError {
                    kind: "jwt",
                    message: e.to_string(),
                })?;
            }
        }
        cx.claims = Some(claims);
        Ok(FilterOutcome::Continue)
    }
}
