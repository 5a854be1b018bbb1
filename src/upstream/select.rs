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
}
