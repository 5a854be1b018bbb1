//! The in-process limiter: the same algorithms as the Redis scripts, per gateway
//! instance, with idle keys evicted.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Algorithm, Decision, Policy};

const SHARDS: usize = 16;

enum Entry {
    /// Sliding log: times of the admitted requests inside the window, oldest first.
    Log(VecDeque<Instant>),
    /// GCRA: the theoretical arrival time.
    Tat(Instant),
}

/// One limit's counters in memory.
pub struct LocalLimiter {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    base: Instant,
    last_sweep_ms: AtomicU64,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            base: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }
}

impl LocalLimiter {
    /// Checks and counts one request for `key` at `now`.
    pub fn check(&self, key: &str, policy: &Policy, now: Instant) -> Decision {
        self.maybe_sweep(policy, now);
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let Ok(mut map) = shard.lock() else {
            // A panic while holding the lock: count nothing rather than refuse all.
            return Decision::allow_unknown(policy);
        };
        // A known key (the common case) is found without allocating its text.
        if !map.contains_key(key) {
            let fresh = match policy.algorithm {
                Algorithm::SlidingWindow => Entry::Log(VecDeque::new()),
                Algorithm::Gcra => Entry::Tat(now),
            };
            map.insert(key.to_string(), fresh);
        }
        let Some(entry) = map.get_mut(key) else {
            return Decision::allow_unknown(policy);
        };
        match policy.algorithm {
            Algorithm::SlidingWindow => {
                if !matches!(entry, Entry::Log(_)) {
                    *entry = Entry::Log(VecDeque::new());
                }
                let Entry::Log(log) = entry else {
                    return Decision::allow_unknown(policy);
                };
                sliding(log, policy, now)
            }
            Algorithm::Gcra => {
                let tat = match entry {
                    Entry::Tat(t) => *t,
                    Entry::Log(_) => now,
                };
                let (d, new_tat) = gcra(tat, policy, now);
                *entry = Entry::Tat(new_tat);
                d
            }
        }
    }

    /// Number of keys held (for tests and debugging).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes keys whose state is back to "never seen", at most once per
    /// min(window, 10s), by one caller.
    fn maybe_sweep(&self, policy: &Policy, now: Instant) {
        let now_ms = now.saturating_duration_since(self.base).as_millis() as u64;
        let every = policy.window.min(Duration::from_secs(10)).as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < every.max(1) {
            return;
        }
        if self
            .last_sweep_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.sweep(policy.window, now);
    }

    /// Removes idle keys now.
    pub fn sweep(&self, window: Duration, now: Instant) {
        for shard in &self.shards {
            if let Ok(mut map) = shard.lock() {
                map.retain(|_, e| match e {
                    Entry::Log(log) => log
                        .back()
                        .is_some_and(|last| now.saturating_duration_since(*last) < window),
                    Entry::Tat(tat) => *tat > now,
                });
            }
        }
    }
}

fn sliding(log: &mut VecDeque<Instant>, policy: &Policy, now: Instant) -> Decision {
    while log
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= policy.window)
    {
        log.pop_front();
    }
    let count = log.len() as u64;
    let allowed = count < policy.limit;
    if allowed {
        log.push_back(now);
    }
    let used = log.len() as u64;
    let until_oldest_leaves = log
        .front()
        .map(|t| (*t + policy.window).saturating_duration_since(now))
        .unwrap_or(policy.window);
    Decision {
        allowed,
        limit: policy.limit,
        remaining: policy.limit.saturating_sub(used),
        retry_after: if allowed {
            Duration::ZERO
        } else {
            until_oldest_leaves
        },
        reset: until_oldest_leaves,
    }
}

fn gcra(tat: Instant, policy: &Policy, now: Instant) -> (Decision, Instant) {
    let t = policy.emission_interval();
    let tau = t * policy.burst as u32;
    let tat = tat.max(now);
    let new_tat = tat + t;
    let diff = new_tat.saturating_duration_since(now);
    if diff > tau {
        let d = Decision {
            allowed: false,
            limit: policy.burst,
            remaining: 0,
            retry_after: diff - tau,
            reset: tat.saturating_duration_since(now),
        };
        return (d, tat);
    }
    let remaining = ((tau - diff).as_nanos() / t.as_nanos().max(1)) as u64;
    let d = Decision {
        allowed: true,
        limit: policy.burst,
        remaining,
        retry_after: Duration::ZERO,
        reset: diff,
    };
    (d, new_tat)
}

/// The in-process limiters of a runtime, keyed by (route, limit name, algorithm) so
/// that they survive config reloads.
#[derive(Default)]
pub struct LocalLimiters {
    limiters: Mutex<HashMap<(String, String, String), Arc<LocalLimiter>>>,
}

