//! The request's trace: its server span, a client span per upstream try, and the W3C
//! Trace Context read from the client and written to the upstream (span names and
//! attributes after the OpenTelemetry HTTP semantic conventions).

use gatehouse_otel::opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use gatehouse_otel::opentelemetry::{Context, KeyValue};
use gatehouse_otel::{propagation, Tracing};
use pingora_core::Result;
use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use crate::resilience::Outcome;
use crate::upstream::Endpoint;

/// One request's spans. Present only when `tracing` is configured; a trace the sampler
/// dropped still has ids (they are propagated with the sampled flag off) but records
/// nothing.
pub struct RequestTrace {
    tracing: std::sync::Arc<Tracing>,
    /// The incoming parent (if any) with the server span as its active span.
    server: Context,
    /// The trace id, 32 lowercase hex digits (W3C Trace Context §3.2.2.3).
    trace_id: String,
    /// The current try's client span, ended with the try's outcome.
    try_span: Option<gatehouse_otel::Span>,
    /// The request's method: the name of each try's span.
    method: http::Method,
}

impl RequestTrace {
    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }
}

/// Starts the server span of a request: a child of the client's `traceparent` when it is
/// valid (W3C Trace Context §4.3), else the root of a new trace.
pub fn start(
    tracing: Option<&std::sync::Arc<Tracing>>,
    req: &RequestHeader,
) -> Option<RequestTrace> {
    let tracing = tracing?;
    let parent = propagation::extract(&req.headers);
    let tracer = tracing.tracer();
    // The route is not known yet: the name becomes `{method} {http.route}` when it is.
    let span = tracer
        .span_builder(req.method.as_str().to_string())
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    let trace_id = span.span_context().trace_id().to_string();
    Some(RequestTrace {
        tracing: tracing.clone(),
        server: tracing.carry(parent.with_span(span)),
        trace_id,
        try_span: None,
        method: req.method.clone(),
    })
}

/// The context the request's filters run in (their I/O spans are children of the
/// server span), when the request is traced.
pub fn context(ctx: &RequestCtx) -> Option<Context> {
    ctx.trace.as_ref().map(|t| t.server.clone())
}

/// Starts the client span of a try to `ep` (`gatehouse.retry` 0 for the first try).
pub fn start_try(ctx: &mut RequestCtx, ep: &Endpoint) {
    let retry = i64::from(ctx.tries.saturating_sub(1));
    let Some(t) = ctx.trace.as_mut() else { return };
    let (tracer, method) = (t.tracing.tracer(), &t.method);
    let mut attrs = vec![
        KeyValue::new("http.request.method", method.as_str().to_string()),
        KeyValue::new("server.address", ep.addr.ip().to_string()),
        KeyValue::new("server.port", i64::from(ep.addr.port())),
        KeyValue::new("gatehouse.endpoint", ep.address.clone()),
        KeyValue::new("gatehouse.retry", retry),
    ];
    if retry > 0 {
        attrs.push(KeyValue::new("http.request.resend_count", retry));
    }
    let span = tracer
        .span_builder(method.as_str().to_string())
        .with_kind(SpanKind::Client)
        .with_attributes(attrs)
        .start_with_context(tracer, &t.server);
    if let Some(mut old) = t.try_span.replace(span) {
        old.end();
    }
}

/// Ends the current try's span with its outcome (`None`: the try ended without a verdict,
/// e.g. the client went away).
pub fn end_try(ctx: &mut RequestCtx, outcome: Option<&Outcome>) {
    let Some(mut span) = ctx.trace.as_mut().and_then(|t| t.try_span.take()) else {
        return;
    };
    let label = outcome.map_or("cancelled", |o| o.kind.label());
    span.set_attribute(KeyValue::new("gatehouse.outcome", label));
    if let Some(status) = outcome.and_then(|o| o.status) {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if outcome.is_some_and(|o| o.failure) {
        span.set_attribute(KeyValue::new("error.type", label));
        span.set_status(Status::error(label));
    }
    span.end();
}

/// Writes `traceparent` (and `tracestate`) for the upstream: the try's span is the
/// callee's parent. A client's copies are replaced.
pub fn to_upstream(ctx: &RequestCtx, req: &mut RequestHeader) -> Result<()> {
    let Some(t) = &ctx.trace else { return Ok(()) };
    let sc = match &t.try_span {
        Some(s) => s.span_context().clone(),
        None => t.server.span().span_context().clone(),
    };
    req.remove_header("tracestate");
    for (name, value) in propagation::inject(&sc) {
        req.insert_header(name, value)?;
    }
    Ok(())
}

/// What the finished request's server span records.
pub struct Finished<'a> {
    /// Status sent (499: none was).
    pub status: u16,
    /// The gateway's error code, if any.
    pub error: &'a str,
    /// The request as received.
    pub req: &'a RequestHeader,
}

/// Ends the request's spans: a try still open, then the server span with the request's
/// attributes; a 5xx marks it failed (server spans leave 4xx unset, per the semantic
/// conventions).
pub fn finish(ctx: &mut RequestCtx, done: &Finished<'_>) {
    end_try(ctx, None);
    let Some(t) = &ctx.trace else { return };
    let span = t.server.span();
    if !span.is_recording() {
        span.end();
        return;
    }
    let req = done.req;
    let mut attrs = vec![
        KeyValue::new("http.request.method", req.method.as_str().to_string()),
        KeyValue::new("url.path", ctx.path.clone()),
        KeyValue::new("url.scheme", if ctx.tls { "https" } else { "http" }),
        KeyValue::new("http.response.status_code", i64::from(done.status)),
        KeyValue::new("gatehouse.request_id", ctx.request_id.clone()),
    ];
    if let Some(q) = req.uri.query() {
        attrs.push(KeyValue::new("url.query", q.to_string()));
    }
    if let Some(ip) = ctx.client_ip {
        attrs.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(peer) = ctx.client.map(|c| c.peer) {
        attrs.push(KeyValue::new("network.peer.address", peer.to_string()));
    }
    if let Some(host) = ctx.host_header.as_ref().and_then(|h| h.to_str().ok()) {
        let (name, port) = split_host(host);
        attrs.push(KeyValue::new("server.address", name.to_string()));
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
    }
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    let method = req.method.as_str();
    if let Some(r) = &ctx.route {
        attrs.push(KeyValue::new("gatehouse.route", r.name.to_string()));
        attrs.push(KeyValue::new(
            "gatehouse.upstream",
            r.cluster.name().to_string(),
        ));
        if let Some(route) = &r.http_route {
            attrs.push(KeyValue::new("http.route", route.to_string()));
            span.update_name(format!("{method} {route}"));
        }
    }
    if ctx.tries > 0 {
        attrs.push(KeyValue::new("gatehouse.tries", i64::from(ctx.tries)));
    }
    if !done.error.is_empty() {
        attrs.push(KeyValue::new("gatehouse.error", done.error.to_string()));
    }
    if done.status >= 500 {
        let kind = if done.error.is_empty() {
            done.status.to_string()
        } else {
            done.error.to_string()
        };
        attrs.push(KeyValue::new("error.type", kind.clone()));
        span.set_status(Status::error(kind));
    }
    span.set_attributes(attrs);
    span.end();
}

/// `host[:port]` or `[v6]:port` split into the host and its port.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("api.example.com"), ("api.example.com", None));
        assert_eq!(
            split_host("api.example.com:8443"),
            ("api.example.com", Some(8443))
        );
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("h:x"), ("h:x", None));
    }
}
