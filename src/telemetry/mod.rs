//! The one sink for state changes: each change (a breaker transition, an endpoint's
//! health, a discovery refresh, a reload) is one method that writes its log line, its
//! dashboard event and its metrics together, from plain labels. A leaf: every layer may
//! call it, and it knows no upstream, breaker or snapshot type.

pub mod events;
pub mod logging;
pub mod metrics;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

pub use events::{rfc3339, Event, EventLog, ReloadRecord};
pub use metrics::{
    remove_series, status_class, InflightGuard, Metrics, MetricsError, RouteMetrics, UNROUTED,
};

/// The breaker states as metric labels, in the one-hot gauge's order.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// Metrics and the event history, shared by the whole process.
pub struct Telemetry {
    /// Every gateway metric, on the registry `/metrics` serves.
    pub metrics: Metrics,
    /// Health transitions, breaker trips, reloads: for the dashboard.
    pub events: EventLog,
    /// `metrics.endpoint_labels`: whether counters carry the endpoint's address.
    endpoint_labels: AtomicBool,
}

impl Telemetry {
    /// Registers every gateway metric on a fresh registry; an empty event history.
    pub fn new() -> Result<Self, MetricsError> {
        Ok(Self {
            metrics: Metrics::new()?,
            events: EventLog::default(),
            endpoint_labels: AtomicBool::new(true),
        })
    }

    /// Sets `metrics.endpoint_labels` (read at start: it needs a restart). Off, the
    /// endpoint counters (`gatehouse_upstream_requests_total`,
    /// `gatehouse_upstream_health_transitions_total`) carry `endpoint=""`, one series per
    /// upstream, for fleets whose discovery churns addresses.
    pub fn set_endpoint_labels(&self, on: bool) {
        self.endpoint_labels.store(on, Ordering::Relaxed);
    }