impl LocalLimiters {
    /// The limiter of `limit` on `route`.
    pub fn get(&self, route: &str, limit: &str, policy: &Policy) -> Arc<LocalLimiter> {
        let key = (
            route.to_string(),
            limit.to_string(),
            format!(
                "{:?}/{}/{:?}/{}",
                policy.algorithm, policy.limit, policy.window, policy.burst
            ),
        );
        match self.limiters.lock() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::new(LocalLimiter::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithm: Algorithm, limit: u64, window_ms: u64, burst: u64) -> Policy {
        Policy {
            algorithm,
            limit,
            window: Duration::from_millis(window_ms),
            burst,
        }
    }

    /// Asserts key `k`'s decision at each (ms after `t0`, allowed) in turn.
    fn assert_allowed_at(l: &LocalLimiter, p: &Policy, t0: Instant, steps: &[(u64, bool)]) {
        for &(ms, allowed) in steps {
            let d = l.check("k", p, t0 + Duration::from_millis(ms));
            assert_eq!(d.allowed, allowed, "at t0 + {ms} ms");
        }
    }

    #[test]
    fn sliding_window_is_exact() {
        let l = LocalLimiter::default();
        let p = policy(Algorithm::SlidingWindow, 3, 1000, 3);
        let t0 = Instant::now();
        for i in 0..3u64 {
            let d = l.check("k", &p, t0 + Duration::from_millis(i * 100));
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = l.check("k", &p, t0 + Duration::from_millis(500));
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(500));
        // Another key has its own budget.
        assert!(
            l.check("other", &p, t0 + Duration::from_millis(500))
                .allowed
        );
        // The first request leaves the window at t0+1000.
        assert_allowed_at(&l, &p, t0, &[(999, false), (1000, true), (1001, false)]);
    }

    #[test]
    fn gcra_allows_burst_then_rate() {
        let l = LocalLimiter::default();
        // 10 per second = one per 100ms, burst 3.
        let p = policy(Algorithm::Gcra, 10, 1000, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("k", &p, t0).allowed);
        }
        let d = l.check("k", &p, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert_allowed_at(&l, &p, t0, &[(99, false), (100, true), (150, false)]);
    }

    #[test]
    fn idle_keys_are_evicted() {
        let l = LocalLimiter::default();
        let p = policy(Algorithm::SlidingWindow, 5, 1000, 5);
        let g = policy(Algorithm::Gcra, 5, 1000, 5);
        let t0 = Instant::now();
        for i in 0..100 {
            l.check(&format!("k{i}"), &p, t0);
            l.check(&format!("g{i}"), &g, t0);
        }
        assert_eq!(l.len(), 200);
        l.sweep(p.window, t0 + Duration::from_millis(100));
        assert_eq!(l.len(), 200, "still inside the window");
        // GCRA state is back to "never seen" once its TAT (t0 + 200ms) has passed.
        l.sweep(p.window, t0 + Duration::from_millis(999));
        assert_eq!(l.len(), 100);
        l.sweep(p.window, t0 + Duration::from_millis(1000));
        assert_eq!(l.len(), 0);
        // The periodic sweep runs by itself on later checks.
        for i in 0..10 {
            l.check(&format!("k{i}"), &p, t0 + Duration::from_secs(2));
        }
        l.check("late", &p, t0 + Duration::from_secs(4));
        assert_eq!(l.len(), 1);
    }

    fn any_policy() -> impl proptest::strategy::Strategy<Value = Policy> {
        use proptest::prelude::*;
        (
            prop_oneof![Just(Algorithm::SlidingWindow), Just(Algorithm::Gcra)],
            1u64..12,
            50u64..2000,
            1u64..15,
        )
            .prop_map(|(a, limit, window, burst)| {
                let burst = if a == Algorithm::SlidingWindow {
                    limit
                } else {
                    burst
                };
                policy(a, limit, window, burst)
            })
    }

    /// Whether the admitted times respect the policy in every window: at most `limit` in
    /// any `window` (sliding), at most `burst + span / interval` in any span (GCRA).
    fn within_policy(admitted: &[Instant], p: &Policy) -> Result<(), String> {
        for (i, a) in admitted.iter().enumerate() {
            for (j, b) in admitted.iter().enumerate().skip(i) {
                let n = (j - i + 1) as u64;
                let span = b.saturating_duration_since(*a);
                let most = match p.algorithm {
                    Algorithm::SlidingWindow if span < p.window => p.limit,
                    Algorithm::SlidingWindow => continue,
                    Algorithm::Gcra => {
                        p.burst + (span.as_nanos() / p.emission_interval().as_nanos().max(1)) as u64
                    }
                };
                if n > most {
                    return Err(format!("{n} admitted in {span:?} under {p:?}"));
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Requests at any times: the admitted ones respect the limit in every window, and
        /// the sliding window refuses only when `limit` were admitted in the last window.
        #[test]
        fn never_more_than_the_limit_in_any_window(
            p in any_policy(),
            gaps in proptest::collection::vec(0u64..400, 1..150),
        ) {
            let l = LocalLimiter::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut admitted = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                let d = l.check("k", &p, now);
                if d.allowed {
                    admitted.push(now);
                } else if p.algorithm == Algorithm::SlidingWindow {
                    let recent = admitted
                        .iter()
                        .filter(|t| now.saturating_duration_since(**t) < p.window)
                        .count() as u64;
                    proptest::prop_assert_eq!(recent, p.limit, "refused below the limit");
                }
            }
            within_policy(&admitted, &p).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        /// Concurrent callers on one key at the same instant: exactly `limit` (sliding) or
        /// `burst` (GCRA) of them are admitted, never more.
        #[test]
        fn concurrent_callers_share_one_count(
            p in any_policy(),
            threads in 2usize..6,
            each in 1usize..12,
        ) {
            let l = LocalLimiter::default();
            let now = Instant::now();
            let admitted: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| s.spawn(|| (0..each).filter(|_| l.check("k", &p, now).allowed).count()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(usize::MAX)).sum()
            });
            let cap = match p.algorithm {
                Algorithm::SlidingWindow => p.limit,
                Algorithm::Gcra => p.burst,
            } as usize;
            proptest::prop_assert_eq!(admitted, (threads * each).min(cap));
        }
    }
}
