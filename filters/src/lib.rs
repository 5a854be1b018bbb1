//! Request and response filters that a gatehouse route lists in order in its YAML.
//!
//! The gateway builds one [`Filter`] per configured entry when it compiles a config
//! snapshot and shares it between every request on the route. Filters see pingora's
//! header types, never the proxy `Session`, so they can be unit-tested on hand-built
//! requests. Long-lived state (rate-limit counters, JWKS caches, the Redis connection)
//! lives in [`FilterRuntime`], which the gateway creates once and keeps across reloads.
#![warn(missing_docs)]

pub mod chain;
pub mod compression;
pub mod cors;
pub mod duration;
pub mod envelope;
pub mod headers;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod refusal_log;
pub mod size;
mod util;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use chain::{Chain, Stop};
pub use duration::Duration;
pub use metrics::FilterMetrics;
pub use rate_limit::RedisSettings;

/// The YAML schema of the built-in filters: `- headers: {..}`, `- jwt: {..}`, ...
///
/// One variant per filter kind; an exhaustive `match` in [`build`] turns each into a
/// runtime [`Filter`]. No string registry, no registration at start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    /// Verify a JWT bearer token, check claims and forward them as headers.
    Jwt(Box<jwt::JwtConfig>),
    /// Limit requests per key (client IP, header, JWT claim, JSON body field).
    RateLimit(rate_limit::RateLimitConfig),
    /// Add, set or remove request and response headers.
    Headers(headers::HeadersConfig),
    /// Answer CORS preflights at the gateway and add CORS headers to responses.
    Cors(cors::CorsConfig),
    /// Compress response bodies with gzip or brotli.
    Compression(compression::CompressionConfig),
    /// Wrap JSON response bodies as `{"timestamp", "success", "data"}`.
    Envelope(envelope::EnvelopeConfig),
}

impl FilterConfig {
    /// The filter kind as written in YAML, used in logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            FilterConfig::Jwt(_) => "jwt",
            FilterConfig::RateLimit(_) => "rate_limit",
            FilterConfig::Headers(_) => "headers",
            FilterConfig::Cors(_) => "cors",
            FilterConfig::Compression(_) => "compression",
            FilterConfig::Envelope(_) => "envelope",
        }
    }

    /// Upstream request header names this filter writes from verified data (e.g. JWT
    /// claim headers). The gateway strips client-sent copies of them on every route.
    pub fn owned_request_headers(&self) -> Vec<HeaderName> {
        match self {
            FilterConfig::Jwt(c) => c.owned_request_headers(),
            _ => Vec::new(),
        }
    }
}

/// Long-lived state shared by the filters of every config snapshot: the Redis
/// connection and its breaker, the in-process limiters keyed by (route, limit), the
/// JWKS caches keyed by URL, and the metrics. The gateway creates it once at start
/// and passes the same one to every [`build`], so that counters and caches survive
/// config reloads.
///
/// ```
/// # use gatehouse_filters::{FilterRuntime, RedisSettings};
/// let registry = prometheus::Registry::new();
/// let redis = RedisSettings::new("redis://127.0.0.1:6379");
/// let runtime = FilterRuntime::new(Some(redis), &registry).unwrap();
/// # let _ = runtime;
/// ```
pub struct FilterRuntime {
    metrics: FilterMetrics,
    redis: Option<Arc<rate_limit::redis_store::RedisStore>>,
    local: rate_limit::local::LocalLimiters,
    jwks: jwt::jwks::JwksCaches,
}

impl FilterRuntime {
    /// Creates the runtime. With `redis`, rate limits are shared through Redis (the
    /// connection is made lazily, on first use); without it they are in-process.
    /// Registers the filters' metrics on `registry` (see [`FilterMetrics::register`]).
    pub fn new(
        redis: Option<RedisSettings>,
        registry: &prometheus::Registry,
    ) -> Result<Self, BuildError> {
        let metrics = FilterMetrics::register(registry, redis.is_some())
            .map_err(|e| BuildError::new(format!("registering filter metrics: {e}")))?;
        let redis = match redis {
            Some(settings) => Some(Arc::new(rate_limit::redis_store::RedisStore::new(
                settings,
                metrics.clone(),
            )?)),
            None => None,
        };
        Ok(Self {
            metrics,
            redis,
            local: Default::default(),
            jwks: Default::default(),
        })
    }

    /// The filters' metrics.
    pub fn metrics(&self) -> &FilterMetrics {
        &self.metrics
    }

    /// Whether a `redis:` section was given.
    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Pings Redis through the rate limiter's connection (same timeout and breaker)
    /// and updates `gatehouse_redis_up`. `None` without Redis. Call it periodically
    /// (e.g. every few seconds from a background task) so that the gauge is right
    /// before the first rate-limited request and while there is no traffic.
    pub async fn check_redis(&self) -> Option<bool> {
        match &self.redis {
            Some(r) => Some(r.ping().await),
            None => None,
        }
    }
}

impl Default for FilterRuntime {
    /// No Redis; metrics on a private registry (for `validate` and tests).
    fn default() -> Self {
        let metrics = FilterMetrics::register(&prometheus::Registry::new(), false)
            .unwrap_or_else(|_| FilterMetrics::disabled());
        Self {
            metrics,
            redis: None,
            local: Default::default(),
            jwks: Default::default(),
        }
    }
}

/// Why a filter could not be built from its config (the config was valid YAML but the
/// filter cannot run with it, e.g. an unreadable PEM file or an empty secret).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// What is wrong and how to fix it.
    pub message: String,
}

