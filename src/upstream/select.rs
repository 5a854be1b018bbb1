//! Smooth weighted round-robin (nginx's algorithm): over any window of sum(weights)
//! picks each endpoint gets exactly its weight, interleaved rather than in bursts.

use std::sync::Arc;

use super::Endpoint;

/// SWRR state: one "current weight" per endpoint of the set it was last used with.
#[derive(Debug, Default)]
pub struct Swrr {
    /// Identity of the endpoint set the weights belong to.
    set_id: usize,
    current: Vec<i64>,
}

impl Swrr {
    /// Picks the index of an eligible endpoint, or `None` when none is eligible.
    pub fn pick(
        &mut self,
        eps: &Arc<Vec<Arc<Endpoint>>>,
        eligible: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        let id = Arc::as_ptr(eps) as usize;
        if self.set_id != id || self.current.len() != eps.len() {
            self.set_id = id;
            self.current = vec![0; eps.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, ep) in eps.iter().enumerate() {
            // Weight 0 drains an endpoint: it is never picked, even as a last resort.
            if ep.weight == 0 || !eligible(ep) {
                continue;
            }
            let w = i64::from(ep.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Source;

    fn set(weights: &[u32]) -> Arc<Vec<Arc<Endpoint>>> {
        Arc::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let addr = format!("127.0.0.1:{}", 1000 + i);
                    Arc::new(Endpoint::new(
                        addr.parse().unwrap(),
                        addr,
                        *w,
                        Source::Static,
                        true,
                    ))
                })
                .collect(),
        )
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let eps = set(&[5, 1, 1]);
        let mut s = Swrr::default();
        let seq: Vec<usize> = (0..7).map(|_| s.pick(&eps, |_| true).unwrap()).collect();
        // nginx's documented order for {a:5, b:1, c:1}: a a b a c a a
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_share_in_every_window() {
        let eps = set(&[3, 2, 1]);
        let mut s = Swrr::default();
        for _ in 0..10 {
            let mut counts = [0; 3];
            for _ in 0..6 {
                counts[s.pick(&eps, |_| true).unwrap()] += 1;
            }
            assert_eq!(counts, [3, 2, 1]);
        }
    }

    #[test]
    fn skips_ineligible() {
        let eps = set(&[5, 1, 1]);
        let mut s = Swrr::default();
        for _ in 0..20 {
            assert_ne!(s.pick(&eps, |e| e.addr.port() != 1000), Some(0));
        }
        assert_eq!(s.pick(&eps, |_| false), None);
    }

    #[test]
    fn weight_zero_is_never_picked() {
        let eps = set(&[0, 2, 1]);
        let mut s = Swrr::default();
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[s.pick(&eps, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 20, 10]);
        assert_eq!(s.pick(&set(&[0, 0]), |_| true), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Fairness: from any start, every run of sum(weights) picks gives each endpoint
        /// exactly its weight. Smoothness: after any number of picks, each endpoint's count
        /// is within 2 of its ideal share (a plain weighted round-robin that sends a
        /// weight in a row is off by up to a weight), and no endpoint waits more than
        /// twice its ideal interval between two picks.
        #[test]
        fn fair_and_smooth_for_any_weights(
            weights in proptest::collection::vec(0u32..40, 1..9),
            rounds in 1usize..4,
        ) {
            let eps = set(&weights);
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let mut s = Swrr::default();
            if total == 0 {
                proptest::prop_assert_eq!(s.pick(&eps, |_| true), None);
                return Ok(());
            }
            let mut counts = vec![0u64; weights.len()];
            let mut last_pick: Vec<Option<u64>> = vec![None; weights.len()];
            for n in 1..=total * rounds as u64 {
                let Some(i) = s.pick(&eps, |_| true) else {
                    return Err(proptest::test_runner::TestCaseError::fail("no pick"));
                };
                proptest::prop_assert!(weights[i] > 0, "picked a drained endpoint");
                counts[i] += 1;
                let ideal_gap = total as f64 / f64::from(weights[i]);
                if let Some(prev) = last_pick[i] {
                    let gap = (n - prev) as f64;
                    proptest::prop_assert!(
                        gap <= 2.0 * ideal_gap,
                        "endpoint {} waited {} picks, ideal {:.1}", i, gap, ideal_gap
                    );
                }
                last_pick[i] = Some(n);
                for (j, w) in weights.iter().enumerate() {
                    let ideal = n as f64 * f64::from(*w) / total as f64;
                    proptest::prop_assert!(
                        (counts[j] as f64 - ideal).abs() < 2.0,
                        "after {} picks endpoint {} has {}, ideal {:.2}", n, j, counts[j], ideal
                    );
                }
                if n % total == 0 {
                    let want: Vec<u64> = weights.iter().map(|w| u64::from(*w) * n / total).collect();
                    proptest::prop_assert_eq!(&counts, &want);
                }
            }
        }
    }
}
