//! Request and response filters that a gatehouse route lists in order in its YAML.
//!
//! The gateway builds one [`Filter`] per configured entry when it compiles a config
//! snapshot and shares it between every request on the route. Filters see pingora's
//! header types, never the proxy `Session`, so they can be unit-tested on hand-built
//! requests. Long-lived state (rate-limit counters, JWKS caches, the Redis connection)
//! lives in [`FilterRuntime`], which the gateway creates once and keeps across reloads.
//!
//! A program that embeds the gateway adds its own filter kinds through the extension
//! API of [`factory`]: a [`FilterFactory`] builds a [`Filter`] from its own serde config
//! and is registered by name in [`FilterKinds`]; the YAML then uses the kind like a
//! built-in one. See the README's "Writing a filter".
#![warn(missing_docs)]

pub mod chain;
pub mod compression;
pub mod cors;
pub mod duration;
pub mod envelope;
pub mod factory;
pub mod headers;
pub mod ip_text;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod refusal_log;
pub mod size;
pub mod state;
mod util;
pub mod wasm;

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
pub use factory::{
    CustomFilterConfig, FilterBuildContext, FilterFactory, FilterKinds, KindError, BUILT_IN_KINDS,
};
pub use metrics::FilterMetrics;
pub use rate_limit::RedisSettings;
pub use state::FilterState;

/// One entry of a route's `filters:` list: `- headers: {..}`, `- jwt: {..}`, or a custom
/// kind registered in [`FilterKinds`] (`- api_key: {..}`).
///
/// One variant per built-in kind; an exhaustive `match` in [`build`] turns each into a
/// runtime [`Filter`]. Any other key is kept as [`FilterConfig::Custom`] and built by the
/// factory registered under it when the config is compiled (an unknown kind is an error
/// then, with the known kinds listed).
#[derive(Debug, Clone, PartialEq, JsonSchema)]
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
    /// Run a proxy-wasm filter module (ABI v0.2.1).
    Wasm(Box<wasm::WasmConfig>),
    /// A kind that is not built in (its schema comes from its factory, see
    /// [`FilterKinds::schemas`]).
    #[schemars(skip)]
    Custom(CustomFilterConfig),
}

impl FilterConfig {
    /// The filter kind as written in YAML, used in logs and metric labels.
    pub fn kind(&self) -> &str {
        match self {
            FilterConfig::Jwt(_) => "jwt",
            FilterConfig::RateLimit(_) => "rate_limit",
            FilterConfig::Headers(_) => "headers",
            FilterConfig::Cors(_) => "cors",
            FilterConfig::Compression(_) => "compression",
            FilterConfig::Envelope(_) => "envelope",
            FilterConfig::Wasm(_) => "wasm",
            FilterConfig::Custom(c) => &c.kind,
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

/// Written as a single-key map, the kind as key (`{"jwt": {..}}`), custom kinds alike.
impl Serialize for FilterConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            FilterConfig::Jwt(c) => map.serialize_entry("jwt", c)?,
            FilterConfig::RateLimit(c) => map.serialize_entry("rate_limit", c)?,
            FilterConfig::Headers(c) => map.serialize_entry("headers", c)?,
            FilterConfig::Cors(c) => map.serialize_entry("cors", c)?,
            FilterConfig::Compression(c) => map.serialize_entry("compression", c)?,
            FilterConfig::Envelope(c) => map.serialize_entry("envelope", c)?,
            FilterConfig::Wasm(c) => map.serialize_entry("wasm", c)?,
            FilterConfig::Custom(c) => map.serialize_entry(&c.kind, &c.config)?,
        }
        map.end()
    }
}

/// Read from a single-key map: a built-in kind's value is deserialized into its config
/// type at once (its errors carry the field path, `routes[0].filters[1].jwt.issuer`);
/// any other kind's value is kept as JSON for its factory.
impl<'de> Deserialize<'de> for FilterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FilterConfigVisitor)
    }
}

struct FilterConfigVisitor;