    /// The `endpoint` label value of a counter for `address` (`""` when endpoint labels
    /// are off). The `gatehouse_upstream_endpoint_healthy` gauge always names the endpoint:
    /// it has one series per live endpoint, dropped with it.
    pub fn endpoint_label<'a>(&self, address: &'a str) -> &'a str {
        if self.endpoint_labels.load(Ordering::Relaxed) {
            address
        } else {
            ""
        }
    }

    // === circuit breaker ===

    /// A breaker changed state. `from` and `to` are the metric labels (`closed`, `open`,
    /// `half_open`); logs and events show them upper-case, as the dashboard does.
    pub fn breaker_changed(&self, upstream: &str, from: &str, to: &str, reason: &str) {
        let (from_up, to_up) = (from.to_ascii_uppercase(), to.to_ascii_uppercase());
        if to == "open" {
            tracing::warn!(upstream, from = %from_up, to = %to_up, reason, "circuit breaker state change");
        } else {
            tracing::info!(upstream, from = %from_up, to = %to_up, reason, "circuit breaker state change");
        }
        self.events.push(
            "breaker",
            format!("{upstream} breaker {from_up} -> {to_up} ({reason})"),
        );
        self.metrics
            .breaker_transitions
            .with_label_values(&[upstream, to])
            .inc();
        self.breaker_state(upstream, to);
    }

    /// Sets the one-hot `gatehouse_circuit_breaker_state` of an upstream to `current`.
    pub fn breaker_state(&self, upstream: &str, current: &str) {
        for s in BREAKER_STATES {
            self.metrics
                .breaker_state
                .with_label_values(&[upstream, s])
                .set(i64::from(s == current));
        }
    }

    /// A request refused because the upstream's breaker is open.
    pub fn breaker_rejected(&self, upstream: &str) {
        self.metrics
            .breaker_rejections
            .with_label_values(&[upstream])
            .inc();
    }

    // === retries and concurrency ===

    /// A request refused because the upstream's concurrency limit and queue were full.
    pub fn bulkhead_rejected(&self, upstream: &str) {
        self.metrics
            .bulkhead_rejections
            .with_label_values(&[upstream])
            .inc();
    }

    /// A retry not made because the upstream's retry budget was spent.
    pub fn retry_budget_exhausted(&self, upstream: &str) {
        self.metrics
            .retry_budget_exhausted
            .with_label_values(&[upstream])
            .inc();
    }

    /// A retry made, by reason (`connect_error`, `timeout`, `reset`, `status`).
    pub fn retried(&self, upstream: &str, reason: &str) {
        self.metrics
            .retries
            .with_label_values(&[upstream, reason])
            .inc();
    }

    // === endpoints ===

    /// An endpoint's health changed (active checks or passive ejection): log, event,
    /// transition counter and the `gatehouse_upstream_endpoint_healthy` gauge
    /// (`available`: healthy and not ejected).
    pub fn endpoint_health(
        &self,
        upstream: &str,
        endpoint: &str,
        healthy: bool,
        available: bool,
        why: &str,
    ) {
        let to = if healthy { "healthy" } else { "unhealthy" };
        if healthy {
            tracing::info!(upstream, endpoint, reason = why, "endpoint is healthy");
        } else {
            tracing::warn!(upstream, endpoint, reason = why, "endpoint is unhealthy");
        }
        self.events
            .push("health", format!("{upstream} {endpoint} is {to}: {why}"));
        self.metrics
            .health_transitions
            .with_label_values(&[upstream, self.endpoint_label(endpoint), to])
            .inc();
        self.endpoint_available(upstream, endpoint, available);
    }

    /// Sets `gatehouse_upstream_endpoint_healthy` of one endpoint.
    pub fn endpoint_available(&self, upstream: &str, endpoint: &str, available: bool) {
        self.metrics
            .endpoint_healthy
            .with_label_values(&[upstream, endpoint])
            .set(i64::from(available));
    }

    /// Drops every series of an endpoint that no longer exists (its health gauge, its
    /// try outcomes and health transitions), so that churning discovery cannot grow the
    /// series count without bound.
    pub fn endpoint_removed(&self, upstream: &str, endpoint: &str) {
        let m = &self.metrics;
        let _ = m
            .endpoint_healthy
            .remove_label_values(&[upstream, endpoint]);
        let this = |label: &dyn Fn(&str) -> Option<String>| {
            label("upstream").as_deref() == Some(upstream)
                && label("endpoint").as_deref() == Some(endpoint)
        };
        remove_series(&m.upstream_requests, this);
        remove_series(&m.health_transitions, this);
    }

    /// Discovery replaced an upstream's endpoint set (`source`: `dns`, `file`, `redis`).
    pub fn endpoints_changed(&self, upstream: &str, source: &str, endpoints: &[String]) {
        tracing::info!(upstream, source, endpoints = ?endpoints, "endpoints changed");
        self.events.push(
            "discovery",
            format!("{upstream}: endpoints now [{}]", endpoints.join(", ")),
        );
    }

    /// A discovery refresh failed; the last good endpoint set stays.
    pub fn discovery_failed(&self, upstream: &str, source: &str, error: &dyn Display) {
        tracing::warn!(upstream, source, error = %error, "discovery refresh failed; keeping the last good endpoints");
        self.metrics
            .discovery_errors
            .with_label_values(&[upstream, source])
            .inc();
    }

    // === config ===

    /// A config loaded (at start or by a reload): its hash in `gatehouse_config_info`, the
    /// success counter and timestamp, and the reload history. `trigger`: `start`, `file`,
    /// `signal`, `admin`.
    pub fn config_loaded(&self, hash: &str, trigger: &str) {
        self.config_applied(hash, trigger, None, Vec::new());
    }

    fn config_applied(
        &self,
        hash: &str,
        trigger: &str,
        changes: Option<String>,
        pending_restart: Vec<String>,
    ) {
        let m = &self.metrics;
        m.config_reloads.with_label_values(&["success"]).inc();
        m.config_last_success.set(unix_now());
        m.set_config_hash(hash);
        self.events.push_reload(ReloadRecord {
            time: rfc3339(SystemTime::now()),
            result: "success",
            hash: Some(hash.to_string()),
            error: None,
            trigger: trigger.to_string(),
            changes,
            pending_restart,
        });
    }

    /// A reload swapped in a new config (`changed`: its text differs from the last;
    /// `changes`: the diff's one-line summary; `pending_restart`: restart-only sections
    /// that differ from what runs).
    pub fn reload_applied(
        &self,
        hash: &str,
        trigger: &str,
        changed: bool,
        warnings: &[String],
        changes: &str,
        pending_restart: &[String],
    ) {
        for w in warnings {
            tracing::warn!(warning = %w, "config warning");
        }
        tracing::info!(
            trigger,
            hash = &hash[..hash.len().min(16)],
            changed,
            changes,
            "config reloaded"
        );
        if changed {
            self.events.push(
                "reload",
                format!(
                    "config reloaded ({trigger}), hash {}: {changes}",
                    &hash[..hash.len().min(12)]
                ),
            );
        }
        self.config_applied(
            hash,
            trigger,
            Some(changes.to_string()),
            pending_restart.to_vec(),
        );
    }

    /// A reload was refused; the running config stays. `errors` one per line.
    pub fn reload_refused(&self, trigger: &str, errors: &[String]) {
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        for e in errors {
            tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
        }
        self.events.push(
            "reload",
            format!(
                "config reload refused ({trigger}): {}",
                errors.first().map(String::as_str).unwrap_or_default()
            ),
        );
        self.events.push_reload(ReloadRecord {
            time: rfc3339(SystemTime::now()),
            result: "failure",
            hash: None,
            error: Some(errors.join("\n")),
            trigger: trigger.to_string(),
            changes: None,
            pending_restart: Vec::new(),
        });
    }
}

