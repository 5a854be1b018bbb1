//! Parent-based ratio sampling whose ratio can change while spans are being started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry::trace::{
    Link, SamplingDecision, SamplingResult, SpanKind, TraceContextExt as _, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::ShouldSample;

/// `ParentBased(TraceIdRatioBased(ratio))` of the OpenTelemetry trace SDK specification,
/// with the ratio in an atomic so that a config reload changes it without rebuilding the
/// tracer: a span with a parent keeps the parent's sampled flag; a root span is kept when
/// the trace id's lower 63 bits fall under `ratio * 2^63` (the SDK's own rule, so a trace
/// id is judged the same way by every service in it).
#[derive(Debug, Clone)]
pub struct RatioSampler {
    ratio_bits: Arc<AtomicU64>,
}

impl RatioSampler {
    /// A sampler keeping `ratio` of new traces (clamped to 0.0..=1.0; NaN counts as 0).
    pub fn new(ratio: f64) -> Self {
        let s = Self {
            ratio_bits: Arc::new(AtomicU64::new(0)),
        };
        s.set_ratio(ratio);
        s
    }

    /// Changes the ratio for decisions made from now on.
    pub fn set_ratio(&self, ratio: f64) {
        let r = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.ratio_bits.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The ratio in force.
    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio_bits.load(Ordering::Relaxed))
    }

    /// Whether a new trace with this id is kept at the current ratio.
    pub fn keeps(&self, trace_id: TraceId) -> bool {
        let ratio = self.ratio();
        if ratio >= 1.0 {
            return true;
        }
        let bytes = trace_id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        let bound = (ratio * (1u64 << 63) as f64) as u64;
        (u64::from_be_bytes(low) >> 1) < bound
    }
}

impl ShouldSample for RatioSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context.filter(|cx| cx.has_active_span());
        let keep = match parent {
            Some(cx) => cx.span().span_context().is_sampled(),
            None => self.keeps(trace_id),
        };
        SamplingResult {
            decision: if keep {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: match parent {
                Some(cx) => cx.span().span_context().trace_state().clone(),
                None => TraceState::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        TraceId::from_bytes(((7u128 << 64) | u128::from(low)).to_be_bytes())
    }

    #[test]
    fn the_ratio_bounds_the_trace_ids_kept_and_changes_in_place() {
        let s = RatioSampler::new(0.5);
        assert!(s.keeps(id(0)));
        assert!(s.keeps(id((1 << 63) - 2)));
        assert!(!s.keeps(id(1 << 63)));
        assert!(!s.keeps(id(u64::MAX)));
        let clone = s.clone();
        clone.set_ratio(0.0);
        assert!(!s.keeps(id(0)));
        s.set_ratio(7.0);
        assert_eq!(clone.ratio(), 1.0);
        assert!(s.keeps(id(u64::MAX)));
        s.set_ratio(f64::NAN);
        assert_eq!(s.ratio(), 0.0);
    }
}
