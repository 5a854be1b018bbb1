//! The `rate_limit` filter: per-key limits shared through Redis (or in-process), with
//! a failure policy per limit for when Redis is down.

pub mod key;
pub mod local;
pub mod redis_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use gatehouse_otel::opentelemetry::trace::SpanKind;
use gatehouse_otel::opentelemetry::KeyValue;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::RequestHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use key::RateLimitKey;
pub use redis_store::RedisSettings;

use crate::metrics::RatelimitCounters;
use crate::util::ceil_secs;
use crate::{
    BuildError, Duration, Filter, FilterOutcome, FilterRuntime, RequestCx, RequestResult, Response,
};

/// Largest body prefix a `body.<field>` key reads (pingora's retry buffer).
pub const MAX_BODY_PREFIX: usize = 64 * 1024;

/// The counting algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Exact sliding log: at most `limit` requests in any `window`. Memory per key is
    /// O(limit): meant for small limits such as logins.
    #[default]
    SlidingWindow,
    /// GCRA (a token bucket without a refill timer): a sustained rate of `limit` per
    /// `window` with bursts up to `burst`. O(1) per key.
    Gcra,
}

/// What to do when the request has no value for the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// Answer 400 `rate_limit_key_missing`.
    #[default]
    Reject,
    /// Let the request through without counting it.
    Skip,
}

/// What to do when Redis fails (error, timeout, or breaker open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Count in this instance's memory with the same algorithm (limits become per
    /// instance until Redis is back).
    #[default]
    Local,
    /// Let requests through uncounted.
    FailOpen,
    /// Refuse requests with 503 `rate_limiter_unavailable`.
    FailClosed,
}

/// Config of one `rate_limit` entry. Several limits on a route are several entries.
/// Without a top-level `redis:` section counters are in-process (per gateway
/// instance); with it they are shared by every instance using that Redis.
///
/// ```yaml
/// - rate_limit:
///     name: login_per_email        # the metric's `limit` label; default: the key
///     key: body.email              # client_ip | header:<name> | claim:<name> | body.<field>
///     limit: 5
///     window: 15m
///     algorithm: sliding_window    # or gcra (with burst)
///     on_missing_key: reject       # 400; or skip
///     on_redis_error: local        # or fail_open, fail_closed (503)
/// - rate_limit: { name: per_user, key: "claim:sub", limit: 100, window: 1m, algorithm: gcra, burst: 20 }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Name of the limit (metrics, logs, Redis keys). Default: the key text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What to count by.
    pub key: RateLimitKey,
    /// Requests allowed per `window`.
    pub limit: u64,
    /// The window (sliding) or the period of `limit` (gcra).
    pub window: Duration,
    /// Counting algorithm. Default `sliding_window`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// gcra only: the largest burst. Default `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// When the request has no value for the key. Default `reject` (400).
    #[serde(default)]
    pub on_missing_key: MissingKey,
    /// When Redis fails. Default `local`.
    #[serde(default)]
    pub on_redis_error: FailurePolicy,
    /// Send `RateLimit-Limit/Remaining/Reset` on allowed responses too (always on 429).
    /// Default true.
    #[serde(default = "yes")]
    pub headers: bool,
    /// `body.<field>` keys: how many body bytes to read (at most 64 KiB, the default).
    /// A field beyond them counts as missing.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::size::de_opt"
    )]
    #[schemars(with = "Option<crate::size::ByteSize>")]
    pub max_body_bytes: Option<usize>,
}

fn yes() -> bool {
    true
}

/// The algorithm and its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Requests per window.
    pub limit: u64,
    /// Window.
    pub window: StdDuration,
    /// Largest burst (gcra); equals `limit` for the sliding window.
    pub burst: u64,
}

impl Policy {
    /// gcra: the time one request "costs".
    pub fn emission_interval(&self) -> StdDuration {
        self.window / (self.limit.clamp(1, u64::from(u32::MAX)) as u32)
    }
}

