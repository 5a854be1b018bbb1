//! Gateway metric definitions, registered once on one registry that `/metrics` serves.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The `route` and `upstream` label of a request that matched no route (refused before
/// routing, or no route matched). A name no route can have: route names are identifiers.
pub const UNROUTED: &str = "(none)";

/// Latency buckets in seconds: 0.5 ms .. 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the gateway itself exports (filters register theirs on the same registry).
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// `gatehouse_requests_total{route,upstream,status_class,source}`.
    pub requests: IntCounterVec,
    /// `gatehouse_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// All requests, unlabelled: the dashboard's percentiles come from here.
    pub request_duration_all: Histogram,
    /// Responses with a 5xx status, unlabelled: the dashboard's error rate.
    pub errors_all: prometheus::IntCounter,
    /// `gatehouse_upstream_requests_total{upstream,endpoint,outcome}`.
    pub upstream_requests: IntCounterVec,
    /// `gatehouse_inflight_requests`.
    pub inflight: IntGauge,
    /// `gatehouse_config_info{hash}`.
    pub config_info: IntGaugeVec,
    /// `gatehouse_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `gatehouse_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: Gauge,
    /// `gatehouse_upstream_endpoint_healthy{upstream,endpoint}`.
    pub endpoint_healthy: IntGaugeVec,
    /// `gatehouse_upstream_health_transitions_total{upstream,endpoint,to}`.
    pub health_transitions: IntCounterVec,
    /// `gatehouse_circuit_breaker_state{upstream,state}` (one-hot).
    pub breaker_state: IntGaugeVec,
    /// `gatehouse_circuit_breaker_transitions_total{upstream,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `gatehouse_circuit_breaker_rejections_total{upstream}`.
    pub breaker_rejections: IntCounterVec,
    /// `gatehouse_upstream_retries_total{upstream,reason}`.
    pub retries: IntCounterVec,
    /// `gatehouse_upstream_retry_budget_exhausted_total{upstream}`.
    pub retry_budget_exhausted: IntCounterVec,
    /// `gatehouse_bulkhead_rejections_total{upstream}`.
    pub bulkhead_rejections: IntCounterVec,
    /// `gatehouse_discovery_errors_total{upstream,source}`.
    pub discovery_errors: IntCounterVec,
    /// `gatehouse_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `gatehouse_tls_certificate_expiry_timestamp_seconds{name}`.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `gatehouse_tls_handshake_failures_total{listener,reason}`.
    pub tls_handshake_failures: IntCounterVec,
    /// `gatehouse_acme_renewals_total{name,result}`.
    pub acme_renewals: IntCounterVec,
    /// `gatehouse_acme_renewal_timestamp_seconds{name}`.
    pub acme_renewal_timestamp: IntGaugeVec,
    /// `gatehouse_http2_premature_reset_closes_total{listener}`.
    pub h2_premature_reset_closes: IntCounterVec,
}