impl<'de> serde::de::Visitor<'de> for FilterConfigVisitor {
    type Value = FilterConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a filter: a map with one key, the filter kind (e.g. `jwt: {...}`)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FilterConfig, A::Error> {
        use serde::de::Error;
        let Some(kind) = map.next_key::<String>()? else {
            return Err(A::Error::invalid_length(0, &self));
        };
        let cfg = match kind.as_str() {
            "jwt" => FilterConfig::Jwt(map.next_value()?),
            "rate_limit" => FilterConfig::RateLimit(map.next_value()?),
            "headers" => FilterConfig::Headers(map.next_value()?),
            "cors" => FilterConfig::Cors(map.next_value()?),
            "compression" => FilterConfig::Compression(map.next_value()?),
            "envelope" => FilterConfig::Envelope(map.next_value()?),
            "wasm" => FilterConfig::Wasm(map.next_value()?),
            _ => FilterConfig::Custom(CustomFilterConfig {
                config: map.next_value()?,
                kind,
            }),
        };
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(
                "a filter entry has one key, its kind; start another `- ` entry for the next filter",
            ));
        }
        Ok(cfg)
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
    kinds: FilterKinds,
    metrics: FilterMetrics,
    redis: Option<Arc<rate_limit::redis_store::RedisStore>>,
    local: rate_limit::local::LocalLimiters,
    jwks: jwt::jwks::JwksCaches,
    wasm: Arc<gatehouse_wasm::WasmRuntime>,
    /// `Some` when secrets named by `*_env` may be missing (checking a config without
    /// production secrets): the names of those that were.
    missing_env: Option<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// What a filter reads from `secret_env` when the variable is unset and the runtime
/// allows it (`validate --no-env`, `route-test`): long enough for every HMAC check.
const PLACEHOLDER_SECRET: &str = "gatehouse-placeholder-for-an-unset-secret";

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
            kinds: FilterKinds::new(),
            metrics,
            redis,
            local: Default::default(),
            jwks: Default::default(),
            wasm: wasm::runtime(registry)?,
            missing_env: None,
        })
    }

    /// The same runtime for checking a config without its secrets (`validate --no-env`,
    /// `route-test`): a secret environment variable that is unset builds the filter with
    /// a placeholder and is listed by [`FilterRuntime::missing_env`] instead of failing.
    /// Never for serving traffic.
    pub fn allowing_missing_env(mut self) -> Self {
        self.missing_env = Some(Default::default());
        self
    }

    /// The value of the secret environment variable `var`, for a filter's `*_env` field.
    ///
    /// # Errors
    ///
    /// The variable is unset (or not Unicode) and this runtime requires it.
    pub fn env_secret(&self, var: &str) -> Result<String, String> {
        match (std::env::var(var), &self.missing_env) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(missing)) => {
                missing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(var.to_string());
                Ok(PLACEHOLDER_SECRET.to_string())
            }
            (Err(_), None) => Err(format!("environment variable {var} is not set")),
        }
    }

    /// The secret variables that were unset while building with
    /// [`FilterRuntime::allowing_missing_env`], sorted.
    pub fn missing_env(&self) -> Vec<String> {
        self.missing_env.as_ref().map_or_else(Vec::new, |m| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect()
        })
    }

    /// The same runtime, building custom kinds with `kinds` (built-in kinds only by
    /// default).
    pub fn with_kinds(mut self, kinds: FilterKinds) -> Self {
        self.kinds = kinds;
        self
    }

    /// The filter kinds this runtime builds.
    pub fn kinds(&self) -> &FilterKinds {
        &self.kinds
    }

    /// The filters' metrics.
    pub fn metrics(&self) -> &FilterMetrics {
        &self.metrics
    }

    /// The wasm host shared by every `wasm` filter (module cache, shared data, guest
    /// metrics); the gateway sets its upstream resolver for `proxy_http_call`.
    pub fn wasm(&self) -> &Arc<gatehouse_wasm::WasmRuntime> {
        &self.wasm
    }

    /// Whether a `redis:` section was given.
    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Open Redis connections of the rate limiters: one per thread that has called
    /// Redis since the last failure (each proxy thread uses its own, made on its own
    /// runtime). 0 without Redis.
    pub fn redis_connections(&self) -> usize {
        self.redis.as_ref().map_or(0, |r| r.connections())
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
        let registry = prometheus::Registry::new();
        let metrics =
            FilterMetrics::register(&registry, false).unwrap_or_else(|_| FilterMetrics::disabled());
        Self {
            kinds: FilterKinds::new(),
            metrics,
            redis: None,
            local: Default::default(),
            jwks: Default::default(),
            wasm: wasm::runtime(&registry)
                .or_else(|_| wasm::runtime(&prometheus::Registry::new()))
                .unwrap_or_else(|e| panic!("the wasm host cannot start: {e}")),
            missing_env: None,
        }
    }
}

