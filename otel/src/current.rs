//! Spans for code that knows no tracer (the filters): a request's context carries its
//! tracer, and a child of the current context is made from it while the request's future
//! runs in that context.

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

/// The tracer, as a value of a request's context.
#[derive(Clone)]
struct Carried(SdkTracer);

/// `cx` carrying `tracer`, so that [`child`] works inside it.
pub(crate) fn carry(cx: Context, tracer: &SdkTracer) -> Context {
    cx.with_value(Carried(tracer.clone()))
}

/// Runs `fut` with `cx` as the current context (when there is one).
pub async fn within<F: std::future::Future>(cx: Option<&Context>, fut: F) -> F::Output {
    match cx {
        Some(cx) => fut.with_context(cx.clone()).await,
        None => fut.await,
    }
}

/// A span that ends when dropped.
pub struct ChildSpan(Span);

impl ChildSpan {
    /// Sets an attribute.
    pub fn set(&mut self, kv: KeyValue) {
        self.0.set_attribute(kv);
    }

    /// Marks the span failed: `error.type` and an error status with `why`.
    pub fn fail(&mut self, why: &str) {
        self.0
            .set_attribute(KeyValue::new("error.type", why.to_string()));
        self.0.set_status(Status::error(why.to_string()));
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A child span of the current context, or `None` (at the cost of one thread-local read)
/// when the current context carries no tracer or its trace is not sampled: work outside
/// a traced request, or in a dropped trace, makes no span. `attrs` runs only for a span.
pub fn child(
    name: &'static str,
    kind: SpanKind,
    attrs: impl FnOnce() -> Vec<KeyValue>,
) -> Option<ChildSpan> {
    let cx = Context::current();
    let tracer = &cx.get::<Carried>()?.0;
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs())
        .start_with_context(tracer, &cx);
    Some(ChildSpan(span))
}
