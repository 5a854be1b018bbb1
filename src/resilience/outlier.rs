//! Passive outlier detection with Envoy's semantics: an endpoint that fails
//! `consecutive_failures` tries in a row is ejected for `base_ejection_time` times the
//! number of times it was ejected (capped at `max_ejection_time`), and never more than
//! `max_ejection_percent` of the cluster is ejected at once. It comes back by itself when
//! the time is over; `resilience::publish` announces the return.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::model::OutlierConfig;
use crate::upstream::Endpoint;

/// An upstream's outlier-detection policy.
#[derive(Debug)]
pub struct OutlierPolicy {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// Ejection time unit.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Largest share of the cluster ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Serializes ejection decisions so that two concurrent ones cannot both pass the
    /// percentage cap. Taken only when an endpoint reaches the threshold.
    decide: Mutex<()>,
}

impl From<&OutlierConfig> for OutlierPolicy {
    fn from(c: &OutlierConfig) -> Self {
        Self {
            consecutive_failures: c.consecutive_failures.max(1),
            base_ejection_time: c.base_ejection_time.get(),
            max_ejection_time: c.max_ejection_time.get(),
            max_ejection_percent: c.max_ejection_percent.min(100),
            decide: Mutex::new(()),
        }
    }
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    (ejected + 1) * 100 <= max_percent as usize * total
}

/// Length of the `n`-th ejection (1-based).
pub fn ejection_time(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(n.max(1)).min(max)
}

impl OutlierPolicy {
    /// Records one try's verdict on `ep`, one of `cluster`; returns the ejection time when
    /// this failure ejected it.
    pub fn record(
        &self,
        cluster: &[Arc<Endpoint>],
        ep: &Endpoint,
        failure: bool,
        now_ms: u64,
    ) -> Option<Duration> {
        let streak = ep.record_traffic(failure);
        if streak < self.consecutive_failures {
            return None;
        }
        let _serial = self.decide.lock().unwrap_or_else(|p| p.into_inner());
        if ep.is_ejected(now_ms) {
            return None;
        }
        let ejected = cluster.iter().filter(|e| e.is_ejected(now_ms)).count();
        if !may_eject(ejected, cluster.len(), self.max_ejection_percent) {
            // Envoy keeps such a host in rotation; its streak keeps counting, so it is
            // ejected as soon as another one comes back.
            return None;
        }
        let time = ejection_time(
            self.base_ejection_time,
            self.max_ejection_time,
            ep.ejections() + 1,
        );
        ep.eject(now_ms + time.as_millis() as u64);
        Some(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Source;

    fn cluster(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Endpoint::new(
                    addr,
                    addr.to_string(),
                    1,
                    Source::Static,
                    true,
                ))
            })
            .collect()
    }

    fn policy(percent: u32) -> OutlierPolicy {
        OutlierPolicy::from(&OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: gatehouse_filters::Duration::from_secs(10),
            max_ejection_time: gatehouse_filters::Duration::from_secs(25),
            max_ejection_percent: percent,
        })
    }

    #[test]
    fn percent_cap() {
        assert!(may_eject(0, 2, 50));
        assert!(!may_eject(1, 2, 50));
        assert!(
            !may_eject(0, 1, 50),
            "a lone endpoint is never ejected below 100%"
        );
        assert!(may_eject(0, 1, 100));
        assert!(may_eject(2, 10, 30));
        assert!(!may_eject(3, 10, 30));
        assert!(!may_eject(0, 10, 0));
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_capped_time() {
        let c = cluster(4);
        let p = policy(50);
        assert_eq!(p.record(&c, &c[0], true, 0), None);
        assert_eq!(p.record(&c, &c[0], true, 0), None);
        assert_eq!(
            p.record(&c, &c[0], false, 0),
            None,
            "a success resets the streak"
        );
        assert_eq!(p.record(&c, &c[0], true, 0), None);
        assert_eq!(p.record(&c, &c[0], true, 0), None);
        assert_eq!(p.record(&c, &c[0], true, 0), Some(Duration::from_secs(10)));
        assert!(c[0].is_ejected(9_999));
        assert!(
            !c[0].is_ejected(10_000),
            "back by itself when the time is over"
        );
        for _ in 0..3 {
            p.record(&c, &c[0], true, 10_000);
        }
        assert_eq!(c[0].ejected_until_ms(), 30_000, "second ejection: 2 x base");
        for _ in 0..3 {
            p.record(&c, &c[0], true, 30_000);
        }
        assert_eq!(
            c[0].ejected_until_ms(),
            55_000,
            "third: 3 x base capped at 25s"
        );
    }

    #[test]
    fn never_ejects_more_than_the_percentage() {
        let c = cluster(4);
        let p = policy(50);
        for ep in c.iter() {
            for _ in 0..5 {
                p.record(&c, ep, true, 0);
            }
        }
        assert_eq!(c.iter().filter(|e| e.is_ejected(0)).count(), 2);
        // When one comes back, a still-failing one may take its place.
        let back = c
            .iter()
            .find(|e| e.is_ejected(0))
            .unwrap()
            .ejected_until_ms();
        let waiting = c.iter().find(|e| !e.is_ejected(0)).unwrap().clone();
        assert!(p.record(&c, &waiting, true, back).is_some());
    }
}
