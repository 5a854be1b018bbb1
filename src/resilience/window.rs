//! A lock-free rolling window of two counters (e.g. calls and failures), in fixed buckets.
//!
//! Each bucket is one `AtomicU64` packing the bucket's epoch (24 bits) with both counts
//! (20 bits each), so one compare-and-swap both recycles a stale bucket and counts: no
//! count is lost to a reset race, and the hot path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const EPOCH_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn pack(epoch: u64, a: u64, b: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (a.min(COUNT_MAX) << COUNT_BITS) | b.min(COUNT_MAX)
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> (2 * COUNT_BITS),
        (v >> COUNT_BITS) & COUNT_MAX,
        v & COUNT_MAX,
    )
}

/// Two counters summed over the last `window`, at bucket granularity. Times are
/// milliseconds of any monotonic clock, passed in so that tests control time.
#[derive(Debug)]
pub struct RollingPair {
    buckets: Box<[AtomicU64]>,
    bucket_ms: u64,
}

impl RollingPair {
    /// A window of `window` split into `buckets` buckets (counts older than one bucket
    /// beyond the window drop out).
    pub fn new(window: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let bucket_ms = (window.as_millis() as u64 / buckets as u64).max(1);
        Self {
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            bucket_ms,
        }
    }

    /// The length of the window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.bucket_ms * self.buckets.len() as u64
    }

    /// Adds `a` and `b` at `now_ms`. Past about a million per bucket both counts are halved,
    /// which keeps their ratio.
    pub fn add(&self, now_ms: u64, a: u64, b: u64) {
        let idx = now_ms / self.bucket_ms;
        let tag = idx & EPOCH_MASK;
        let slot = &self.buckets[(idx % self.buckets.len() as u64) as usize];
        // fetch_update retries the CAS until it lands; the closure always returns Some.
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (epoch, x, y) = unpack(v);
            let (mut x, mut y) = if epoch == tag { (x + a, y + b) } else { (a, b) };
            // Near saturation, halve both counts: the bucket keeps its ratio (what the
            // breaker reads) instead of pinning one count while the other grows.
            while x > COUNT_MAX || y > COUNT_MAX {
                x /= 2;
                y /= 2;
            }
            Some(pack(tag, x, y))
        });
    }

    /// Both sums over the buckets of the window ending at `now_ms`.
    pub fn sums(&self, now_ms: u64) -> (u64, u64) {
        let idx = now_ms / self.bucket_ms;
        let n = self.buckets.len() as u64;
        let (mut sa, mut sb) = (0, 0);
        for back in 0..n.min(idx + 1) {
            let cur = idx - back;
            let (epoch, a, b) = unpack(self.buckets[(cur % n) as usize].load(Ordering::Acquire));
            if epoch == cur & EPOCH_MASK {
                sa += a;
                sb += b;
            }
        }
        (sa, sb)
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for b in self.buckets.iter() {
            // An epoch that no current index has (all ones), so the bucket reads as empty.
            b.store(pack(EPOCH_MASK, 0, 0), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_after() {
        let w = RollingPair::new(Duration::from_secs(10), 10);
        w.add(0, 1, 0);
        w.add(500, 1, 1);
        w.add(5_000, 2, 1);
        assert_eq!(w.sums(5_000), (4, 2));
        assert_eq!(w.sums(9_999), (4, 2));
        // The first bucket (0..1000) leaves the window at 10s.
        assert_eq!(w.sums(10_000), (2, 1));
        assert_eq!(w.sums(15_000), (0, 0));
        // A recycled slot starts from zero.
        w.add(20_500, 1, 0);
        assert_eq!(w.sums(20_500), (1, 0));
        w.clear();
        assert_eq!(w.sums(20_500), (0, 0));
    }

    #[test]
    fn a_saturated_bucket_keeps_its_ratio() {
        let w = RollingPair::new(Duration::from_secs(10), 10);
        for i in 0..3_000_000u64 {
            w.add(100, 1, u64::from(i % 10 == 0));
        }
        let (calls, failures) = w.sums(100);
        assert!(calls > 500_000, "{calls}");
        let rate = failures as f64 / calls as f64;
        assert!(
            (rate - 0.1).abs() < 0.01,
            "failure rate {rate} drifted from 0.1"
        );
    }

    #[test]
    fn concurrent_adds_are_not_lost() {
        let w = std::sync::Arc::new(RollingPair::new(Duration::from_secs(10), 10));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| w.add(1_234, 1, 1)))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(w.sums(1_234), (40_000, 40_000));
    }
}
