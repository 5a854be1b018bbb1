//! The per-upstream circuit breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED.
//!
//! Why per upstream: DESIGN.md's decision "which mechanism counts a failure" gives
//! per-endpoint failures to passive outlier ejection; the breaker answers "is this whole
//! service failing", so that requests fail fast instead of piling onto it.
//!
//! The hot path (admitting a request while CLOSED) is one atomic load; counting an outcome
//! while CLOSED is one CAS on a window bucket. Everything else (half-open probes, the
//! transitions) takes a small mutex, never across an `.await`. Time is passed in as
//! milliseconds of a monotonic clock so that tests drive it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::window::RollingPair;
use crate::config::model::CircuitBreakerConfig;

/// Buckets of the rolling window.
const WINDOW_BUCKETS: usize = 10;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests are refused until the open time is over.
    Open,
    /// A few probe requests decide between closing and opening again.
    HalfOpen,
}

impl BreakerState {
    fn from_bits(b: u64) -> Self {
        match b & 3 {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn bits(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// `CLOSED`, `OPEN`, `HALF_OPEN` (admin JSON, logs).
    pub fn as_upper(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    /// `closed`, `open`, `half_open` (metric labels).
    pub fn as_label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Every state, for one-hot gauges.
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];
}

/// A state change, to be announced once (log, event, metrics) by whoever caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why, for the log line and the event history.
    pub reason: String,
}

/// Proof of admission: outcomes only count for the breaker generation that admitted the
/// request, so a slow request admitted before a trip cannot close or re-open it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    probe: bool,
}

impl Ticket {
    /// Whether this request is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The answer to "may this request go upstream?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; record its outcome with this ticket.
    Admit(Ticket),
    /// No: fail fast. `retry_after` is when the breaker will let a probe through.
    Reject {
        /// Time until the next probe is possible.
        retry_after: Duration,
    },
}

/// The breaker's thresholds, from `circuit_breaker:` in the YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Failure rate (0..1] in the window that opens it.
    pub failure_rate: f64,
    /// Calls needed in the window before the rate counts.
    pub min_requests: u32,
    /// Rolling window length.
    pub window: Duration,
    /// Opens after this many consecutive failures, whatever the rate.
    pub consecutive_failures: Option<u32>,
    /// First open time.
    pub open_for: Duration,
    /// Cap of the doubling open time.
    pub max_open_for: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl From<&CircuitBreakerConfig> for BreakerSettings {
    fn from(c: &CircuitBreakerConfig) -> Self {
        Self {
            failure_rate: c.failure_rate,
            min_requests: c.min_requests,
            window: c.window.get(),
            consecutive_failures: c.consecutive_failures,
            open_for: c.open_for.get(),
            max_open_for: c.max_open_for.get(),
            half_open_probes: c.half_open_probes.max(1),
        }
    }
}

/// Slow-path state, touched only off the CLOSED fast path.
#[derive(Debug, Default, Clone)]
struct Inner {
    probes_issued: u32,
    probes_ok: u32,
    /// Trips in a row (a re-trip from half-open, or a trip soon after closing); the open
    /// time doubles with each.
    trips: u32,
    /// When it last closed, to tell a fresh failure from a flapping one.
    closed_at_ms: Option<u64>,
    /// The open time of the current or last trip.
    open_for_ms: u64,
}

/// A circuit breaker for one upstream.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// `generation << 2 | state`: one load tells both.
    word: AtomicU64,
    /// Calls and failures in the rolling window (CLOSED only).
    window: RollingPair,
    consecutive: AtomicU32,
    open_until_ms: AtomicU64,
    inner: Mutex<Inner>,
}