/// Why a filter could not be built from its config (the config was valid YAML but the
/// filter cannot run with it, e.g. an unreadable PEM file or an empty secret), or why a
/// custom kind's config does not deserialize. The gateway reports it as a config error
/// at `routes[i].filters[j].<kind>[.<path>]`, with that field's line and column.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", .path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
pub struct BuildError {
    /// The field inside the filter's config that is wrong (`keys_file`,
    /// `keys[0].secret`), when one is; `None` for the config as a whole.
    pub path: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl BuildError {
    /// A build error about the filter's config as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            path: None,
            message: message.into(),
        }
    }

    /// A build error about one field of the filter's config, by its path inside that
    /// config (`keys_file`, `keys[0].secret`).
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
            message: message.into(),
        }
    }
}

/// Builds the runtime filter for one configured entry of route `route` (no config file:
/// relative paths stay relative to the working directory).
///
/// # Errors
///
/// See [`build_with`].
pub fn build(
    cfg: &FilterConfig,
    route: &str,
    runtime: &Arc<FilterRuntime>,
) -> Result<Arc<dyn Filter>, BuildError> {
    let cx = FilterBuildContext {
        kind: cfg.kind(),
        route,
        config_dir: None,
    };
    build_with(cfg, &cx, runtime)
}

/// Builds the runtime filter for one configured entry; a custom kind through the factory
/// registered under its name in `runtime`'s [`FilterKinds`].
///
/// # Errors
///
/// A [`BuildError`] when the filter cannot run with its config, when a custom kind's
/// config does not deserialize into its factory's `Config`, or when the kind is
/// neither built in nor registered (the message lists the known kinds).
pub fn build_with(
    cfg: &FilterConfig,
    cx: &FilterBuildContext<'_>,
    runtime: &Arc<FilterRuntime>,
) -> Result<Arc<dyn Filter>, BuildError> {
    let route = cx.route;
    match cfg {
        FilterConfig::Jwt(c) => Ok(Arc::new(jwt::JwtAuth::new(c, route, runtime)?)),
        FilterConfig::RateLimit(c) => Ok(Arc::new(rate_limit::RateLimit::new(c, route, runtime)?)),
        FilterConfig::Headers(c) => Ok(Arc::new(headers::Headers::new(c)?)),
        FilterConfig::Cors(c) => Ok(Arc::new(cors::Cors::new(c)?)),
        FilterConfig::Compression(c) => Ok(Arc::new(compression::Compression::new(c)?)),
        FilterConfig::Envelope(c) => Ok(Arc::new(envelope::Envelope::new(c)?)),
        FilterConfig::Wasm(c) => Ok(Arc::new(wasm::Wasm::new(c, cx, runtime)?)),
        FilterConfig::Custom(c) => runtime.kinds.build(c, cx),
    }
}

/// A response produced by a filter instead of proxying: a rejection (401, 403, 429, 503)
/// or a successful answer made at the gateway (a CORS preflight's 204).
///
/// A rejection ([`Response::error`]) is rendered by the gateway like its own errors: the
/// status, `X-Gatehouse-Error: <code>`, and the JSON body
/// `{"error": code, "message": message, "request_id": ...}`; it counts as
/// `source="gateway"` in the request metrics.
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
    /// Stop here and send this response; the filters after this one do not run and
    /// nothing goes upstream. The response filters do not run on it either.
    Respond(Response),
}

