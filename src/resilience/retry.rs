//! Retry policy (which failures, which methods, how many tries, how long to back off) and
//! the retry budget that keeps retries from multiplying load during an outage.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Method};

use super::window::RollingPair;
use crate::config::model::{RetryConfig, RetryKind, RetryOn};

/// Length of the budget's window: Linkerd's and tower's default TTL.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Why a try would be retried; also the `reason` label of `gatehouse_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection could not be made (refused, unreachable, connect timeout): the
    /// request never left, so it is safe to retry whatever the method.
    ConnectError,
    /// The upstream did not answer in time: it may have acted on the request.
    Timeout,
    /// The connection broke before a response: it may have acted on the request.
    Reset,
    /// The upstream answered with a listed status.
    Status(u16),
}

impl RetryReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectError => "connect_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Reset => "reset",
            RetryReason::Status(_) => "status",
        }
    }

    /// Whether the upstream may have seen the request, so that only idempotent (or
    /// explicitly allowed) requests may be sent again.
    pub fn needs_idempotency(self) -> bool {
        !matches!(self, RetryReason::ConnectError)
    }
}

/// Exponential backoff with full jitter: retry `n` (1-based) waits a uniformly random time
/// in `[base, min(max, base * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Shortest wait.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// Upper bound of the wait before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.min(20));
        exp.min(self.max).max(self.base)
    }

    /// The wait before retry `n`, with `unit` a random number in [0, 1).
    pub fn delay_with(&self, n: u32, unit: f64) -> Duration {
        let lo = self.base.as_secs_f64();
        let hi = self.ceiling(n).as_secs_f64();
        Duration::from_secs_f64(lo + (hi - lo) * unit.clamp(0.0, 1.0))
    }

    /// The wait before retry `n`, randomly jittered.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, rand::random::<f64>())
    }
}

/// An upstream's retry policy, compiled from `retry:`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, counting the first.
    pub attempts: u32,
    on_connect_error: bool,
    on_timeout: bool,
    on_reset: bool,
    statuses: Vec<u16>,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
    /// Waits between tries.
    pub backoff: Backoff,
    /// Retries allowed as a fraction of recent requests.
    pub budget_ratio: f64,
    /// Retries per second always allowed.
    pub min_retries_per_second: u32,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        let kind = |k: RetryKind| c.on.contains(&RetryOn::Kind(k));
        Self {
            attempts: c.attempts.max(1),
            on_connect_error: kind(RetryKind::ConnectError),
            on_timeout: kind(RetryKind::Timeout),
            on_reset: kind(RetryKind::Reset),
            statuses: c
                .on
                .iter()
                .filter_map(|o| {
                    if let RetryOn::Status(s) = o {
                        Some(*s)
                    } else {
                        None
                    }
                })
                .collect(),
            non_idempotent: c.non_idempotent,
            backoff: Backoff {
                base: c.backoff.base.get(),
                max: c.backoff.max.get(),
            },
            budget_ratio: c.budget,
            min_retries_per_second: c.min_retries_per_second,
        }
    }
}

impl RetryPolicy {
    /// Whether the policy lists this reason.
    pub fn covers(&self, reason: RetryReason) -> bool {
        match reason {
            RetryReason::ConnectError => self.on_connect_error,
            RetryReason::Timeout => self.on_timeout,
            RetryReason::Reset => self.on_reset,
            RetryReason::Status(s) => self.statuses.contains(&s),
        }
    }

    /// Whether any status is listed (status retries need the response path).
    pub fn has_statuses(&self) -> bool {
        !self.statuses.is_empty()
    }

    /// Whether a request may be sent again after the upstream may have seen it:
    /// idempotent methods (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), any method
    /// with `non_idempotent: true`, or a request carrying an `Idempotency-Key`.
    pub fn method_allowed(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.non_idempotent || method.is_idempotent() || headers.contains_key("idempotency-key")
    }
}

/// Retry budget in the manner of tower's and Linkerd's: over the last [`BUDGET_WINDOW`],
/// `retries <= ratio * requests + min_per_second * window_seconds`. Each request deposits;
/// each retry withdraws. Deposits are one CAS; withdrawals are serialized by a mutex (they
/// only happen on failures) so that concurrent retries cannot overdraw it together.
#[derive(Debug)]
pub struct RetryBudget {
    /// (requests, retries)
    window: RollingPair,
    withdraw: Mutex<()>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window: RollingPair::new(BUDGET_WINDOW, 10),
            withdraw: Mutex::new(()),
        }
    }
}