/// One decision, with what the `RateLimit-*` headers announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted (and counted).
    pub allowed: bool,
    /// The announced limit.
    pub limit: u64,
    /// Requests left now.
    pub remaining: u64,
    /// When denied: how long until one more request would be admitted.
    pub retry_after: StdDuration,
    /// How long until the quota is back (sliding: until the oldest request leaves).
    pub reset: StdDuration,
}

impl Decision {
    pub(crate) fn allow_unknown(p: &Policy) -> Self {
        Self {
            allowed: true,
            limit: p.limit,
            remaining: p.limit,
            retry_after: StdDuration::ZERO,
            reset: StdDuration::ZERO,
        }
    }

    fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(ceil_secs(self.reset, 0)),
            ),
        ]
    }
}

/// The runtime `rate_limit` filter.
pub struct RateLimit {
    route: Arc<str>,
    name: Arc<str>,
    key: RateLimitKey,
    policy: Policy,
    missing: MissingKey,
    failure: FailurePolicy,
    headers: bool,
    body_limit: Option<usize>,
    local: Arc<local::LocalLimiter>,
    redis: Option<Arc<redis_store::RedisStore>>,
    decisions: RatelimitCounters,
    /// One `rate limited` line per interval (the metric counts every one).
    refusal_log: crate::refusal_log::RefusalLog,
    /// Redis keys of recent key values ([`REDIS_KEY_CACHE`] at most): a busy client's key
    /// is hashed once, not on every request (SHA-256 was a third of a Redis-counted
    /// limit's own cost per request).
    redis_keys: Mutex<HashMap<Box<str>, Arc<str>>>,
}

/// Key values whose Redis key [`RateLimit`] remembers; when full the memory is emptied
/// and refilled by the next requests (no per-entry bookkeeping on the request path).
pub const REDIS_KEY_CACHE: usize = 4096;

impl RateLimit {
    /// Builds the filter; its in-process counters come from the runtime (kept across
    /// reloads for the same route, name and policy).
    pub fn new(
        cfg: &RateLimitConfig,
        route: &str,
        runtime: &FilterRuntime,
    ) -> Result<Self, BuildError> {
        if cfg.limit == 0 || cfg.limit > u64::from(u32::MAX) {
            return Err(BuildError::new("limit must be between 1 and 4294967295"));
        }
        if cfg.window.get() < StdDuration::from_millis(1) {
            return Err(BuildError::new("window must be at least 1ms"));
        }
        let burst =
            match (cfg.algorithm, cfg.burst) {
                (Algorithm::SlidingWindow, Some(_)) => return Err(BuildError::new(
                    "burst applies to algorithm: gcra only (a sliding window's burst is its limit)",
                )),
                (Algorithm::SlidingWindow, None) => cfg.limit,
                (Algorithm::Gcra, b) => b.unwrap_or(cfg.limit),
            };
        if burst == 0 || burst > u64::from(u32::MAX) {
            return Err(BuildError::new("burst must be between 1 and 4294967295"));
        }
        let body_limit = match (&cfg.key, cfg.max_body_bytes) {
            (RateLimitKey::Body(_), Some(n)) if n == 0 || n > MAX_BODY_PREFIX => {
                return Err(BuildError::new(format!(
                    "max_body_bytes must be between 1 and {MAX_BODY_PREFIX}"
                )))
            }
            (RateLimitKey::Body(_), n) => Some(n.unwrap_or(MAX_BODY_PREFIX)),
            (_, Some(_)) => {
                return Err(BuildError::new(
                    "max_body_bytes applies to body.<field> keys only",
                ))
            }
            (_, None) => None,
        };
        let name = cfg.name.clone().unwrap_or_else(|| cfg.key.to_string());
        if name.is_empty() {
            return Err(BuildError::new("name must not be empty"));
        }
        let policy = Policy {
            algorithm: cfg.algorithm,
            limit: cfg.limit,
            window: cfg.window.get(),
            burst,
        };
        Ok(Self {
            decisions: runtime.metrics.ratelimit_counters(route, &name),
            refusal_log: Default::default(),
            route: Arc::from(route),
            local: runtime.local.get(route, &name, &policy),
            name: Arc::from(name.as_str()),
            key: cfg.key.clone(),
            policy,
            missing: cfg.on_missing_key,
            failure: cfg.on_redis_error,
            headers: cfg.headers,
            body_limit,
            redis: runtime.redis.clone(),
            redis_keys: Mutex::new(HashMap::new()),
        })
    }

