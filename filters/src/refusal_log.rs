//! Rate-limited refusal log lines: a filter's 401s and 429s come in floods (a client
//! retrying without a token, a scraper over its limit), so the log gets one line per key
//! and interval plus one summary line with the count of the lines it held back. The
//! access log and the metrics still count every refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a key's window lasts: one full line at its start, one summary at its end.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One key's current window.
struct Window {
    ends: Instant,
    suppressed: u64,
}

/// The refusal-line limiter of one filter instance (so one route), keyed by the
/// refusal's reason or code (a small fixed set per filter).
pub struct RefusalLog {
    interval: Duration,
    windows: Arc<Mutex<HashMap<&'static str, Window>>>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(INTERVAL)
    }
}

impl RefusalLog {
    /// A limiter with windows of `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether this refusal's line is written now: `Some(n)` for the first refusal of
    /// `key` in a window, where `n` counts the refusals of an earlier window whose
    /// summary had not been written yet (usually 0); `None` when it is only counted.
    /// When a window ends with refusals counted, `summary(count)` is called once, from a
    /// timer task on the current tokio runtime (without one no summary is written).
    pub fn admit(
        &self,
        key: &'static str,
        summary: impl FnOnce(u64) + Send + 'static,
    ) -> Option<u64> {
        let now = Instant::now();
        let ends = now + self.interval;
        let carried = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            match windows.get_mut(key) {
                Some(w) if now < w.ends => {
                    w.suppressed += 1;
                    return None;
                }
                Some(w) => {
                    // The old window's timer has not run yet: its count goes on this line.
                    let carried = std::mem::take(&mut w.suppressed);
                    w.ends = ends;
                    carried
                }
                None => {
                    windows.insert(
                        key,
                        Window {
                            ends,
                            suppressed: 0,
                        },
                    );
                    0
                }
            }
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let windows = Arc::clone(&self.windows);
            rt.spawn(async move {
                tokio::time::sleep_until(ends).await;
                let n = {
                    let mut windows = windows.lock().unwrap_or_else(|p| p.into_inner());
                    windows
                        .get_mut(key)
                        .filter(|w| w.ends == ends)
                        .map_or(0, |w| std::mem::take(&mut w.suppressed))
                };
                if n > 0 {
                    summary(n);
                }
            });
        }
        Some(carried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn one_line_per_key_and_interval_and_one_summary_with_the_count() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let summed = Arc::new(AtomicU64::new(0));
        let summaries = Arc::new(AtomicU64::new(0));
        let mut written = 0;
        for i in 0..200 {
            let key = if i % 4 == 0 {
                "expired"
            } else {
                "missing_token"
            };
            let (s, n) = (summed.clone(), summaries.clone());
            if log
                .admit(key, move |c| {
                    s.fetch_add(c, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                })
                .is_some()
            {
                written += 1;
            }
        }
        assert_eq!(written, 2, "one line per key");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(summaries.load(Ordering::SeqCst), 2, "one summary per key");
        assert_eq!(
            summed.load(Ordering::SeqCst),
            198,
            "every held-back line counted"
        );

        // A new window starts with a full line again.
        assert_eq!(log.admit("expired", |_| {}), Some(0));
    }
}
