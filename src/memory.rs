//! Freed memory back to the OS when a proxy thread goes quiet: mimalloc keeps what a thread
//! freed in that thread's own heap, and only that thread can collect it, so each proxy
//! thread runs its own quiet watch (the maintenance thread's collect reaches its own heap
//! and the shared arenas only).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// How often a thread's watch looks; a second with no new request is "quiet".
pub const QUIET: Duration = Duration::from_secs(1);

/// Longest gap between two collects while a thread stays quiet (the gap doubles from
/// [`QUIET`]): pooled upstream connections and other idle state are freed later than the
/// last request (`upstream_burst_idle_timeout`, 1 s, for a burst's extra connections;
/// `upstream_idle_timeout`, 60 s by default, for the rest), and their memory too.
pub const MAX_GAP: Duration = Duration::from_secs(64);

static RELEASE: OnceLock<fn()> = OnceLock::new();

thread_local! {
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Sets the allocator's collect function for the whole process (the `gatehouse` binary
/// passes mimalloc's `mi_collect`); a second call is ignored. Without it nothing is
/// watched.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Counts a request on this thread; on the thread's first request starts its watch on the
/// thread's tokio runtime. With `runtime.work_stealing: true` the watch may run on another
/// worker of the runtime and then collects that worker's heap.
pub fn note_request() {
    let Some(&release) = RELEASE.get() else {
        return;
    };
    REQUESTS.with(|r| r.set(r.get().wrapping_add(1)));
    if WATCHING.with(|w| w.replace(true)) {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(watch(release));
    }
}

/// Every [`QUIET`]: after a second with no new request on this thread, collects; while the
/// thread stays quiet, again 1 s later (a burst's extra upstream connections close
/// `upstream_burst_idle_timeout`, 1 s by default, after their last use), then after 2, 4,
/// ... up to [`MAX_GAP`] seconds; a request starts it over. Never returns (it ends with its runtime).
async fn watch(release: fn()) {
    let mut seen = REQUESTS.with(Cell::get);
    let mut gap = Duration::ZERO;
    let mut quiet_for = Duration::ZERO;
    loop {
        tokio::time::sleep(QUIET).await;
        let now = REQUESTS.with(Cell::get);
        if now != seen {
            seen = now;
            gap = Duration::ZERO;
            quiet_for = Duration::ZERO;
            continue;
        }
        quiet_for += QUIET;
        if quiet_for >= gap.max(QUIET) {
            release();
            gap = if gap.is_zero() {
                QUIET
            } else {
                (gap * 2).min(MAX_GAP)
            };
            quiet_for = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        // Per thread: another test's watch (on another thread) counts in its own.
        static COLLECTS: Cell<u32> = const { Cell::new(0) };
    }

    fn count() {
        COLLECTS.with(|c| c.set(c.get() + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn collects_once_quiet_then_backs_off_and_starts_over_after_traffic() {
        set_release(count);
        let start = tokio::time::Instant::now();
        // Checkpoints a quarter second off the watch's ticks (1 s, 2 s, ... after start).
        let at = |ms: u64| tokio::time::sleep_until(start + Duration::from_millis(ms));
        let collects = || COLLECTS.with(Cell::get);
        // Busy: a request every half second until 4.5 s.
        for i in 0..10 {
            at(i * 500).await;
            note_request();
        }
        at(5_250).await;
        assert_eq!(collects(), 0, "no collect while requests arrive");
        at(6_250).await;
        assert_eq!(collects(), 1, "one collect after a quiet second (tick 6)");
        at(7_250).await;
        assert_eq!(collects(), 2, "the second follows a second later (tick 7)");
        at(8_250).await;
        assert_eq!(collects(), 2, "then 2 s");
        at(9_250).await;
        assert_eq!(collects(), 3);
        at(12_250).await;
        assert_eq!(collects(), 3, "then 4 s");
        at(13_250).await;
        assert_eq!(collects(), 4);
        // A request starts it over: tick 14 sees it, tick 15 is quiet again.
        note_request();
        at(14_250).await;
        assert_eq!(collects(), 4);
        at(15_250).await;
        assert_eq!(
            collects(),
            5,
            "a quiet second after new traffic collects again"
        );
    }
}