/// What [`Filter::on_request`] returns: how the request goes on, or an infrastructure
/// failure.
pub type RequestResult = Result<FilterOutcome, FilterError>;

/// What [`Filter::on_response`] returns: the transform for this response's body, if the
/// filter rewrites it, or an infrastructure failure.
pub type ResponseResult = Result<Option<Box<dyn BodyTransform>>, FilterError>;

/// What a request filter may know besides the request header, and where it leaves what
/// the filters after it or the response should see. Lives for one call of
/// [`Filter::on_request`]; the gateway carries `claims` and `response_headers` on.
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
    /// The whole request body, when a filter of the chain buffers it
    /// ([`Filter::buffers_request_body`]) and the request has one; `None` otherwise. A filter
    /// may replace it ([`RequestBody::replace`]): the upstream then receives the new bytes,
    /// with `Content-Length` set to their length (the filters after it see the new body in
    /// `body`, the client's in `body_prefix`).
    pub body: Option<&'a mut RequestBody>,
    /// Claims of a verified JWT, set by the `jwt` filter for the filters after it.
    pub claims: Option<Arc<serde_json::Value>>,
    /// Headers to add to the response sent downstream (e.g. `RateLimit-*` on allowed
    /// requests, CORS headers on simple requests).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// What filters keep for this request until its response phase ([`ResponseCx::state`]).
    pub state: &'a FilterState,
}

/// A request context of route `r` with nothing known, for unit tests.
#[cfg(test)]
pub(crate) fn test_cx() -> RequestCx<'static> {
    RequestCx {
        route: "r",
        client_ip: None,
        request_id: "id",
        body_prefix: None,
        body: None,
        claims: None,
        response_headers: Vec::new(),
        state: Box::leak(Box::default()),
    }
}

/// A request body read whole before the request phase (up to the route's `max_body_bytes`),
/// which a filter may replace before it goes upstream.
#[derive(Debug, Default, Clone)]
pub struct RequestBody {
    bytes: Bytes,
    replaced: bool,
}

impl RequestBody {
    /// The body as the client sent it.
    pub fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            replaced: false,
        }
    }

    /// The body as it is now (the client's, or the last replacement).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Replaces the body that goes upstream.
    pub fn replace(&mut self, bytes: Bytes) {
        self.bytes = bytes;
        self.replaced = true;
    }

    /// Whether a filter replaced it.
    pub fn is_replaced(&self) -> bool {
        self.replaced
    }
}

/// What a response filter may know besides the response header. Lives for one call of
/// [`Filter::on_response`].
pub struct ResponseCx<'a> {
    /// Route name, for logs and metric labels.
    pub route: &'a str,
    /// The downstream request (after request filters ran).
    pub request: &'a RequestHeader,
    /// What filters kept from this request's request phase ([`RequestCx::state`]).
    pub state: &'a FilterState,
}

/// A per-request transformation of the response body (compression, envelope), returned
/// by [`Filter::on_response`]. It is owned by the one response and dropped with it, so it
/// may buffer; the gateway removes `Content-Length` only if the filter does so in
/// `on_response` (a transform that changes the length must remove it there).
pub trait BodyTransform: Send + Sync {
    /// Called with each body chunk; `end_of_stream` on the last call. Returns the bytes
    /// to send in place of `chunk` (possibly empty while buffering).
    fn transform(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes>;

    /// The response's trailer fields, when it has some (a chunked HTTP/1.1 body that ends with
    /// trailers), after the last [`BodyTransform::transform`] call (`end_of_stream` true); the
    /// transform may edit them. By default it leaves them as they are.
    fn trailers(&mut self, _trailers: &mut http::HeaderMap) {}
}

/// An infrastructure failure inside a filter (e.g. Redis unreachable with a
/// fail-closed policy that is not expressed as a [`Response`]). Not a rejection: in the
/// request phase the gateway answers 500 `filter_error` (the message goes to the log,
/// never to the client); in the response phase the response goes on unchanged by this
/// filter and the error is logged.
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

/// A request/response filter, built once per config snapshot (by [`build`] for the
/// built-in kinds, by a [`FilterFactory`] for a custom kind) and shared by every request
/// on its route until the next reload replaces the snapshot; a request that started
/// on the old snapshot finishes with the old filters.
///
/// Phases, in the order the gateway calls them for one request:
/// 1. [`Filter::on_request`], in the route's filter order, after routing and the edge
///    checks and before the upstream is chosen; the first filter that answers or fails
///    ends the phase.
/// 2. [`Filter::on_response`], in the same order, on the upstream's response header
///    (not on answers made by a filter or by the gateway).
///
/// Each call is timed into `gatehouse_filter_duration_seconds{filter="<kind>"}` and the
/// access log's `filter_ms`. The calls run on the proxy's threads: they must not block
/// (use async I/O with a timeout, or do blocking work when the factory builds the
/// filter), must not panic (a panic loses the client's connection), and must never log
/// secrets (tokens, keys).
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// Stable kind name, used in config, logs and metric labels. For a custom kind the
    /// gateway uses the name it was registered under instead.
    fn kind(&self) -> &'static str;