    /// The limit's name (the metric's `limit` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis key of a key value: namespaced, expiring, and hashed so that emails
    /// and addresses are not stored in clear and cannot collide across routes.
    fn redis_key(&self, prefix: &str, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(value.as_bytes());
        let digest = h.finalize();
        let hex = hex::encode(&digest[..16]);
        let algo = match self.policy.algorithm {
            Algorithm::SlidingWindow => "sw",
            Algorithm::Gcra => "gcra",
        };
        // The hash tag makes the digest alone pick the Redis Cluster slot: keys spread
        // over the shards, and each script call touches one slot.
        format!("{prefix}:{}:{}:{algo}:{{{hex}}}", self.route, self.name)
    }

    /// [`Self::redis_key`] through the cache of recent key values. The cache is keyed by
    /// the value alone: `prefix` is the filter's Redis store's, the same on every call. A
    /// poisoned lock (a panic elsewhere while it was held) only costs the cache: the key is
    /// computed.
    fn cached_redis_key(&self, prefix: &str, value: &str) -> Arc<str> {
        if let Ok(keys) = self.redis_keys.lock() {
            if let Some(k) = keys.get(value) {
                return Arc::clone(k);
            }
        }
        let key: Arc<str> = Arc::from(self.redis_key(prefix, value));
        if let Ok(mut keys) = self.redis_keys.lock() {
            if keys.len() >= REDIS_KEY_CACHE {
                keys.clear();
            }
            keys.insert(value.into(), Arc::clone(&key));
        }
        key
    }

    fn count(&self, decision: &str) {
        self.decisions.inc(decision);
    }

    /// Decides for one key value: the decision (`None` = let through uncounted) and
    /// its metric label, or the 503 of `fail_closed`.
    async fn decide(&self, value: &str) -> Result<(Option<Decision>, &'static str), Response> {
        let Some(redis) = &self.redis else {
            let d = self
                .local
                .check(value, &self.policy, tokio::time::Instant::now());
            return Ok((Some(d), if d.allowed { "allowed" } else { "limited" }));
        };
        let key = self.cached_redis_key(redis.key_prefix(), value);
        // The Redis call's span (OTel database conventions), in a traced request only.
        let mut span = gatehouse_otel::child("redis rate_limit", SpanKind::Client, || {
            vec![
                KeyValue::new("db.system.name", "redis"),
                KeyValue::new("db.operation.name", "EVALSHA"),
                KeyValue::new("gatehouse.limit", self.name.to_string()),
            ]
        });
        let checked = redis.check(&key, &self.policy).await;
        if let Some(s) = span.as_mut() {
            match &checked {
                Ok(d) => s.set(KeyValue::new("gatehouse.allowed", d.allowed)),
                Err(e) => s.fail(&e.to_string()),
            }
        }
        drop(span);
        match checked {
            Ok(d) => Ok((Some(d), if d.allowed { "allowed" } else { "limited" })),
            Err(e) => {
                tracing::debug!(route = %self.route, limit = %self.name, error = %e, policy = ?self.failure, "rate limit: redis unavailable");
                match self.failure {
                    FailurePolicy::FailOpen => Ok((None, "fail_open")),
                    FailurePolicy::FailClosed => Err(Response::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate_limiter_unavailable",
                        "the rate limiter is unavailable; try again shortly",
                    )
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from(1u64))),
                    FailurePolicy::Local => {
                        let d = self
                            .local
                            .check(value, &self.policy, tokio::time::Instant::now());
                        Ok((
                            Some(d),
                            if d.allowed {
                                "local_allowed"
                            } else {
                                "local_limited"
                            },
                        ))
                    }
                }
            }
        }
    }
}

