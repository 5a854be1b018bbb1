//! W3C Trace Context (`traceparent`, `tracestate`) read from and written to HTTP headers,
//! through the OpenTelemetry SDK's `TraceContextPropagator`.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header names of W3C Trace Context Level 1 (§3.2 and §3.3).
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Collect(Vec<(&'static str, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        if let Some(name) = HEADERS.into_iter().find(|h| *h == key) {
            self.0.push((name, value));
        }
    }
}

/// The remote parent that `headers` carry, as a context to start a span in; an empty
/// context when `traceparent` is absent or invalid (W3C Trace Context §4.3: the receiver
/// then starts a new trace), so the caller's span becomes a root.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The `traceparent` (and `tracestate` when not empty) that make a callee's spans
/// children of `span`: the header name and value, in that order.
pub fn inject(span: &SpanContext) -> Vec<(&'static str, String)> {
    let cx = Context::new().with_remote_span_context(span.clone());
    let mut out = Collect(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// Writes [`inject`]'s headers into `headers`, replacing any there.
pub fn inject_into(span: &SpanContext, headers: &mut http::HeaderMap) {
    for (name, value) in inject(span) {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                http::HeaderValue::from_str(v).unwrap_or_else(|_| unreachable!()),
            );
        }
        h
    }

    #[test]
    fn a_valid_parent_round_trips_with_its_state() {
        let cx = extract(&headers(&[
            ("traceparent", PARENT),
            ("tracestate", "vendor=x"),
        ]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            inject(&sc),
            vec![
                ("traceparent", PARENT.to_string()),
                ("tracestate", "vendor=x".to_string())
            ]
        );
        let mut out = http::HeaderMap::new();
        inject_into(&sc, &mut out);
        assert_eq!(
            out.get("traceparent").map(|v| v.as_bytes()),
            Some(PARENT.as_bytes())
        );
    }

    #[test]
    fn an_invalid_traceparent_gives_no_parent() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let cx = extract(&headers(&[("traceparent", bad)]));
            assert!(!cx.has_active_span(), "{bad}");
        }
        assert!(!extract(&http::HeaderMap::new()).has_active_span());
    }
}
