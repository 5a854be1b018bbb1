//! The end of a request: its metrics (by route, status class and who made the status),
//! its access-log line and the end of its spans.

use pingora_proxy::Session;

use super::access_log::{self, AccessRecord};
use super::ctx::RequestCtx;
use crate::telemetry::{status_class, RouteMetrics, Telemetry, UNROUTED};

/// The status recorded for a request that ended with no answer written: the client went
/// away (or stopped sending) first, the only way a request ends without one (an upstream
/// or gateway failure is answered). nginx's 499 "client closed request": a 4xx, so that
/// clients giving up are not counted as the gateway's 5xx.
pub const CLIENT_CLOSED: u16 = 499;

/// The access log's `error` for [`CLIENT_CLOSED`].
const CLIENT_CLOSED_CODE: &str = "client_closed";

/// Counts the finished request and writes its access-log line (when the snapshot has an
/// access log).
pub fn finish(
    tel: &Telemetry,
    session: &Session,
    ctx: &mut RequestCtx,
    e: Option<&pingora_core::Error>,
) {
    let answered = match ctx.gateway_error {
        // A gRPC refusal went out as HTTP 200: it counts as the status it stands for.
        Some(g) if g.grpc_status.is_some() => Some(g.status),
        _ => session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.gateway_error.map(|g| g.status)),
    };
    let status = answered.unwrap_or(CLIENT_CLOSED);
    let source = if ctx.gateway_error.is_some() || ctx.upstream_status.is_none() {
        "gateway"
    } else {
        "upstream"
    };
    let error = error_code(ctx, answered.is_none());
    // The line first, then the metric: whoever sees a request counted finds its line.
    if let Some(cfg) = &ctx.snap.access_log {
        write_line(cfg, session, ctx, status, source, error, e);
    }
    count(tel, ctx, status, source);
    let req = session.req_header();
    super::trace::finish(ctx, &super::trace::Finished { status, error, req });
}

/// The access log's `error`: the gateway's code, a failure of the upstream's body, or
/// `client_closed` for a request left unanswered.
fn error_code(ctx: &RequestCtx, unanswered: bool) -> &'static str {
    ctx.gateway_error
        .map(|g| g.code)
        .or(ctx.body_error)
        .or(unanswered.then_some(CLIENT_CLOSED_CODE))
        .unwrap_or("")
}

/// Writes the access-log line of a finished request.
fn write_line(
    cfg: &crate::config::model::AccessLogConfig,
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    source: &str,
    error: &str,
    e: Option<&pingora_core::Error>,
) {
    let req = session.req_header();
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let rec = AccessRecord {
        request_id: &ctx.request_id,
        trace_id: ctx.trace_id(),
        method: req.method.as_str(),
        path: &ctx.path,
        target: req.uri.path_and_query().map_or("", |p| p.as_str()),
        query: req.uri.query().unwrap_or(""),
        protocol: protocol(req.version),
        host: ctx
            .host_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        route: ctx.route_name(),
        upstream: ctx.upstream_name(),
        endpoint: ctx.endpoint.as_ref().map_or("", |e| e.address.as_str()),
        status,
        source,
        error,
        detail: None,
        tries: ctx.tries,
        duration: ctx.started.elapsed(),
        filter_time: ctx.filter_time,
        bytes_in: session.body_bytes_read(),
        bytes_out: session.body_bytes_sent(),
        client_ip: ctx.client_ip,
        peer_ip: ctx.client.map(|c| c.peer),
        user_agent: header(http::header::USER_AGENT),
        referer: header(http::header::REFERER),
        tunnel: super::tunnel::finish(ctx, e),
    };
    access_log::write(cfg, &rec);
}

/// A request pingora's parser refused before any phase (see `respond::unparsed`): the
/// same metric (unrouted, `source="gateway"`) and access-log line, with what is known (no
/// method or path: they did not parse) and the parser's error as `detail`.
pub fn unparsed(tel: &Telemetry, ctx: &RequestCtx, e: &pingora_core::Error) {
    let status = ctx.gateway_error.map_or(400, |g| g.status);
    if let Some(cfg) = &ctx.snap.access_log {
        unparsed_line(cfg, ctx, status, e);
    }
    count(tel, ctx, status, "gateway");
}

fn unparsed_line(
    cfg: &crate::config::model::AccessLogConfig,
    ctx: &RequestCtx,
    status: u16,
    e: &pingora_core::Error,
) {
    let rec = AccessRecord {
        request_id: &ctx.request_id,
        status,
        source: "gateway",
        error: ctx.gateway_error.map_or("", |g| g.code),
        detail: Some(e.to_string()),
        client_ip: ctx.client_ip,
        peer_ip: ctx.client_ip,
        ..Default::default()
    };
    access_log::write(cfg, &rec);
}

/// The request line's protocol as written in it.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The request metrics of a finished request.
fn count(tel: &Telemetry, ctx: &RequestCtx, status: u16, source: &str) {
    let m = &tel.metrics;
    let elapsed = ctx.started.elapsed();
    match &ctx.route {
        Some(r) => r
            .metrics
            .get_or_init(|| RouteMetrics::new(m, &r.name, r.cluster.name()))
            .observe(status, source == "upstream", elapsed.as_secs_f64()),
        None => {
            m.requests
                .with_label_values(&[UNROUTED, UNROUTED, status_class(status), source])
                .inc();
            m.request_duration
                .with_label_values(&[UNROUTED])
                .observe(elapsed.as_secs_f64());
        }
    }
    m.request_duration_all.observe(elapsed.as_secs_f64());
    if status >= 500 {
        m.errors_all.inc();
    }
}