/// Puts this decision's `RateLimit-*` headers in `out` unless an earlier limit of the
/// route announced fewer remaining requests (the client sees the tightest limit).
fn merge_headers(out: &mut Vec<(HeaderName, HeaderValue)>, d: &Decision) {
    let existing = out
        .iter()
        .find(|(n, _)| n.as_str() == "ratelimit-remaining")
        .and_then(|(_, v)| v.to_str().ok()?.parse::<u64>().ok());
    if existing.is_some_and(|r| r <= d.remaining) {
        return;
    }
    out.retain(|(n, _)| !n.as_str().starts_with("ratelimit-"));
    out.extend(d.headers());
}

#[async_trait]
impl Filter for RateLimit {
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn body_prefix_limit(&self) -> Option<usize> {
        self.body_limit
    }

    async fn on_request(&self, req: &mut RequestHeader, cx: &mut RequestCx<'_>) -> RequestResult {
        let Some(value) = self.key.extract(req, cx) else {
            return Ok(match self.missing {
                MissingKey::Skip => {
                    self.count("key_missing_skipped");
                    FilterOutcome::Continue
                }
                MissingKey::Reject => {
                    self.count("key_missing_rejected");
                    FilterOutcome::Respond(Response::error(
                        StatusCode::BAD_REQUEST,
                        "rate_limit_key_missing",
                        format!("the request has no {} to apply the rate limit to", self.key),
                    ))
                }
            });
        };
        let (decision, label) = match self.decide(&value).await {
            Ok(d) => d,
            Err(resp) => {
                self.count("fail_closed");
                return Ok(FilterOutcome::Respond(resp));
            }
        };
        self.count(label);
        let Some(d) = decision else {
            return Ok(FilterOutcome::Continue);
        };
        if d.allowed {
            if self.headers {
                merge_headers(&mut cx.response_headers, &d);
            }
            return Ok(FilterOutcome::Continue);
        }
        let (route, name) = (Arc::clone(&self.route), Arc::clone(&self.name));
        let summary = move |suppressed: u64| {
            tracing::info!(
                route = %route,
                limit = %name,
                suppressed,
                interval_s = crate::refusal_log::INTERVAL.as_secs(),
                "rate limited: more requests refused (lines held back)"
            );
        };
        if let Some(suppressed) = self.refusal_log.admit("rate_limited", summary) {
            tracing::info!(route = %self.route, limit = %self.name, request_id = %cx.request_id, suppressed, "rate limited");
        }
        let mut resp = Response::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry later",
        )
        .with_header(
            http::header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(d.retry_after, 1)),
        );
        resp.headers.extend(d.headers());
        Ok(FilterOutcome::Respond(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(body: Option<&'a [u8]>) -> RequestCx<'a> {
        RequestCx {
            route: "login",
            client_ip: Some("10.0.0.1".parse().unwrap()),
            body_prefix: body,
            ..crate::test_cx()
        }
    }

    fn cfg(v: serde_json::Value) -> RateLimitConfig {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn in_process_login_limit_and_headers() {
        let rt = FilterRuntime::default();
        let f = RateLimit::new(
            &cfg(serde_json::json!({"key": "body.email", "limit": 2, "window": "15m"})),
            "login",
            &rt,
        )
        .unwrap();
        assert_eq!(f.body_prefix_limit(), Some(MAX_BODY_PREFIX));
        assert_eq!(f.name(), "body.email");
        let mut req = RequestHeader::build("POST", b"/login", None).unwrap();
        let a = br#"{"email":"a@x.io"}"#;
        for left in [1u64, 0] {
            let mut c = cx(Some(a));
            assert!(matches!(
                f.on_request(&mut req, &mut c).await.unwrap(),
                FilterOutcome::Continue
            ));
            let rem = c
                .response_headers
                .iter()
                .find(|(n, _)| n == "ratelimit-remaining")
                .unwrap();
            assert_eq!(rem.1, left.to_string().as_str());
        }
        let FilterOutcome::Respond(r) = f.on_request(&mut req, &mut cx(Some(a))).await.unwrap()
        else {
            panic!("third request should be limited");
        };
        assert_eq!(r.status, 429);
        assert_eq!(r.error_code, Some("rate_limited"));
        let retry: u64 = r
            .headers
            .iter()
            .find(|(n, _)| n == http::header::RETRY_AFTER)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((899..=900).contains(&retry), "{retry}");
        // Missing key: 400 by default.
        let FilterOutcome::Respond(r) = f.on_request(&mut req, &mut cx(Some(b"{}"))).await.unwrap()
        else {
            panic!("missing key should be rejected");
        };
        assert_eq!(r.status, 400);
        // Another email has its own budget.
        let b = br#"{"email":"b@x.io"}"#;
        assert!(matches!(
            f.on_request(&mut req, &mut cx(Some(b))).await.unwrap(),
            FilterOutcome::Continue
        ));
    }

    #[test]
    fn config_errors() {
        let rt = FilterRuntime::default();
        let bad = [
            serde_json::json!({"key": "client_ip", "limit": 0, "window": "1s"}),
            serde_json::json!({"key": "client_ip", "limit": 5, "window": "1s", "burst": 3}),
            serde_json::json!({"key": "client_ip", "limit": 5, "window": "1s", "max_body_bytes": 10}),
            serde_json::json!({"key": "body.email", "limit": 5, "window": "1s", "max_body_bytes": 1000000}),
        ];
        for b in bad {
            assert!(RateLimit::new(&cfg(b.clone()), "r", &rt).is_err(), "{b}");
        }
        assert!(serde_json::from_value::<RateLimitConfig>(
            serde_json::json!({"key": "ip", "limit": 1, "window": "1s"})
        )
        .is_err());
        assert!(serde_json::from_value::<RateLimitConfig>(
            serde_json::json!({"key": "client_ip", "limit": 1, "window": "1s", "bogus": 1})
        )
        .is_err());
    }

    #[test]
    fn tightest_limit_wins_in_headers() {
        let mut out = Vec::new();
        let d = |remaining| Decision {
            allowed: true,
            limit: 10,
            remaining,
            retry_after: StdDuration::ZERO,
            reset: StdDuration::from_secs(5),
        };
        merge_headers(&mut out, &d(7));
        merge_headers(&mut out, &d(9));
        merge_headers(&mut out, &d(3));
        assert_eq!(out.len(), 3);
        assert_eq!(
            out.iter()
                .find(|(n, _)| n == "ratelimit-remaining")
                .unwrap()
                .1,
            "3"
        );
    }

    #[test]
    fn redis_keys_are_remembered_per_value_and_the_memory_is_bounded() {
        let rt = FilterRuntime::default();
        let f = RateLimit::new(
            &cfg(serde_json::json!({"key": "client_ip", "limit": 5, "window": "1m"})),
            "api",
            &rt,
        )
        .unwrap();
        let a = f.cached_redis_key("gatehouse:rl", "10.0.0.1");
        assert_eq!(&*a, f.redis_key("gatehouse:rl", "10.0.0.1"));
        assert!(a.starts_with("gatehouse:rl:api:client_ip:sw:{"), "{a}");
        assert!(!a.contains("10.0.0.1"), "the value is hashed: {a}");
        assert!(Arc::ptr_eq(
            &a,
            &f.cached_redis_key("gatehouse:rl", "10.0.0.1")
        ));
        assert_ne!(a, f.cached_redis_key("gatehouse:rl", "10.0.0.2"));
        for i in 0..REDIS_KEY_CACHE + 10 {
            let v = format!("user-{i}");
            assert_eq!(&*f.cached_redis_key("p", &v), f.redis_key("p", &v));
        }
        let kept = f.redis_keys.lock().unwrap().len();
        assert!((1..=REDIS_KEY_CACHE).contains(&kept), "{kept} keys kept");
    }
}