    /// How many bytes of the request body this filter needs to see in
    /// [`RequestCx::body_prefix`] (e.g. a rate-limit key from `body.email`). `None`: none.
    /// Asked once, when the route's chain is built.
    fn body_prefix_limit(&self) -> Option<usize> {
        None
    }

    /// Whether this filter needs the whole request body (up to the route's
    /// `max_body_bytes`, answered 413 beyond) in [`RequestCx::body`], where it may replace
    /// it. The gateway then reads the body before this filter's request phase. Asked once,
    /// when the route's chain is built.
    fn buffers_request_body(&self) -> bool {
        false
    }

    /// After routing, before the upstream is chosen. May edit the request header (it
    /// goes upstream as left here, before the route's path rewrite), add response
    /// headers through `cx.response_headers`, or answer the request with
    /// [`FilterOutcome::Respond`].
    ///
    /// # Errors
    ///
    /// A [`FilterError`] for an infrastructure failure: the gateway answers 500
    /// `filter_error` and logs the error.
    async fn on_request(&self, _req: &mut RequestHeader, _cx: &mut RequestCx<'_>) -> RequestResult {
        Ok(FilterOutcome::Continue)
    }

    /// On the upstream's response header before it goes downstream. May edit the header
    /// and return a body transform that the gateway then applies to every body chunk of
    /// this response. Synchronous: the response is already on its way.
    ///
    /// # Errors
    ///
    /// A [`FilterError`]: logged; the response still goes downstream, and the other
    /// filters' response phases still run.
    fn on_response(&self, _resp: &mut ResponseHeader, _cx: &ResponseCx<'_>) -> ResponseResult {
        Ok(None)
    }

    /// The request's trailer fields (an HTTP/1.1 chunked body's trailer section, an HTTP/2
    /// request's trailing HEADERS), when it has some, once its body has ended (after
    /// [`Filter::on_request`], the upstream already chosen). The filter may edit them before
    /// they go upstream; it can no longer answer the request. Synchronous. By default it
    /// leaves them as they are.
    fn on_request_trailers(
        &self,
        _req: &mut RequestHeader,
        _trailers: &mut http::HeaderMap,
        _state: &FilterState,
    ) {
    }

    /// Whether the response phase of this filter may wait (e.g. for a call to another
    /// service): the gateway then calls [`Filter::on_response_waiting`] instead of
    /// [`Filter::on_response`]. Asked once, when the route's chain is built.
    fn waits_in_response(&self) -> bool {
        false
    }

    /// The response phase of a filter whose [`Filter::waits_in_response`] is true: as
    /// [`Filter::on_response`], but it may await (the response header waits, the proxy
    /// thread serves other requests). By default it is [`Filter::on_response`].
    ///
    /// # Errors
    ///
    /// As [`Filter::on_response`].
    async fn on_response_waiting(
        &self,
        resp: &mut ResponseHeader,
        cx: &ResponseCx<'_>,
    ) -> ResponseResult {
        self.on_response(resp, cx)
    }
}
