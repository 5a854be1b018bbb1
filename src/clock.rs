//! The gateway's clocks: one monotonic clock for every timer (breakers, budgets, passive
//! ejection), wall time only for display. A wall-clock step must not end or stretch a
//! timer, so nothing that measures a duration reads the wall clock.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The process-wide base of [`mono_ms`], fixed on first use.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds of the process-wide monotonic clock (0 at its first use): the time base
/// of every timer.
pub fn mono_ms() -> u64 {
    base().elapsed().as_millis() as u64
}

/// Milliseconds since the Unix epoch (wall clock): for display and logs only.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall time (Unix ms) at which the monotonic instant `mono` falls, as seen now: for
/// showing a timer's end (e.g. an ejection's) to an operator.
pub fn wall_of_mono(mono: u64) -> u64 {
    let now = mono_ms();
    if mono >= now {
        wall_ms().saturating_add(mono - now)
    } else {
        wall_ms().saturating_sub(now - mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_never_goes_back_and_maps_to_wall_time() {
        let a = mono_ms();
        let b = mono_ms();
        assert!(b >= a);
        let wall = wall_of_mono(a + 60_000);
        let expected = wall_ms() + 60_000;
        assert!(wall.abs_diff(expected) < 5_000, "{wall} vs {expected}");
    }
}
