//! Choosing the peer of one try: an endpoint by smooth weighted round-robin among those
//! that take traffic (retries prefer others), dialed with the upstream's lowered timeouts
//! cut to what is left of the total deadline.

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::ctx::{EndpointInflight, RequestCtx};
use super::refusal::Refusal;
use super::{edge, resilience, respond};
use crate::clock::mono_ms;
use crate::state::Route;
use crate::telemetry::Telemetry;
use crate::upstream::Protocol;

/// Requests one pooled HTTP/2 connection carries at once before another is opened (nginx's
/// `grpc_pass` and Envoy keep one connection with many streams; the upstream's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` still applies).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Admission and endpoint choice of one try: backoff of a retry, breaker, bulkhead
/// slot (cheap refusals before the call), then an endpoint with its timeouts. The
/// first try runs it in `proxy_upstream_filter`, a retry in `upstream_peer`.
pub async fn next_try(tel: &Telemetry, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some(route) = ctx.route.clone() else {
        return Err(Error::explain(ErrorType::InternalError, "no route"));
    };
    resilience::before_try(tel, ctx).await?;
    choose(ctx, &route)
}

/// `proxy_upstream_filter`: the first try's admission and endpoint, kept for
/// `upstream_peer` (`Ok(true)`: proxy on). It runs here rather than in `upstream_peer`
/// because pingora closes the client's connection after any error from `upstream_peer`,
/// but keeps it after a response written here: a refusal that never reached an upstream
/// keeps the connection (the request body, if small, is drained). `Ok(false)`: answered.
pub async fn first_try(
    tel: &Telemetry,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    match next_try(tel, ctx).await {
        Ok(peer) => {
            ctx.next_peer = Some(peer);
            Ok(true)
        }
        Err(e) => {
            ctx.upstream_phase = false;
            edge::discard_small_body(session).await;
            respond::fail(session, &e, ctx).await;
            Ok(false)
        }
    }
}

/// The peer of the next try; a [`Refusal`] (`NoHealthyEndpoint`, `DeadlineSpent`) as the
/// error's cause when there is none.
pub fn choose(ctx: &mut RequestCtx, route: &Route) -> Result<Box<HttpPeer>> {
    let upstream = &route.cluster.upstream;
    let Some(ep) = upstream.pick(&ctx.tried, mono_ms()) else {
        let r = Refusal::NoHealthyEndpoint {
            upstream: upstream.name.clone(),
        };
        return Err(r.into_error(format!(
            "upstream {} has no healthy endpoint",
            upstream.name
        )));
    };
    ctx.tries += 1;
    ctx.tried.push(ep.clone());
    ctx.endpoint = Some(ep.clone());
    ctx.try_outcome_recorded = false;
    let inflight = ep
        .inflight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    ctx.endpoint_inflight = Some(EndpointInflight(ep.clone()));
    super::trace::start_try(ctx, &ep);

    let s = &upstream.peer;
    let mut peer = match &s.tls {
        Some(tls) => tls.peer(ep.addr, &ep.address),
        None => HttpPeer::new(ep.addr, false, String::new()),
    };
    peer.options.connection_timeout = Some(s.connect);
    peer.options.read_timeout = Some(s.read);
    peer.options.write_timeout = Some(s.write);
    peer.options.idle_timeout = Some(upstream.pool_idle(inflight));
    // A tunnel after `101` waits for the upstream this long instead (vendor patch 13).
    peer.options.upgraded_read_timeout = Some(route.tunnel_idle_timeout);
    set_protocol(&mut peer, s.protocol);
    if let Some(total) = s.total {
        let left = total.saturating_sub(ctx.started.elapsed());
        if left.is_zero() {
            let r = Refusal::DeadlineSpent {
                upstream: upstream.name.clone(),
                retrying: false,
            };
            return Err(r.into_error("total deadline spent"));
        }
        peer.options.read_timeout = Some(s.read.min(left));
        peer.options.connection_timeout = Some(s.connect.min(left));
    }
    Ok(Box::new(peer))
}

/// The ALPN of the try's connection. pingora speaks HTTP/2 when the lowest version offered
/// is 2: negotiated over TLS (`h2`; an upstream that selects no ALPN protocol is spoken to
/// in HTTP/1.1, pingora's `connectors/http/v2.rs`), or by prior knowledge on a clear-text connection
/// (`h2c`, `connectors/http/v2.rs`), with up to [`H2_STREAMS_PER_CONNECTION`] requests
/// multiplexed on one pooled connection.
fn set_protocol(peer: &mut HttpPeer, protocol: Protocol) {
    match protocol {
        Protocol::Http1 => peer.options.alpn = ALPN::H1,
        Protocol::H2 | Protocol::H2c => {
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
    }
}
