//! Upstream resilience: the one outcome classifier, the circuit breaker, the retry policy
//! and budget, the bulkhead and passive outlier detection.
//!
//! Where each counts (DESIGN.md, "Which mechanism counts a failure"): outlier detection
//! per endpoint, the breaker per upstream, both fed by the same [`Outcome`] of each try.
//! Their long-lived state lives in [`Resilience`], one per upstream, held beside the
//! `Upstream` (the snapshot's `Cluster` pairs them); a reload that keeps an upstream's name
//! carries the breaker, the retry budget and (when its limits are unchanged) the bulkhead
//! over to the new definition ([`Resilience::inherit`]). Policies only: the per-request
//! steps and the gateway's answers live in `proxy/resilience.rs`.

pub mod breaker;
pub mod bulkhead;
pub mod outlier;
pub mod retry;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use breaker::{Breaker, BreakerState, Transition};
pub use bulkhead::Bulkhead;
pub use outlier::OutlierPolicy;
pub use retry::{RetryBudget, RetryPolicy, RetryReason};

use crate::clock::mono_ms;
use crate::config::model::UpstreamConfig;
use crate::telemetry::Telemetry;

/// What kind of end one upstream try had; the `outcome` label of
/// `gatehouse_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// A response with a status outside the failure set.
    Success,
    /// A response with a status in the failure set (default: 5xx).
    HttpError,
    /// The connection could not be made.
    ConnectError,
    /// The TCP connection was made but the TLS handshake failed (a certificate that did
    /// not verify, a refused client certificate): the request never left.
    TlsError,
    /// The connection was not made in time.
    ConnectTimeout,
    /// No answer in time after connecting.
    Timeout,
    /// The connection broke before a complete response header.
    Reset,
    /// The response header was not valid HTTP (a malformed status line, binary garbage):
    /// the upstream answered, but not in HTTP (RFC 9112 section 4).
    ProtocolError,
    /// The connection ended before the body its header announced (fewer bytes than
    /// `Content-Length`, no last chunk; RFC 9112 section 8: an incomplete message).
    Truncated,
}

impl OutcomeKind {
    /// Metric label (a connect timeout is a `timeout`).
    pub fn label(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::HttpError => "http_error",
            OutcomeKind::ConnectError => "connect_error",
            OutcomeKind::TlsError => "tls_error",
            OutcomeKind::ConnectTimeout | OutcomeKind::Timeout => "timeout",
            OutcomeKind::Reset => "reset",
            OutcomeKind::ProtocolError => "protocol_error",
            OutcomeKind::Truncated => "truncated",
        }
    }
}

/// The verdict on one upstream try, shared by the breaker, outlier detection, retries and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// The response status, when there was one.
    pub status: Option<u16>,
    /// Whether it counts as a failure (an error, a failure status, or a slow call).
    pub failure: bool,
}

impl Outcome {
    /// The outcome of a try that ended without a response (a connect error, a timeout, a
    /// reset): always a failure. Which pingora errors are which kind is decided in one
    /// place, `proxy::respond::classify`.
    pub fn of_failure(kind: OutcomeKind) -> Outcome {
        Outcome {
            kind,
            status: None,
            failure: true,
        }
    }

    /// The retry condition this outcome matches.
    pub fn retry_reason(&self) -> Option<RetryReason> {
        match self.kind {
            // A failed handshake sent nothing either: another endpoint may be set up right.
            OutcomeKind::ConnectError | OutcomeKind::TlsError | OutcomeKind::ConnectTimeout => {
                Some(RetryReason::ConnectError)
            }
            OutcomeKind::Timeout => Some(RetryReason::Timeout),
            OutcomeKind::Reset => Some(RetryReason::Reset),
            // A broken answer is not a transient transport failure, and a truncated body
            // already went (in part) to the client: neither is retried.
            OutcomeKind::ProtocolError | OutcomeKind::Truncated => None,
            OutcomeKind::Success | OutcomeKind::HttpError => self.status.map(RetryReason::Status),
        }
    }
}

/// Decides which responses are failures: statuses in `circuit_breaker.failure_statuses`
/// (default every 5xx) and, when `circuit_breaker.slow_call` is set, responses whose
/// header took longer than that.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classifier {
    failure_statuses: Option<Vec<u16>>,
    slow_call: Option<Duration>,
}

impl Classifier {
    /// The classifier of an upstream.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let b = cfg.circuit_breaker.as_ref();
        Self {
            failure_statuses: b.and_then(|b| b.failure_statuses.clone()),
            slow_call: b.and_then(|b| b.slow_call.map(|d| d.get())),
        }
    }

    /// Whether a status is a failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        match &self.failure_statuses {
            Some(list) => list.contains(&status),
            None => (500..=599).contains(&status),
        }
    }

    /// The outcome of a response header that arrived `elapsed` after the try started.
    pub fn response(&self, status: u16, elapsed: Duration) -> Outcome {
        if self.is_failure_status(status) {
            return Outcome {
                kind: OutcomeKind::HttpError,
                status: Some(status),
                failure: true,
            };
        }
        let slow = self.slow_call.is_some_and(|s| elapsed > s);
        Outcome {
            kind: OutcomeKind::Success,
            status: Some(status),
            failure: slow,
        }
    }
}