impl Telemetry {
    // === TLS ===

    /// A listener exists: its HTTP/2 premature-reset series starts at 0.
    pub fn http_listener(&self, listener: &str) {
        self.metrics
            .h2_premature_reset_closes
            .with_label_values(&[listener]);
    }

    /// An HTTP/2 connection was closed for its client's premature stream resets (pingora
    /// logs the peer's address at WARN).
    pub fn h2_premature_reset_close(&self, listener: &str) {
        self.metrics
            .h2_premature_reset_closes
            .with_label_values(&[listener])
            .inc();
    }

    /// A TLS listener exists: its handshake-failure series start at 0 for every reason.
    pub fn tls_listener(&self, listener: &str, reasons: &[&str]) {
        for r in reasons {
            self.metrics
                .tls_handshake_failures
                .with_label_values(&[listener, r]);
        }
    }

    /// The certificates served now, by metric name, with their `notAfter` (unix
    /// seconds); names no longer served lose their series.
    pub fn tls_certificates(&self, served: &BTreeMap<String, i64>) {
        let g = &self.metrics.tls_certificate_expiry;
        remove_series(g, |label| {
            label("name").is_some_and(|n| !served.contains_key(&n))
        });
        for (name, not_after) in served {
            g.with_label_values(&[name]).set(*not_after);
        }
    }

    /// A certificate was loaded or installed (`source`: a file, `acme`, ...).
    pub fn tls_certificate_loaded(&self, listener: &str, name: &str, not_after: i64, source: &str) {
        tracing::info!(listener, name, not_after, source, "TLS certificate loaded");
    }

    /// A TLS handshake failed; `reason` is one of the listener's pre-initialized reasons.
    pub fn tls_handshake_failed(&self, listener: &str, reason: &str, error: &dyn Display) {
        tracing::debug!(listener, reason, error = %error, "TLS handshake failed");
        self.metrics
            .tls_handshake_failures
            .with_label_values(&[listener, reason])
            .inc();
    }
}

impl Telemetry {
    // === ACME ===

    /// An ACME certificate (named by its first domain) is managed: its renewal counters
    /// start at 0.
    pub fn acme_certificate(&self, name: &str) {
        for result in ["success", "failure"] {
            self.metrics
                .acme_renewals
                .with_label_values(&[name, result]);
        }
    }

    /// An ACME account was registered at `directory` (`account`: its URL) and stored.
    pub fn acme_account_registered(&self, directory: &str, account: &str) {
        tracing::info!(directory, account, "ACME account registered");
        self.events
            .push("acme", format!("ACME account registered at {directory}"));
    }

    /// An ACME order succeeded: the certificate (valid until `not_after`, unix seconds)
    /// is stored and served; the next renewal is due at `due` (unix seconds).
    pub fn acme_renewed(&self, listener: &str, name: &str, not_after: i64, due: i64) {
        tracing::info!(
            listener,
            name,
            not_after,
            renew_at = due,
            "ACME certificate issued"
        );
        self.events.push(
            "acme",
            format!(
                "{name}: ACME certificate issued, valid until {}",
                rfc3339(
                    SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(not_after.max(0) as u64)
                )
            ),
        );
        self.metrics
            .acme_renewals
            .with_label_values(&[name, "success"])
            .inc();
        self.metrics
            .acme_renewal_timestamp
            .with_label_values(&[name])
            .set(unix_now() as i64);
    }

    /// An ACME order failed; the certificate served so far (if any) stays, and the next
    /// try comes after `retry_in`.
    pub fn acme_renewal_failed(
        &self,
        listener: &str,
        name: &str,
        error: &dyn Display,
        retry_in: std::time::Duration,
    ) {
        let retry_in_s = retry_in.as_secs();
        tracing::warn!(listener, name, error = %error, retry_in_s, "ACME order failed; the current certificate keeps serving");
        self.events.push(
            "acme",
            format!("{name}: ACME order failed, retry in {retry_in_s}s: {error}"),
        );
        self.metrics
            .acme_renewals
            .with_label_values(&[name, "failure"])
            .inc();
    }
}

/// Unix time in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