fn word(generation: u64, s: BreakerState) -> u64 {
    (generation << 2) | s.bits()
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        let window = RollingPair::new(settings.window, WINDOW_BUCKETS);
        Self {
            settings,
            word: AtomicU64::new(word(0, BreakerState::Closed)),
            window,
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A breaker with new settings that keeps `prev`'s state (an OPEN breaker stays open
    /// for the rest of its open time, and its trip count keeps growing the next one). The
    /// rolling window starts empty: old counts were judged by the old thresholds.
    pub fn inherit(settings: BreakerSettings, prev: &Breaker) -> Self {
        let b = Self::new(settings);
        let w = prev.word.load(Ordering::Acquire);
        b.word.store(
            word((w >> 2) + 1, BreakerState::from_bits(w)),
            Ordering::Release,
        );
        b.open_until_ms.store(
            prev.open_until_ms.load(Ordering::Acquire),
            Ordering::Release,
        );
        let inner = prev.lock().clone();
        *b.lock() = Inner {
            probes_issued: 0,
            probes_ok: 0,
            ..inner
        };
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thresholds it runs with.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_bits(self.word.load(Ordering::Acquire))
    }

    /// Failure rate in the current window, `None` before any call.
    pub fn error_rate(&self, now_ms: u64) -> Option<f64> {
        let (calls, failures) = self.window.sums(now_ms);
        (calls > 0).then(|| failures as f64 / calls as f64)
    }

    /// Calls counted in the current window.
    pub fn calls(&self, now_ms: u64) -> u64 {
        self.window.sums(now_ms).0
    }

    /// Open time of the current (or last) trip.
    pub fn open_for(&self) -> Duration {
        Duration::from_millis(self.lock().open_for_ms)
    }

    /// Time left before a probe may go, when OPEN.
    pub fn retry_after(&self, now_ms: u64) -> Option<Duration> {
        (self.state() == BreakerState::Open).then(|| {
            Duration::from_millis(
                self.open_until_ms
                    .load(Ordering::Acquire)
                    .saturating_sub(now_ms),
            )
        })
    }

    /// May a request go upstream at `now_ms`? A transition (OPEN -> HALF_OPEN when the open
    /// time is over) is returned for the caller to announce.
    pub fn admit(&self, now_ms: u64) -> (Admission, Option<Transition>) {
        let w = self.word.load(Ordering::Acquire);
        match BreakerState::from_bits(w) {
            BreakerState::Closed => (
                Admission::Admit(Ticket {
                    generation: w >> 2,
                    probe: false,
                }),
                None,
            ),
            BreakerState::Open => {
                let until = self.open_until_ms.load(Ordering::Acquire);
                if now_ms < until {
                    return (
                        Admission::Reject {
                            retry_after: Duration::from_millis(until - now_ms),
                        },
                        None,
                    );
                }
                let mut inner = self.lock();
                let mut transition = None;
                // Re-read under the lock: another request may have moved it already.
                if self.word.load(Ordering::Acquire) == w {
                    inner.probes_issued = 0;
                    inner.probes_ok = 0;
                    self.word.store(
                        word((w >> 2) + 1, BreakerState::HalfOpen),
                        Ordering::Release,
                    );
                    transition = Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        reason: format!(
                            "open for {}ms; letting {} probe(s) through",
                            inner.open_for_ms, self.settings.half_open_probes
                        ),
                    });
                }
                (self.admit_half_open(&mut inner, now_ms), transition)
            }
            BreakerState::HalfOpen => {
                let mut inner = self.lock();
                (self.admit_half_open(&mut inner, now_ms), None)
            }
        }
    }

    fn admit_half_open(&self, inner: &mut Inner, now_ms: u64) -> Admission {
        let w = self.word.load(Ordering::Acquire);
        match BreakerState::from_bits(w) {
            BreakerState::HalfOpen if inner.probes_issued < self.settings.half_open_probes => {
                inner.probes_issued += 1;
                Admission::Admit(Ticket {
                    generation: w >> 2,
                    probe: true,
                })
            }
            // Probes are out: wait for their verdict.
            BreakerState::HalfOpen => Admission::Reject {
                retry_after: Duration::from_secs(1),
            },
            BreakerState::Closed => Admission::Admit(Ticket {
                generation: w >> 2,
                probe: false,
            }),
            BreakerState::Open => Admission::Reject {
                retry_after: Duration::from_millis(
                    self.open_until_ms
                        .load(Ordering::Acquire)
                        .saturating_sub(now_ms),
                ),
            },
        }
    }

    /// Gives back a probe slot whose request ended without an upstream verdict (the client
    /// left, a filter failed), so that half-open cannot wait forever.
    pub fn release(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut inner = self.lock();
        if self.word.load(Ordering::Acquire) >> 2 == ticket.generation {
            inner.probes_issued = inner.probes_issued.saturating_sub(1);
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, ticket: Ticket, failure: bool, now_ms: u64) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        if w >> 2 != ticket.generation {
            return None;
        }
        match BreakerState::from_bits(w) {
            BreakerState::Closed => self.count_closed(w, failure, now_ms),
            BreakerState::HalfOpen if ticket.probe => {
                let mut inner = self.lock();
                if self.word.load(Ordering::Acquire) != w {
                    return None;
                }
                if failure {
                    return Some(self.trip(
                        &mut inner,
                        w,
                        now_ms,
                        "a half-open probe failed".into(),
                    ));
                }
                inner.probes_ok += 1;
                if inner.probes_ok >= self.settings.half_open_probes {
                    return Some(self.close(&mut inner, w, now_ms));
                }
                None
            }
            _ => None,
        }
    }

    /// Records an active health check result: counted like a call while CLOSED; a failure
    /// while HALF_OPEN re-opens (the service is still failing); otherwise ignored, since
    /// only real probes may close the breaker.
    pub fn record_health_check(&self, ok: bool, now_ms: u64) -> Option<Transition> {
        let w = self.word.load(Ordering::Acquire);
        match BreakerState::from_bits(w) {
            BreakerState::Closed => self.count_closed(w, !ok, now_ms),
            BreakerState::HalfOpen if !ok => {
                let mut inner = self.lock();
                if self.word.load(Ordering::Acquire) != w {
                    return None;
                }
                Some(self.trip(
                    &mut inner,
                    w,
                    now_ms,
                    "the active health check failed while half-open".into(),
                ))
            }
            _ => None,
        }
    }

    fn count_closed(&self, w: u64, failure: bool, now_ms: u64) -> Option<Transition> {
        self.window.add(now_ms, 1, u64::from(failure));
        let consecutive = if failure {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive.store(0, Ordering::Release);
            0
        };
        if !failure {
            return None;
        }
        let reason = if self
            .settings
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            format!("{consecutive} consecutive failures")
        } else {
            let (calls, failures) = self.window.sums(now_ms);
            let rate = failures as f64 / calls.max(1) as f64;
            if calls < u64::from(self.settings.min_requests) || rate < self.settings.failure_rate {
                return None;
            }
            format!(
                "failure rate {:.0}% over {calls} calls in {}s (threshold {:.0}%)",
                rate * 100.0,
                self.settings.window.as_secs_f64(),
                self.settings.failure_rate * 100.0
            )
        };
        let mut inner = self.lock();
        if self.word.load(Ordering::Acquire) != w {
            return None;
        }
        Some(self.trip(&mut inner, w, now_ms, reason))
    }

    fn trip(&self, inner: &mut Inner, w: u64, now_ms: u64, reason: String) -> Transition {
        let from = BreakerState::from_bits(w);
        // A trip soon after closing continues the series (a flapping upstream waits longer
        // each time); a trip long after a calm period starts it over.
        let calm = inner.closed_at_ms.is_some_and(|c| {
            now_ms.saturating_sub(c) > self.window.window_ms().max(inner.open_for_ms)
        });
        inner.trips = if from == BreakerState::Closed && (calm || inner.trips == 0) {
            1
        } else {
            inner.trips.saturating_add(1)
        };
        let base = self.settings.open_for.as_millis() as u64;
        let cap = (self.settings.max_open_for.as_millis() as u64).max(base);
        let open_for = base
            .saturating_mul(1u64 << (inner.trips - 1).min(32))
            .min(cap);
        inner.open_for_ms = open_for;
        self.open_until_ms
            .store(now_ms + open_for, Ordering::Release);
        self.window.clear();
        self.consecutive.store(0, Ordering::Release);
        self.word
            .store(word((w >> 2) + 1, BreakerState::Open), Ordering::Release);
        Transition {
            from,
            to: BreakerState::Open,
            reason: format!("{reason}; open for {open_for}ms"),
        }
    }

    fn close(&self, inner: &mut Inner, w: u64, now_ms: u64) -> Transition {
        inner.closed_at_ms = Some(now_ms);
        self.window.clear();
        self.consecutive.store(0, Ordering::Release);
        self.word
            .store(word((w >> 2) + 1, BreakerState::Closed), Ordering::Release);
        Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            reason: format!("{} half-open probe(s) succeeded", inner.probes_ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            consecutive_failures: None,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn admit(b: &Breaker, now: u64) -> Ticket {
        match b.admit(now).0 {
            Admission::Admit(t) => t,
            Admission::Reject { .. } => panic!("rejected at {now}"),
        }
    }

    fn rejected(b: &Breaker, now: u64) -> bool {
        matches!(b.admit(now).0, Admission::Reject { .. })
    }

    /// Trips a closed breaker with failures; returns the trip transition.
    fn trip(b: &Breaker, now: u64) -> Transition {
        for _ in 0..10 {
            let t = admit(b, now);
            if let Some(tr) = b.record(t, true, now) {
                return tr;
            }
        }
        panic!("did not trip");
    }

    /// A breaker with the test settings, tripped at 0 ms (open for the base 1 s).
    fn tripped() -> Breaker {
        let b = Breaker::new(settings());
        trip(&b, 0);
        b
    }

    #[test]
    fn opens_at_the_failure_rate_after_min_requests() {
        let b = Breaker::new(settings());
        // Below min_requests nothing happens, even at 100% failures.
        for now in 0..3 {
            let t = admit(&b, now);
            assert_eq!(b.record(t, true, now), None);
        }
        let t = admit(&b, 3);
        let tr = b.record(t, true, 3).unwrap();
        assert_eq!((tr.from, tr.to), (BreakerState::Closed, BreakerState::Open));
        assert!(tr.reason.contains("failure rate 100%"), "{}", tr.reason);
        assert!(rejected(&b, 4));
        match b.admit(500).0 {
            Admission::Reject { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(503))
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn successes_keep_the_rate_below_the_threshold() {
        let b = Breaker::new(settings());
        for now in 0..100 {
            let t = admit(&b, now);
            // one failure in three: 33% < 50%
            assert_eq!(b.record(t, now % 3 == 2, now), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let rate = b.error_rate(100).unwrap();
        assert!((rate - 33.0 / 100.0).abs() < 0.001, "{rate}");
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(settings());
        for now in 0..3 {
            let t = admit(&b, now);
            b.record(t, true, now);
        }
        // 11s later those three are gone: one more failure is 1 call, below min_requests.
        let t = admit(&b, 11_000);
        assert_eq!(b.record(t, true, 11_000), None);
        assert_eq!(b.calls(11_000), 1);
    }

    #[test]
    fn consecutive_failures_open_it_regardless_of_volume() {
        let b = Breaker::new(BreakerSettings {
            consecutive_failures: Some(3),
            min_requests: 1000,
            ..settings()
        });
        for now in 0..2 {
            let t = admit(&b, now);
            assert!(b.record(t, true, now).is_none());
        }
        let t = admit(&b, 2);
        assert!(
            b.record(t, false, 2).is_none(),
            "a success resets the streak"
        );
        for now in 3..5 {
            let t = admit(&b, now);
            assert!(b.record(t, true, now).is_none());
        }
        let t = admit(&b, 5);
        let tr = b.record(t, true, 5).unwrap();
        assert!(
            tr.reason.starts_with("3 consecutive failures"),
            "{}",
            tr.reason
        );
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_when_they_succeed() {
        let b = tripped();
        assert!(rejected(&b, 999));
        let (adm, tr) = b.admit(1_010);
        let tr = tr.unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BreakerState::Open, BreakerState::HalfOpen)
        );
        let Admission::Admit(p1) = adm else { panic!() };
        assert!(p1.is_probe());
        let p2 = admit(&b, 1_011);
        // Only two probes: the third request waits.
        assert!(rejected(&b, 1_012));
        assert_eq!(b.record(p1, false, 1_020), None);
        let tr = b.record(p2, false, 1_021).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert!(!admit(&b, 1_022).is_probe());
        assert_eq!(b.error_rate(1_022), None, "closing starts a fresh window");
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_open_time_up_to_the_cap() {
        let b = tripped();
        assert_eq!(b.open_for(), Duration::from_secs(1));
        let mut now = 0;
        for expected in [2_000, 4_000, 5_000, 5_000] {
            now += b.open_for().as_millis() as u64;
            let p = admit(&b, now);
            let tr = b.record(p, true, now).unwrap();
            assert_eq!(
                (tr.from, tr.to),
                (BreakerState::HalfOpen, BreakerState::Open)
            );
            assert_eq!(b.open_for(), Duration::from_millis(expected));
            assert!(rejected(&b, now + expected - 1));
        }
    }

    #[test]
    fn open_time_resets_after_a_calm_period_but_grows_when_flapping() {
        let b = tripped();
        let p1 = admit(&b, 1_000);
        let p2 = admit(&b, 1_000);
        b.record(p1, false, 1_000);
        b.record(p2, false, 1_000);
        assert_eq!(b.state(), BreakerState::Closed);
        // Trips again right away: flapping, so 2s.
        trip(&b, 1_100);
        assert_eq!(b.open_for(), Duration::from_secs(2));
        let p1 = admit(&b, 3_200);
        let p2 = admit(&b, 3_200);
        b.record(p1, false, 3_200);
        b.record(p2, false, 3_200);
        // A minute of calm: back to the base open time.
        trip(&b, 63_200);
        assert_eq!(b.open_for(), Duration::from_secs(1));
    }

    #[test]
    fn outcomes_of_requests_admitted_before_a_transition_do_not_count() {
        let b = Breaker::new(settings());
        let old = admit(&b, 0);
        trip(&b, 1);
        let _ = b.admit(2_000); // half-open now
                                // The slow request admitted while closed finishes: it neither closes nor re-opens it.
        assert_eq!(b.record(old, true, 2_001), None);
        assert_eq!(b.record(old, false, 2_001), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn released_probes_free_their_slot() {
        let b = tripped();
        let p1 = admit(&b, 1_000);
        let _p2 = admit(&b, 1_000);
        assert!(rejected(&b, 1_000));
        b.release(p1);
        assert!(admit(&b, 1_001).is_probe());
    }

    #[test]
    fn health_checks_count_while_closed_and_reopen_a_half_open_breaker() {
        let b = Breaker::new(settings());
        for now in 0..3 {
            assert!(b.record_health_check(false, now).is_none());
        }
        let tr = b.record_health_check(false, 3).unwrap();
        assert_eq!(tr.to, BreakerState::Open);
        // Checks never close it: only probes do.
        assert!(b.record_health_check(true, 500).is_none());
        let _ = b.admit(1_010);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.record_health_check(true, 1_011).is_none());
        let tr = b.record_health_check(false, 1_012).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (BreakerState::HalfOpen, BreakerState::Open)
        );
    }

    #[test]
    fn inherit_keeps_an_open_breaker_open() {
        let b = tripped();
        let n = Breaker::inherit(
            BreakerSettings {
                min_requests: 100,
                ..settings()
            },
            &b,
        );
        assert_eq!(n.state(), BreakerState::Open);
        assert!(rejected(&n, 500));
        assert!(admit(&n, 1_000).is_probe());
    }

    /// A plain-data model of the breaker's rules (DESIGN.md "Which mechanism counts a
    /// failure", the resilience issue): no atomics, the window as a list of timed outcomes.
    struct Model {
        s: BreakerSettings,
        state: BreakerState,
        generation: u64,
        open_until: u64,
        probes_issued: u32,
        probes_ok: u32,
        trips: u32,
        closed_at: Option<u64>,
        open_for_ms: u64,
        consecutive: u32,
        /// (time, failure) counted while CLOSED since the last transition.
        events: Vec<(u64, bool)>,
    }

    /// A transition as (from, to).
    type Moved = Option<(BreakerState, BreakerState)>;

    impl Model {
        fn new(s: BreakerSettings) -> Self {
            Model {
                s,
                state: BreakerState::Closed,
                generation: 0,
                open_until: 0,
                probes_issued: 0,
                probes_ok: 0,
                trips: 0,
                closed_at: None,
                open_for_ms: 0,
                consecutive: 0,
                events: Vec::new(),
            }
        }

        fn bucket_ms(&self) -> u64 {
            (self.s.window.as_millis() as u64 / WINDOW_BUCKETS as u64).max(1)
        }

        /// Calls and failures in the buckets of the window ending at `now`.
        fn sums(&self, now: u64) -> (u64, u64) {
            let cur = now / self.bucket_ms();
            let oldest = cur.saturating_sub(WINDOW_BUCKETS as u64 - 1);
            let inside = self.events.iter().filter(|(t, _)| {
                let b = t / self.bucket_ms();
                b >= oldest && b <= cur
            });
            inside.fold((0, 0), |(c, f), (_, fail)| (c + 1, f + u64::from(*fail)))
        }

        /// `(admitted, probe)`; a transition to HALF_OPEN when the open time is over.
        fn admit(&mut self, now: u64) -> (Option<(u64, bool)>, Moved) {
            let mut tr = None;
            match self.state {
                BreakerState::Closed => return (Some((self.generation, false)), None),
                BreakerState::Open if now < self.open_until => return (None, None),
                BreakerState::Open => {
                    self.state = BreakerState::HalfOpen;
                    self.generation += 1;
                    self.probes_issued = 0;
                    self.probes_ok = 0;
                    tr = Some((BreakerState::Open, BreakerState::HalfOpen));
                }
                BreakerState::HalfOpen => {}
            }
            if self.probes_issued < self.s.half_open_probes {
                self.probes_issued += 1;
                (Some((self.generation, true)), tr)
            } else {
                (None, tr)
            }
        }

        fn trip(&mut self, now: u64) -> (BreakerState, BreakerState) {
            let from = self.state;
            let window_ms = self.bucket_ms() * WINDOW_BUCKETS as u64;
            let calm = self
                .closed_at
                .is_some_and(|c| now.saturating_sub(c) > window_ms.max(self.open_for_ms));
            self.trips = if from == BreakerState::Closed && (calm || self.trips == 0) {
                1
            } else {
                self.trips + 1
            };
            let base = self.s.open_for.as_millis() as u64;
            let cap = (self.s.max_open_for.as_millis() as u64).max(base);
            self.open_for_ms = base.saturating_mul(1 << (self.trips - 1).min(32)).min(cap);
            self.open_until = now + self.open_for_ms;
            self.events.clear();
            self.consecutive = 0;
            self.generation += 1;
            self.state = BreakerState::Open;
            (from, BreakerState::Open)
        }

        fn count_closed(&mut self, failure: bool, now: u64) -> Moved {
            self.events.push((now, failure));
            if !failure {
                self.consecutive = 0;
                return None;
            }
            self.consecutive += 1;
            let by_count = self
                .s
                .consecutive_failures
                .is_some_and(|n| self.consecutive >= n);
            let (calls, failures) = self.sums(now);
            let by_rate = calls >= u64::from(self.s.min_requests)
                && failures as f64 / calls.max(1) as f64 >= self.s.failure_rate;
            (by_count || by_rate).then(|| self.trip(now))
        }

        fn record(&mut self, generation: u64, probe: bool, failure: bool, now: u64) -> Moved {
            if generation != self.generation {
                return None;
            }
            match self.state {
                BreakerState::Closed => self.count_closed(failure, now),
                BreakerState::HalfOpen if probe && failure => Some(self.trip(now)),
                BreakerState::HalfOpen if probe => {
                    self.probes_ok += 1;
                    if self.probes_ok < self.s.half_open_probes {
                        return None;
                    }
                    self.closed_at = Some(now);
                    self.events.clear();
                    self.consecutive = 0;
                    self.generation += 1;
                    self.state = BreakerState::Closed;
                    Some((BreakerState::HalfOpen, BreakerState::Closed))
                }
                _ => None,
            }
        }

        fn health(&mut self, ok: bool, now: u64) -> Moved {
            match self.state {
                BreakerState::Closed => self.count_closed(!ok, now),
                BreakerState::HalfOpen if !ok => Some(self.trip(now)),
                _ => None,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Wait(u64),
        Admit,
        Record { which: usize, failure: bool },
        Release(usize),
        Health(bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            1 => (0u64..400).prop_map(Op::Wait),
            3 => Just(Op::Admit),
            3 => (any::<usize>(), proptest::bool::weighted(0.6))
                .prop_map(|(which, failure)| Op::Record { which, failure }),
            1 => any::<usize>().prop_map(Op::Release),
            1 => proptest::bool::weighted(0.7).prop_map(Op::Health),
        ]
    }

    fn any_settings() -> impl proptest::strategy::Strategy<Value = BreakerSettings> {
        use proptest::prelude::*;
        (
            1u32..=10,
            1u32..12,
            proptest::option::of(1u32..6),
            50u64..600,
            1u32..4,
            1u64..8,
            200u64..3000,
        )
            .prop_map(|(rate, min, consecutive, open, probes, cap, window)| {
                BreakerSettings {
                    failure_rate: f64::from(rate) / 10.0,
                    min_requests: min,
                    window: Duration::from_millis(window),
                    consecutive_failures: consecutive,
                    open_for: Duration::from_millis(open),
                    max_open_for: Duration::from_millis(open * cap),
                    half_open_probes: probes,
                }
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any sequence of admissions, outcomes (in any order, late ones included),
        /// released probes, health checks and waits: the breaker admits, refuses and moves
        /// exactly as the model does, and never has more probes out than allowed.
        #[test]
        fn breaker_follows_the_model(
            s in any_settings(),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            use proptest::{prop_assert, prop_assert_eq};
            let b = Breaker::new(s.clone());
            let mut m = Model::new(s.clone());
            let mut now = 1_000u64;
            // Outstanding admissions: the real ticket and the model's (generation, probe).
            let mut out: Vec<(Ticket, (u64, bool))> = Vec::new();
            for op in ops {
                match op {
                    Op::Wait(d) => now += d,
                    Op::Admit => {
                        let (a, tr) = b.admit(now);
                        let (ma, mtr) = m.admit(now);
                        prop_assert_eq!(tr.map(|t| (t.from, t.to)), mtr);
                        match (a, ma) {
                            (Admission::Admit(t), Some(mt)) => {
                                prop_assert_eq!(t.is_probe(), mt.1);
                                out.push((t, mt));
                            }
                            (Admission::Reject { retry_after }, None) => {
                                if m.state == BreakerState::Open {
                                    prop_assert_eq!(retry_after.as_millis() as u64, m.open_until - now);
                                }
                            }
                            (a, ma) => prop_assert!(false, "breaker {:?}, model {:?}", a, ma),
                        }
                    }
                    Op::Record { which, failure } if !out.is_empty() => {
                        let (t, (g, p)) = out.remove(which % out.len());
                        let tr = b.record(t, failure, now);
                        prop_assert_eq!(tr.map(|t| (t.from, t.to)), m.record(g, p, failure, now));
                    }
                    Op::Release(which) if !out.is_empty() => {
                        let (t, (g, p)) = out.remove(which % out.len());
                        b.release(t);
                        if p && g == m.generation {
                            m.probes_issued = m.probes_issued.saturating_sub(1);
                        }
                    }
                    Op::Health(ok) => {
                        let tr = b.record_health_check(ok, now);
                        prop_assert_eq!(tr.map(|t| (t.from, t.to)), m.health(ok, now));
                    }
                    Op::Record { .. } | Op::Release(_) => {}
                }
                prop_assert_eq!(b.state(), m.state);
                if m.state == BreakerState::HalfOpen {
                    prop_assert!(m.probes_issued <= s.half_open_probes);
                }
                if m.state != BreakerState::Closed {
                    prop_assert_eq!(b.open_for().as_millis() as u64, m.open_for_ms);
                } else {
                    prop_assert_eq!(b.calls(now), m.sums(now).0);
                }
            }
        }
    }
}
