//! The end of a request: its metrics (by route, status class and who made the status)
//! and its access-log line.

use std::time::Duration;

use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::telemetry::{status_class, RouteMetrics, Telemetry, UNROUTED};

/// The status recorded for a request that ended with no answer written: the client went
/// away (or stopped sending) first, the only way a request ends without one (an upstream
/// or gateway failure is answered). nginx's 499 "client closed request": a 4xx, so that
/// clients giving up are not counted as the gateway's 5xx.
pub const CLIENT_CLOSED: u16 = 499;

/// The access log's `error` for [`CLIENT_CLOSED`].
const CLIENT_CLOSED_CODE: &str = "client_closed";

/// Counts the finished request and writes its access-log line (when the snapshot's
/// `access_log` is on).
pub fn finish(tel: &Telemetry, session: &Session, ctx: &RequestCtx) {
    let answered = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.gateway_error.map(|g| g.status));
    let status = answered.unwrap_or(CLIENT_CLOSED);
    let source = if ctx.gateway_error.is_some() || ctx.upstream_status.is_none() {
        "gateway"
    } else {
        "upstream"
    };
    count(tel, ctx, status, source);
    if !ctx.snap.access_log {
        return;
    }
    let elapsed = ctx.started.elapsed();
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
        error = ctx
            .gateway_error
            .map(|g| g.code)
            .or(ctx.body_error)
            .or(answered.is_none().then_some(CLIENT_CLOSED_CODE))
            .unwrap_or(""),
        tries = ctx.tries,
        duration_ms = millis(elapsed),
        filter_ms = millis(ctx.filter_time),
        bytes_in = session.body_bytes_read(),
        bytes_out = session.body_bytes_sent(),
        client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        peer_ip = %ctx.client.map(|c| c.peer.to_string()).unwrap_or_default(),
    );
}

/// A request pingora's parser refused before any phase (see `respond::unparsed`): the
/// same metric (unrouted, `source="gateway"`) and access-log line, with what is known (no
/// method or path: they did not parse) and the parser's error.
pub fn unparsed(tel: &Telemetry, ctx: &RequestCtx, e: &pingora_core::Error) {
    let status = ctx.gateway_error.map_or(400, |g| g.status);
    count(tel, ctx, status, "gateway");
    if !ctx.snap.access_log {
        return;
    }
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        method = "",
        path = "",
        host = "",
        route = "",
        upstream = "",
        endpoint = "",
        status,
        source = "gateway",
        error = ctx.gateway_error.map_or("", |g| g.code),
        detail = %e,
        tries = 0,
        duration_ms = 0.0,
        filter_ms = 0.0,
        bytes_in = 0,
        bytes_out = 0,
        client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        peer_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
    );
}

/// `d` in milliseconds to the microsecond (at most 3 decimals): `as_secs_f64() * 1000.0`
/// printed float noise (`23.343404000000003`); a whole number of microseconds divided by
/// 1000 is the double nearest that decimal, which prints as it.
fn millis(d: Duration) -> f64 {
    // u64 microseconds: 584 000 years; f64 is exact below 2^53 µs (285 years).
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_have_at_most_three_decimals() {
        let d = Duration::from_nanos(23_343_404_123);
        assert_eq!(millis(d).to_string(), "23343.404");
        assert_eq!(
            millis(Duration::from_nanos(23_343_404)).to_string(),
            "23.343"
        );
        assert_eq!(millis(Duration::from_micros(100)).to_string(), "0.1");
        assert_eq!(
            serde_json::json!(millis(Duration::from_nanos(1_999))).to_string(),
            "0.001"
        );
        assert_eq!(millis(Duration::ZERO), 0.0);
    }
}
