//! Prometheus metrics of the filters, registered once on the gateway's registry.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Buckets of `gatehouse_filter_duration_seconds`: 10 µs .. 1 s (filters are usually
/// microseconds; a Redis round trip or a JWKS fetch is milliseconds).
const FILTER_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

/// Every label value of `gatehouse_auth_failures_total{reason}`.
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing_token",
    "token_too_large",
    "malformed",
    "alg_none",
    "alg_not_allowed",
    "unknown_kid",
    "no_matching_key",
    "keys_unavailable",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "bad_issuer",
    "bad_audience",
    "missing_claim",
    "invalid_claim",
    "forbidden",
];

/// Every label value of `gatehouse_ratelimit_decisions_total{decision}`.
pub const RATELIMIT_DECISIONS: &[&str] = &[
    "allowed",
    "limited",
    "local_allowed",
    "local_limited",
    "fail_open",
    "fail_closed",
    "key_missing_skipped",
    "key_missing_rejected",
];

/// Every label value of `gatehouse_redis_errors_total{op}`.
pub const REDIS_OPS: &[&str] = &["connect", "ratelimit", "ping"];

struct Inner {
    auth_failures: IntCounterVec,
    ratelimit_decisions: IntCounterVec,
    redis_up: IntGauge,
    redis_errors: IntCounterVec,
    jwks_fetches: IntCounterVec,
    filter_duration: HistogramVec,
}

/// One limit's `gatehouse_ratelimit_decisions_total` series, by decision label.
pub struct RatelimitCounters {
    counters: Vec<(&'static str, prometheus::IntCounter)>,
}

impl RatelimitCounters {
    /// Counts one decision (a label of `RATELIMIT_DECISIONS`; others are ignored).
    pub fn inc(&self, decision: &str) {
        if let Some((_, c)) = self.counters.iter().find(|(d, _)| *d == decision) {
            c.inc();
        }
    }
}

/// The filters' metrics. Cheap to clone (the prometheus handles are `Arc`s inside).
#[derive(Clone)]
pub struct FilterMetrics {
    inner: Option<std::sync::Arc<Inner>>,
}

impl FilterMetrics {
    /// Creates the metrics and registers them on `registry`:
    /// `gatehouse_auth_failures_total{route,reason}`,
    /// `gatehouse_ratelimit_decisions_total{route,limit,decision}`, `gatehouse_redis_up`,
    /// `gatehouse_redis_errors_total{op}`, `gatehouse_jwks_fetches_total{result}`,
    /// `gatehouse_filter_duration_seconds{filter}`. `gatehouse_redis_up` only with
    /// `redis_configured`: without Redis the gauge is absent rather than a 0 that an
    /// "is Redis down" alert would read as an outage.
    pub fn register(
        registry: &Registry,
        redis_configured: bool,
    ) -> Result<Self, prometheus::Error> {
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "gatehouse_auth_failures_total",
                "Requests refused by the jwt filter, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "gatehouse_ratelimit_decisions_total",
                "Rate-limit decisions, by route, limit name and decision.",
            ),
            &["route", "limit", "decision"],
        )?;
        let redis_up = IntGauge::new(
            "gatehouse_redis_up",
            "1 when the last Redis call of the rate limiter succeeded, 0 otherwise.",
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "gatehouse_redis_errors_total",
                "Failed Redis calls (errors and timeouts), by operation.",
            ),
            &["op"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "gatehouse_jwks_fetches_total",
                "JWKS fetches by the jwt filter, by result (ok, error).",
            ),
            &["result"],
        )?;
        let filter_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_filter_duration_seconds",
                "Time spent in each filter's request and response phases, by filter kind.",
            )
            .buckets(FILTER_BUCKETS.to_vec()),
            &["filter"],
        )?;
        registry.register(Box::new(filter_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        if redis_configured {
            registry.register(Box::new(redis_up.clone()))?;
        }
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        for op in REDIS_OPS {
            redis_errors.with_label_values(&[op]);
        }
        for r in ["ok", "error"] {
            jwks_fetches.with_label_values(&[r]);
        }
        Ok(Self {
            inner: Some(std::sync::Arc::new(Inner {
                auth_failures,
                ratelimit_decisions,
                redis_up,
                redis_errors,
                jwks_fetches,
                filter_duration,
            })),
        })
    }

    /// Metrics that record nothing (when registration is impossible).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Creates the series of every auth failure reason of `route` (at 0).
    pub fn init_auth(&self, route: &str) {
        if let Some(m) = &self.inner {
            for reason in AUTH_FAILURE_REASONS {
                m.auth_failures.with_label_values(&[route, reason]);
            }
        }
    }

    /// Counts one refused request.
    pub fn auth_failure(&self, route: &str, reason: &str) {
        if let Some(m) = &self.inner {
            m.auth_failures.with_label_values(&[route, reason]).inc();
        }
    }

    /// The counters of every decision of limit `limit` on `route` (created at 0),
    /// resolved once so that counting a decision hashes no labels.
    pub fn ratelimit_counters(&self, route: &str, limit: &str) -> RatelimitCounters {
        let counters = match &self.inner {
            Some(m) => RATELIMIT_DECISIONS
                .iter()
                .map(|d| {
                    (
                        *d,
                        m.ratelimit_decisions.with_label_values(&[route, limit, d]),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        RatelimitCounters { counters }
    }

    /// Sets `gatehouse_redis_up`.
    pub fn redis_up(&self, up: bool) {
        if let Some(m) = &self.inner {
            m.redis_up.set(i64::from(up));
        }
    }

    /// Counts one failed Redis call.
    pub fn redis_error(&self, op: &str) {
        if let Some(m) = &self.inner {
            m.redis_errors.with_label_values(&[op]).inc();
        }
    }

    /// The `gatehouse_filter_duration_seconds` series of filter kind `kind` (`None` when
    /// the metrics are disabled).
    pub fn filter_duration(&self, kind: &str) -> Option<Histogram> {
        self.inner
            .as_ref()
            .map(|m| m.filter_duration.with_label_values(&[kind]))
    }

    /// Counts one JWKS fetch.
    pub fn jwks_fetch(&self, ok: bool) {
        if let Some(m) = &self.inner {
            m.jwks_fetches
                .with_label_values(&[if ok { "ok" } else { "error" }])
                .inc();
        }
    }
}