/// The long-lived resilience state of one upstream.
#[derive(Debug)]
pub struct Resilience {
    /// What counts as a failure.
    pub classifier: Classifier,
    /// The circuit breaker, when configured.
    pub breaker: Option<Arc<Breaker>>,
    /// The retry policy, when configured.
    pub retry: Option<RetryPolicy>,
    /// The retry budget (kept even without a policy, so that adding one later starts with
    /// the recent request count).
    pub budget: Arc<RetryBudget>,
    /// The concurrency limit, when configured.
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// Passive outlier detection, when configured.
    pub outlier: Option<OutlierPolicy>,
}

fn bulkhead_settings(cfg: &UpstreamConfig) -> Option<bulkhead::BulkheadSettings> {
    cfg.max_concurrent.map(|n| bulkhead::BulkheadSettings {
        max_concurrent: n.max(1),
        max_wait: cfg.max_wait.map_or(Duration::ZERO, |d| d.get()),
        max_queue: cfg.max_queue.unwrap_or(n),
    })
}

impl Resilience {
    /// Fresh state for a new upstream.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            classifier: Classifier::new(cfg),
            breaker: cfg
                .circuit_breaker
                .as_ref()
                .map(|b| Arc::new(Breaker::new(b.into()))),
            retry: cfg.retry.as_ref().map(RetryPolicy::from),
            budget: Arc::new(RetryBudget::default()),
            bulkhead: bulkhead_settings(cfg).map(|s| Arc::new(Bulkhead::new(s))),
            outlier: cfg.outlier_detection.as_ref().map(OutlierPolicy::from),
        }
    }

    /// State for a changed definition of an upstream that existed before under the same
    /// name: the breaker keeps its state (the same breaker when its settings are
    /// unchanged, else a new one that inherits state and open time), the retry budget is
    /// the same, and the bulkhead is the same when its limits are unchanged (a new limit
    /// starts a new bulkhead: requests in flight finish under the old one).
    pub fn inherit(cfg: &UpstreamConfig, prev: &Resilience) -> Self {
        let mut r = Self::new(cfg);
        if let (Some(c), Some(p)) = (&cfg.circuit_breaker, &prev.breaker) {
            let settings = breaker::BreakerSettings::from(c);
            r.breaker = Some(if *p.settings() == settings {
                p.clone()
            } else {
                Arc::new(Breaker::inherit(settings, p))
            });
        }
        r.budget = prev.budget.clone();
        if let (Some(s), Some(p)) = (bulkhead_settings(cfg), &prev.bulkhead) {
            if p.settings() == s {
                r.bulkhead = Some(p.clone());
            }
        }
        r
    }
}

impl Resilience {
    /// The breaker as `/admin/status` and `/admin/upstreams` show it.
    pub fn breaker_json(&self) -> Value {
        let Some(b) = &self.breaker else {
            return json!({"state": "CLOSED", "enabled": false, "error_rate": null});
        };
        let now = mono_ms();
        json!({
            "state": b.state().as_upper(),
            "enabled": true,
            "error_rate": b.error_rate(now),
            "calls": b.calls(now),
            "open_for_ms": b.open_for().as_millis() as u64,
            "retry_after_ms": b.retry_after(now).map(|d| d.as_millis() as u64),
        })
    }

    /// An active health check result of one of `upstream`'s endpoints, fed to its breaker.
    pub fn on_health_check(&self, tel: &Telemetry, upstream: &str, ok: bool) {
        if let Some(b) = &self.breaker {
            if let Some(mut t) = b.record_health_check(ok, mono_ms()) {
                t.reason = format!("health check: {}", t.reason);
                t.report(tel, upstream);
            }
        }
    }
}

impl Transition {
    /// Reports this breaker transition of `upstream` once: log line, event, metrics.
    pub fn report(&self, tel: &Telemetry, upstream: &str) {
        tel.breaker_changed(
            upstream,
            self.from.as_label(),
            self.to.as_label(),
            &self.reason,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_defaults_to_5xx_and_counts_slow_calls_when_asked() {
        let c = Classifier::default();
        assert_eq!(c.response(503, Duration::ZERO).kind, OutcomeKind::HttpError);
        assert!(c.response(503, Duration::ZERO).failure);
        assert!(!c.response(404, Duration::from_secs(100)).failure);
        let c = Classifier {
            failure_statuses: Some(vec![429, 503]),
            slow_call: Some(Duration::from_millis(100)),
        };
        assert!(c.response(429, Duration::ZERO).failure);
        assert!(!c.response(500, Duration::ZERO).failure);
        let slow = c.response(200, Duration::from_millis(150));
        assert_eq!((slow.kind.label(), slow.failure), ("success", true));
        assert_eq!(
            c.response(503, Duration::ZERO).retry_reason(),
            Some(RetryReason::Status(503))
        );
    }
}