impl RetryBudget {
    /// Counts one request (its first try).
    pub fn deposit(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_withdraw(&self, ratio: f64, min_per_second: u32, now_ms: u64) -> bool {
        let _serial = self.withdraw.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = self.window.sums(now_ms);
        let reserve = f64::from(min_per_second) * self.window.window_ms() as f64 / 1000.0;
        if retries as f64 + 1.0 <= ratio * requests as f64 + reserve {
            self.window.add(now_ms, 0, 1);
            true
        } else {
            false
        }
    }

    /// Requests and retries in the current window.
    pub fn counts(&self, now_ms: u64) -> (u64, u64) {
        self.window.sums(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_filters::Duration as D;

    fn cfg(on: Vec<RetryOn>) -> RetryConfig {
        RetryConfig {
            attempts: 3,
            on,
            non_idempotent: false,
            backoff: crate::config::model::BackoffConfig {
                base: D::from_millis(25),
                max: D::from_millis(250),
            },
            budget: 0.2,
            min_retries_per_second: 1,
        }
    }

    #[test]
    fn budget_allows_ratio_of_requests_plus_the_reserve() {
        let b = RetryBudget::default();
        // No requests: only the reserve, 1/s over 10 s = 10 retries.
        let allowed = (0..100).filter(|_| b.try_withdraw(0.2, 1, 0)).count();
        assert_eq!(allowed, 10);
        // 100 requests add 20 more.
        (0..100).for_each(|_| b.deposit(1));
        let allowed = (0..100).filter(|_| b.try_withdraw(0.2, 1, 2)).count();
        assert_eq!(allowed, 20);
        assert_eq!(b.counts(2), (100, 30));
        // Once the window has passed, it is all available again.
        let allowed = (0..100).filter(|_| b.try_withdraw(0.2, 1, 11_000)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_zero_budget_with_no_reserve_allows_nothing() {
        let b = RetryBudget::default();
        (0..1000).for_each(|_| b.deposit(0));
        assert!(!b.try_withdraw(0.0, 0, 0));
    }

    #[test]
    fn budget_holds_under_concurrent_withdrawals() {
        let b = std::sync::Arc::new(RetryBudget::default());
        (0..1000).for_each(|_| b.deposit(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_withdraw(0.1, 0, 0)).count())
            })
            .collect();
        let total: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn backoff_stays_between_base_and_the_capped_exponential_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(50));
        assert_eq!(b.ceiling(2), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(250));
        assert_eq!(b.ceiling(40), Duration::from_millis(250));
        assert_eq!(b.delay_with(3, 0.0), Duration::from_millis(25));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(200));
        for n in 1..8 {
            for _ in 0..200 {
                let d = b.delay(n);
                assert!(d >= b.base && d <= b.ceiling(n), "retry {n}: {d:?}");
            }
        }
        // Full jitter: the waits spread over the range rather than sitting at one value.
        let ds: Vec<_> = (0..200).map(|_| b.delay(4)).collect();
        assert!(
            ds.iter().any(|d| *d < Duration::from_millis(100))
                && ds.iter().any(|d| *d > Duration::from_millis(175))
        );
    }

    #[test]
    fn policy_reads_conditions_and_methods() {
        let p = RetryPolicy::from(&cfg(vec![
            RetryOn::Kind(RetryKind::ConnectError),
            RetryOn::Status(503),
        ]));
        assert!(p.covers(RetryReason::ConnectError));
        assert!(!p.covers(RetryReason::Timeout));
        assert!(!p.covers(RetryReason::Reset));
        assert!(p.covers(RetryReason::Status(503)));
        assert!(!p.covers(RetryReason::Status(500)));
        assert!(p.has_statuses());
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", "k1".parse().unwrap());
        assert!(p.method_allowed(&Method::GET, &none));
        assert!(p.method_allowed(&Method::PUT, &none));
        assert!(p.method_allowed(&Method::DELETE, &none));
        assert!(!p.method_allowed(&Method::POST, &none));
        assert!(!p.method_allowed(&Method::PATCH, &none));
        assert!(p.method_allowed(&Method::POST, &keyed));
        let mut c = cfg(vec![]);
        c.non_idempotent = true;
        assert!(RetryPolicy::from(&c).method_allowed(&Method::POST, &none));
        assert!(!RetryReason::ConnectError.needs_idempotency());
        assert!(RetryReason::Reset.needs_idempotency());
    }
}
