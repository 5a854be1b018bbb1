//! The services' traces: a server span per API request (continuing the caller's W3C
//! trace context), a span per saga step, and the trace context on calls to other services.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gatehouse_otel::opentelemetry::context::FutureExt as _;
use gatehouse_otel::opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use gatehouse_otel::opentelemetry::{Context, KeyValue};
pub use gatehouse_otel::within;
use gatehouse_otel::{propagation, Tracing};

/// A service's tracer; `None` when no OTLP endpoint is configured (then nothing here
/// does any work).
pub type Tracer = Option<Arc<Tracing>>;

/// Starts `settings` as the tracer of service `name` (its `service.name`).
///
/// # Errors
/// What [`Tracing::start`] refuses (a bad endpoint URL, no thread).
pub fn start(
    settings: Option<&gatehouse_otel::Settings>,
    name: &str,
) -> Result<Tracer, gatehouse_otel::TracingError> {
    let Some(s) = settings else { return Ok(None) };
    let mut s = s.clone();
    s.service_name = name.to_string();
    Tracing::start(s).map(Some)
}

/// Middleware: the request's server span, named `{method} {route}` (OpenTelemetry HTTP
/// semantic conventions), child of the caller's `traceparent` when valid; the handler
/// runs with it as the current context, so its calls and saga steps are its children.
pub async fn server_span(State(tracer): State<Tracer>, req: Request, next: Next) -> Response {
    let Some(t) = tracer else {
        return next.run(req).await;
    };
    let parent = propagation::extract(req.headers());
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.clone(),
    };
    let mut attrs = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.path", req.uri().path().to_string()),
    ];
    if let Some(r) = route {
        attrs.push(KeyValue::new("http.route", r));
    }
    let tracer = t.tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attrs)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    let resp = next.run(req).with_context(cx.clone()).await;
    let status = resp.status().as_u16();
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    resp
}

/// Adds the current span's `traceparent` (and `tracestate`) to an outgoing call, so the
/// callee's spans join the trace; nothing without a current span.
pub fn outgoing(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let cx = Context::current();
    if !cx.has_active_span() {
        return rb;
    }
    let mut rb = rb;
    for (name, value) in propagation::inject(cx.span().span_context()) {
        rb = rb.header(name, value);
    }
    rb
}

/// A child span of the current context (an internal span: a saga step), as the context
/// to run the step in; `None` without a tracer.
pub fn child(tracer: &Tracer, name: String, attrs: Vec<KeyValue>) -> Option<Context> {
    let t = tracer.as_ref()?;
    let parent = Context::current();
    let span = t
        .tracer()
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attrs)
        .start_with_context(t.tracer(), &parent);
    Some(parent.with_span(span))
}

/// Ends a span made by [`child`] with its outcome; an error status when `failed`.
pub fn end(cx: Option<Context>, outcome: &str, failed: bool) {
    let Some(cx) = cx else { return };
    let span = cx.span();
    span.set_attribute(KeyValue::new("gatehouse.outcome", outcome.to_string()));
    if failed {
        span.set_status(Status::error(outcome.to_string()));
    }
    span.end();
}
