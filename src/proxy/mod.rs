//! The pingora `ProxyHttp` implementation: the only code that names pingora's phases.
//! Each phase is a few lines that delegate; read top to bottom it is the request's path:
//!
//! ```text
//! request_parse_error      a header the parser refused (no phase ran): the  respond.rs
//!                          same renderer, access log and metric
//! new_ctx                  pin the config snapshot                         ctx.rs
//! early_request_filter     pipelining per listener                         edge.rs
//! request_filter           request id, ACME HTTP-01 answer, redirect_https, edge.rs
//!                          edge checks (Host, limits, hop-by-hop), route,   request.rs
//!                          body limit, body read, filter chain
//! request_body_filter      body limit while the body streams               request.rs
//! request_trailer_filter   the request's trailers through the filters       request.rs
//! proxy_upstream_filter    first try's admission and endpoint: a refusal   resilience.rs, peer.rs
//!                          here keeps the client's connection
//! upstream_peer            backoff, breaker, bulkhead; pick an endpoint     resilience.rs, peer.rs
//! fail_to_connect          connect failed: count it, maybe retry elsewhere  resilience.rs
//! error_while_proxy        a try failed after connecting: count, retry      resilience.rs
//! upstream_request_filter  rewrite path, forwarding headers, hop-by-hop     request.rs, headers.rs
//! upstream_response_filter the try's outcome (counted at the body's end: a  resilience.rs
//!                          cut body is `truncated`); retry on a listed status
//! response_filter          request id, response filters, body transforms    response.rs
//! fail_to_proxy            the gateway's answer for a refusal or an error   refusal.rs, respond.rs
//! logging                  metrics, the access log, the request's spans     observe.rs, access_log.rs,
//!                                                                           trace.rs
//! ```

pub mod access_log;
pub mod client_addr;
pub mod ctx;
pub mod edge;
pub mod headers;
pub mod listener;
pub mod observe;
pub mod peer;
pub mod proxy_protocol;
pub mod refusal;
pub mod request;
pub mod resilience;
pub mod respond;
pub mod response;
pub mod tls;
pub mod trace;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::state::State;
use crate::telemetry::InflightGuard;
pub use ctx::RequestCtx;

/// The gateway's proxy logic for one listener, shared by its requests.
pub struct Gateway {
    state: Arc<State>,
    edge: edge::EdgeLimits,
}

impl Gateway {
    /// A proxy over the shared state with a listener's request limits.
    pub fn new(state: Arc<State>, edge: edge::EdgeLimits) -> Self {
        Self { state, edge }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        crate::memory::note_request();
        let mut ctx = RequestCtx::new(self.state.current());
        ctx.inflight = Some(InflightGuard::new(&self.state.telemetry.metrics.inflight));
        ctx
    }

    /// pingora's built-in compression module stays off: the `compression` filter owns it.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // pingora carries the flag across the connection's later requests.
        session
            .as_mut()
            .set_pipelining_enabled(self.edge.pipelining);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        edge::close_if_draining(session, &self.state.draining);
        request::filter(session, ctx, &self.state, &self.edge).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request::body_chunk(session, ctx, body.as_ref(), end_of_stream)
    }

    /// The request's trailers, before they follow its body upstream (vendor patch 15).
    async fn request_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request::trailers(session.req_header_mut(), trailers, ctx);
        Ok(())
    }

    /// The first try's admission runs here, not in `upstream_peer`: a refusal written here
    /// keeps the client's connection (see `peer::first_try`).
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        peer::first_try(&self.state.telemetry, session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_phase = true;
        match ctx.next_peer.take() {
            Some(peer) => Ok(peer),
            None => peer::next_try(&self.state.telemetry, ctx).await,
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let replay = resilience::Replay::of(session);
        resilience::on_connect_error(&self.state.telemetry, ctx, &replay, e)
    }

    /// Replaces pingora's default (idempotent methods on reused connections only) with
    /// the route's retry policy and budget; see `resilience.rs`.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let (tel, replay) = (&self.state.telemetry, resilience::Replay::of(session));
        resilience::on_proxy_error(tel, ctx, &mut e, &replay, client_reused);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request::to_upstream(session, upstream_request, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resilience::on_upstream_response(&self.state.telemetry, session, ctx, upstream_response)?;
        headers::strip_hop_by_hop_response(upstream_response);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            resilience::end_try(&self.state.telemetry, ctx, None);
            tunnel::closed(ctx, tunnel::TunnelEnd::UpstreamClose);
        }
        Ok(None)
    }

    /// A chunked response's trailers end the upstream's body (vendored pingora patch 11).
    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resilience::end_try(&self.state.telemetry, ctx, None);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::downstream_version(session, resp);
        tunnel::on_response(session, ctx, resp.status.as_u16());
        edge::close_if_draining(session, &self.state.draining);
        response::to_downstream(session.req_header(), resp, ctx).await
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        response::transform_body(ctx, body, end_of_stream);
        Ok(None)
    }

    /// The response's trailers, after the body transforms saw its end (vendor patch 11).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        response::trailers(ctx, trailers);
        Ok(None)
    }

    /// A request pingora's parser refused (vendor patch 5): one renderer, access log, metric.
    async fn request_parse_error(
        &self,
        e: &Error,
        status: u16,
        client: Option<&pingora_core::protocols::l4::socket::SocketAddr>,
    ) -> Option<(ResponseHeader, Bytes)> {
        let peer = client.and_then(|c| c.as_inet()).map(|a| a.ip());
        respond::unparsed(&self.state.telemetry, self.state.current(), e, status, peer)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        respond::fail(session, e, ctx).await
    }

    /// Our own `request failed` line (with request id and route) replaces pingora's.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Our own `upstream try failed; retrying` line (with request id, route and endpoint)
    /// replaces pingora's `Fail to proxy` warning for a try about to be retried: one line
    /// per failed try.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        resilience::log_retry(ctx, error, context)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        resilience::end_request(&self.state.telemetry, ctx, e);
        observe::finish(&self.state.telemetry, session, ctx, e);
    }
}
