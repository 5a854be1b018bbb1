//! The end of a request: its metrics (by route, status class and who made the status)
//! and its access-log line.

use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::telemetry::{status_class, RouteMetrics, Telemetry, UNROUTED};

/// Counts the finished request and writes its access-log line (when the snapshot's
/// `access_log` is on).
pub fn finish(tel: &Telemetry, session: &Session, ctx: &RequestCtx) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.gateway_error.map(|g| g.status))
        .unwrap_or(0);
    let source = if ctx.gateway_error.is_some() || ctx.upstream_status.is_none() {
        "gateway"
    } else {
        "upstream"
    };
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
    if !ctx.snap.access_log {
        return;
    }
    let req = session.req_header();
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        method = %req.method,
        path = %ctx.path,
        host = ctx.host_header.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        route = ctx.route_name(),
        upstream = ctx.upstream_name(),
        endpoint = ctx.endpoint.as_ref().map_or("", |e| e.address.as_str()),
        status,
        source,
        error = ctx.gateway_error.map(|g| g.code).or(ctx.body_error).unwrap_or(""),
        tries = ctx.tries,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        filter_ms = ctx.filter_time.as_secs_f64() * 1000.0,
        bytes_in = session.body_bytes_read(),
        bytes_out = session.body_bytes_sent(),
        client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        peer_ip = %ctx.client.map(|c| c.peer.to_string()).unwrap_or_default(),
    );
}