/// A metric could not be registered (a programming error: duplicate names).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// Creates and registers every gateway metric on a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let m = Metrics {
            requests: reg!(counter(
                "gatehouse_requests_total",
                "Requests answered, by route, upstream, status class and who produced the status (gateway or upstream).",
                &["route", "upstream", "status_class", "source"]
            )?),
            request_duration: reg!(HistogramVec::new(
                HistogramOpts::new("gatehouse_request_duration_seconds", "Time from request start to the end of the response, by route.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"]
            )?),
            request_duration_all: Histogram::with_opts(
                HistogramOpts::new("gatehouse_all_request_duration_seconds", "internal").buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            errors_all: prometheus::IntCounter::new("gatehouse_all_errors_total", "internal")?,
            upstream_requests: reg!(counter(
                "gatehouse_upstream_requests_total",
                "Tries sent to upstream endpoints, by outcome (success, http_error, connect_error, tls_error, timeout, reset, protocol_error, truncated).",
                &["upstream", "endpoint", "outcome"]
            )?),
            inflight: reg!(IntGauge::new("gatehouse_inflight_requests", "Requests being processed.")?),
            config_info: reg!(gauge("gatehouse_config_info", "The running config's SHA-256 (first 16 hex digits); always 1.", &["hash"])?),
            config_reloads: reg!(counter("gatehouse_config_reloads_total", "Config reload attempts by result.", &["result"])?),
            config_last_success: reg!(Gauge::new(
                "gatehouse_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load."
            )?),
            endpoint_healthy: reg!(gauge(
                "gatehouse_upstream_endpoint_healthy",
                "1 when the endpoint takes traffic (healthy and not ejected), else 0.",
                &["upstream", "endpoint"]
            )?),
            health_transitions: reg!(counter(
                "gatehouse_upstream_health_transitions_total",
                "Endpoint health transitions.",
                &["upstream", "endpoint", "to"]
            )?),
            breaker_state: reg!(gauge(
                "gatehouse_circuit_breaker_state",
                "Circuit breaker state per upstream, one-hot over closed, open, half_open.",
                &["upstream", "state"]
            )?),
            breaker_transitions: reg!(counter(
                "gatehouse_circuit_breaker_transitions_total",
                "Circuit breaker transitions.",
                &["upstream", "to"]
            )?),
            breaker_rejections: reg!(counter(
                "gatehouse_circuit_breaker_rejections_total",
                "Requests refused because the breaker was open.",
                &["upstream"]
            )?),
            retries: reg!(counter("gatehouse_upstream_retries_total", "Retries by reason.", &["upstream", "reason"])?),
            retry_budget_exhausted: reg!(counter(
                "gatehouse_upstream_retry_budget_exhausted_total",
                "Retries not made because the retry budget was spent.",
                &["upstream"]
            )?),
            bulkhead_rejections: reg!(counter(
                "gatehouse_bulkhead_rejections_total",
                "Requests refused because the upstream's concurrency limit and queue were full.",
                &["upstream"]
            )?),
            discovery_errors: reg!(counter(
                "gatehouse_discovery_errors_total",
                "Failed discovery refreshes (the last good endpoint set is kept).",
                &["upstream", "source"]
            )?),
            build_info: reg!(gauge("gatehouse_build_info", "Build information; always 1.", &["version"])?),
            tls_certificate_expiry: reg!(gauge(
                "gatehouse_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which each served certificate expires (its notAfter), by its first SAN DNS name (else CN, else file).",
                &["name"]
            )?),
            tls_handshake_failures: reg!(counter(
                "gatehouse_tls_handshake_failures_total",
                "TLS handshakes that failed, by listener and reason (no_shared_cipher, protocol_version, unknown_ca, bad_certificate, no_certificate, not_tls, client_closed, timeout, other).",
                &["listener", "reason"]
            )?),
            acme_renewals: reg!(counter(
                "gatehouse_acme_renewals_total",
                "ACME orders (first issuance and renewals) by certificate (its first domain) and result (success, failure).",
                &["name", "result"]
            )?),
            acme_renewal_timestamp: reg!(gauge(
                "gatehouse_acme_renewal_timestamp_seconds",
                "Unix time of each ACME certificate's last successful order.",
                &["name"]
            )?),
            h2_premature_reset_closes: reg!(counter(
                "gatehouse_http2_premature_reset_closes_total",
                "HTTP/2 connections closed with GOAWAY(ENHANCE_YOUR_CALM) because the client reset too many streams early (Envoy's downstream_rq_too_many_premature_resets).",
                &["listener"]
            )?),
            registry,
        };
        // The standard process_* metrics (CPU seconds, resident memory, open fds, start time),
        // read from /proc at each scrape; Linux only, as the prometheus crate provides them.
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        Ok(m)
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding to a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        buf
    }

    /// Records the loaded config's hash, replacing the previous one.
    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.reset();
        self.config_info
            .with_label_values(&[&hash[..hash.len().min(16)]])
            .set(1);
    }
}

/// Removes every series of `vec` whose labels `doomed` selects (given a label's value by
/// name), e.g. all outcomes of an endpoint that is gone: the prometheus crate removes
/// only by the full label set, and some label values (outcomes, states) are open-ended.
pub fn remove_series<T: MetricVecBuilder>(
    vec: &MetricVec<T>,
    doomed: impl Fn(&dyn Fn(&str) -> Option<String>) -> bool,
) {
    let gone: Vec<Vec<(String, String)>> = vec
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .filter_map(|m| {
            let labels = m.get_label();
            let value = |name: &str| {
                labels
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            doomed(&value).then(|| {
                labels
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect()
            })
        })
        .collect();
    for labels in gone {
        let labels: std::collections::HashMap<&str, &str> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let _ = vec.remove(&labels);
    }
}

/// A route's request metrics, resolved once per route so that the request path does not
/// hash label strings: `requests[class][source]` and the duration histogram.
pub struct RouteMetrics {
    requests: [[prometheus::IntCounter; 2]; 5],
    duration: prometheus::Histogram,
}

/// The `status_class` label values, in [`class_index`] order.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of a status's class in [`STATUS_CLASSES`] (anything else counts as 5xx).
fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl RouteMetrics {
    /// The handles of one route (labels `route` and `upstream`).
    pub fn new(m: &Metrics, route: &str, upstream: &str) -> Self {
        let counter = |class: &str, source: &str| {
            m.requests
                .with_label_values(&[route, upstream, class, source])
        };
        Self {
            requests: STATUS_CLASSES.map(|c| [counter(c, "gateway"), counter(c, "upstream")]),
            duration: m.request_duration.with_label_values(&[route]),
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, status: u16, from_upstream: bool, seconds: f64) {
        self.requests[class_index(status)][usize::from(from_upstream)].inc();
        self.duration.observe(seconds);
    }
}

/// `2xx`-style label of a status code.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

/// Keeps `gatehouse_inflight_requests` right even when a request is dropped midway.
pub struct InflightGuard(IntGauge);

impl InflightGuard {
    /// Increments now, decrements on drop.
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