impl BuildError {
    /// A build error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Builds the runtime filter for one configured entry of route `route`.
pub fn build(
    cfg: &FilterConfig,
    route: &str,
    runtime: &Arc<FilterRuntime>,
) -> Result<Arc<dyn Filter>, BuildError> {
    match cfg {
        FilterConfig::Jwt(c) => Ok(Arc::new(jwt::JwtAuth::new(c, route, runtime)?)),
        FilterConfig::RateLimit(c) => Ok(Arc::new(rate_limit::RateLimit::new(c, route, runtime)?)),
        FilterConfig::Headers(c) => Ok(Arc::new(headers::Headers::new(c)?)),
        FilterConfig::Cors(c) => Ok(Arc::new(cors::Cors::new(c)?)),
        FilterConfig::Compression(c) => Ok(Arc::new(compression::Compression::new(c)?)),
        FilterConfig::Envelope(c) => Ok(Arc::new(envelope::Envelope::new(c)?)),
    }
}

/// A response produced by a filter instead of proxying: a rejection (401, 403, 429, 503)
/// or a successful answer made at the gateway (a CORS preflight's 204).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code to send.
    pub status: StatusCode,
    /// Stable machine-readable code, sent as `X-Gatehouse-Error` and in the JSON body
    /// for errors (`unauthorized`, `forbidden`, `rate_limited`, ...). `None` for a
    /// successful answer such as a preflight.
    pub error_code: Option<&'static str>,
    /// Human-readable message for the JSON error body; never contains secrets.
    pub message: Cow<'static, str>,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, CORS headers, ...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body for successful answers; error bodies are rendered by the gateway.
    pub body: Option<Bytes>,
}

impl Response {
    /// A gateway error response; the gateway renders the JSON body from `code` and `message`.
    pub fn error(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            error_code: Some(code),
            message: message.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header to the response.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a request filter decided.
#[derive(Debug)]
pub enum FilterOutcome {
    /// Go on with the next filter, then the upstream.
    Continue,
    /// Stop here and send this response; nothing goes upstream.
    Respond(Response),
}

/// What a request filter may know besides the request header.
pub struct RequestCx<'a> {
    /// Route name, for logs and metric labels.
    pub route: &'a str,
    /// The client's address as the gateway saw it (the TCP peer).
    pub client_ip: Option<IpAddr>,
    /// The request id the gateway assigned (or kept).
    pub request_id: &'a str,
    /// The first bytes of the request body, when any filter of the chain asked for them
    /// through [`Filter::body_prefix_limit`]; `None` otherwise. The full body still goes
    /// upstream unchanged.
    pub body_prefix: Option<&'a [u8]>,
    /// Claims of a verified JWT, set by the `jwt` filter for the filters after it.
    pub claims: Option<Arc<serde_json::Value>>,
    /// Headers to add to the response sent downstream (e.g. `RateLimit-*` on allowed
    /// requests, CORS headers on simple requests).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// A request context of route `r` with nothing known, for unit tests.
#[cfg(test)]
pub(crate) fn test_cx() -> RequestCx<'static> {
    RequestCx {
        route: "r",
        client_ip: None,
        request_id: "id",
        body_prefix: None,
        claims: None,
        response_headers: Vec::new(),
    }
}

/// What a response filter may know besides the response header.
pub struct ResponseCx<'a> {
    /// Route name, for logs and metric labels.
    pub route: &'a str,
    /// The downstream request (after request filters ran).
    pub request: &'a RequestHeader,
}

/// A per-request transformation of the response body (compression, envelope).
pub trait BodyTransform: Send + Sync {
    /// Called with each body chunk; `end_of_stream` on the last call. Returns the bytes
    /// to send in place of `chunk` (possibly empty while buffering).
    fn transform(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes>;
}

/// An infrastructure failure inside a filter (e.g. Redis unreachable with a
/// fail-closed policy that is not expressed as a [`Response`]). Not a rejection.
#[derive(Debug, thiserror::Error)]
#[error("filter {kind}: {message}")]
pub struct FilterError {
    /// Filter kind.
    pub kind: &'static str,
    /// What failed.
    pub message: String,
}

impl FilterError {
    /// Maps a header-edit error of pingora to a [`FilterError`] of filter `kind`, e.g.
    /// `resp.insert_header(n, v).map_err(FilterError::header(kind))?`.
    pub fn header(kind: &'static str) -> impl Fn(pingora_error::BError) -> FilterError + Copy {
        move |e| FilterError {
            kind,
            message: e.to_string(),
        }
    }
}

/// A request/response filter, built once per config snapshot.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// Stable kind name, used in config, logs and metric labels.
    fn kind(&self) -> &'static str;

    /// How many bytes of the request body this filter needs to see in
    /// [`RequestCx::body_prefix`] (e.g. a rate-limit key from `body.email`). `None`: none.
    fn body_prefix_limit(&self) -> Option<usize> {
        None
    }

    /// After routing, before the upstream is chosen. May edit the request or answer it.
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        _cx: &mut RequestCx<'_>,
    ) -> Result<FilterOutcome, FilterError> {
        Ok(FilterOutcome::Continue)
    }

    /// On the response header before it goes downstream. May return a body transform
    /// that the gateway then applies to every body chunk of this response.
    fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        _cx: &ResponseCx<'_>,
    ) -> Result<Option<Box<dyn BodyTransform>>, FilterError> {
        Ok(None)
    }
}
