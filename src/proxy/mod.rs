//! The pingora `ProxyHttp` implementation: the only code that names pingora's phases.
//! Each phase is a few lines that delegate; read top to bottom it is the request's path:
//!
//! ```text
//! new_ctx                 pin the config snapshot
//! early_request_filter    pipelining per listener
//! request_filter          request id, edge checks (Host, limits, hop-by-hop: edge.rs),
//!                         path normalization, route, body limit, body read, filters
//! proxy_upstream_filter   first try's breaker, bulkhead and endpoint: a refusal here keeps
//!                         the client's connection
//! upstream_peer           backoff, breaker, bulkhead, then pick an endpoint (SWRR), timeouts
//! fail_to_connect         connect failed: count it, maybe retry elsewhere
//! error_while_proxy       a try failed after connecting: count it, retry per policy + budget
//! upstream_request_filter rewrite path, forwarding headers, strip hop-by-hop
//! upstream_response_filter count the try's outcome; retry on a listed status
//! response_filter         request id, filter response headers, body transforms
//! fail_to_proxy           the error response (see respond.rs)
//! logging                 metrics and the access log
//! ```

pub mod client_addr;
pub mod ctx;
pub mod edge;
pub mod headers;
pub mod listener;
pub mod proxy_protocol;
pub mod respond;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_filters::{FilterOutcome, RequestCx, ResponseCx};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::model::EncodedSlashes;
use crate::metrics::InflightGuard;
use crate::router::{apply_encoded_slashes, normalize_path_with, rewrite_path, RouteRequest};
use crate::state::State;
use crate::upstream::now_ms;
pub use ctx::RequestCtx;
use ctx::{EndpointInflight, GatewayError};

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

/// The request's host for routing: lowercase, without port or trailing dot. An
/// absolute-form target's authority is already its Host (`edge::absolute_to_origin`).
fn host_of(req: &RequestHeader) -> Cow<'_, str> {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &raw[..i]
        }
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new(self.state.current());
        ctx.inflight = Some(InflightGuard::new(&self.state.metrics.inflight));
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
        ctx.request_id = headers::request_id(session.req_header());
        ctx.client = client_addr::resolve(session, &ctx.snap);
        ctx.client_ip = ctx.client.map(|c| c.client);
        if self
            .state
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            session.set_keepalive(None);
        }

        if let Err(r) = edge::check_request(session.req_header(), &self.edge) {
            respond::send_error(session, ctx, r.status, r.code, r.message, &[]).await;
            return Ok(true);
        }
        edge::absolute_to_origin(session.req_header_mut());
        edge::strip_client_nominated(session.req_header_mut());

        // `%2F` is kept encoded for routing; the matched route's `encoded_slashes` decides.
        ctx.path = match normalize_path_with(session.req_header().uri.path().as_bytes(), true) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(request_id = %ctx.request_id, reason = %e, "refused path");
                respond::send_error(
                    session,
                    ctx,
                    400,
                    "bad_path",
                    &format!("the request path is not acceptable: {e}"),
                    &[],
                )
                .await;
                return Ok(true);
            }
        };
        let host = host_of(session.req_header());
        ctx.host_header = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned();

        let snap = ctx.snap.clone();
        let route = {
            let req = session.req_header();
            snap.router
                .route_match(&RouteRequest {
                    host: &host,
                    path: &ctx.path,
                    method: &req.method,
                    headers: &req.headers,
                })
                .map(|m| {
                    ctx.path_params = m
                        .params
                        .into_iter()
                        .map(|(n, v)| (n, v.to_string()))
                        .collect();
                    m.value.clone()
                })
        };
        let slashes = route
            .as_ref()
            .map_or(EncodedSlashes::Reject, |r| r.encoded_slashes);
        match apply_encoded_slashes(&ctx.path, slashes) {
            Ok(None) => {}
            Ok(Some(decoded)) => {
                for (_, v) in &mut ctx.path_params {
                    *v = v.replace("%2F", "/");
                }
                ctx.path = decoded;
            }
            Err(e) => {
                respond::send_error(
                    session,
                    ctx,
                    400,
                    "bad_path",
                    &format!("the request path is not acceptable: {e}"),
                    &[],
                )
                .await;
                return Ok(true);
            }
        }
        let Some(route) = route else {
            respond::send_error(
                session,
                ctx,
                404,
                "no_route",
                respond::message_for("no_route"),
                &[],
            )
            .await;
            return Ok(true);
        };
        ctx.route = Some(route.clone());

        if let Some(len) = headers::content_length(session.req_header()) {
            if len > route.max_body_bytes {
                respond::send_error(
                    session,
                    ctx,
                    413,
                    "body_too_large",
                    respond::message_for("body_too_large"),
                    &[],
                )
                .await;
                return Ok(true);
            }
        }

        // Headers that only the gateway may set are never taken from the client.
        headers::remove_owned(session.req_header_mut(), &snap.owned_headers);

        // Filters that do not read the body run first, so that a refusal they make (a
        // missing token, a client's rate limit) is the answer to `Expect: 100-continue`
        // instead of `100 Continue` (RFC 9110 §10.1.1); filter order is kept, so the split
        // is at the first filter that reads the body.
        let split = route
            .filters
            .iter()
            .position(|f| f.body_prefix_limit().is_some())
            .unwrap_or(route.filters.len());
        let (early, late) = route.filters.split_at(split);
        let mut claims = None;
        if run_request_filters(session, ctx, &route.name, early, None, &mut claims).await {
            return Ok(true);
        }
        let prefix = if late.is_empty() {
            0
        } else {
            route.body_prefix
        };
        let body_prefix = match edge::read_body(session, prefix, route.buffer_body).await {
            Ok(b) => b,
            Err(r) => {
                respond::send_error(session, ctx, r.status, r.code, r.message, &[]).await;
                return Ok(true);
            }
        };
        let body = body_prefix.as_deref();
        Ok(run_request_filters(session, ctx, &route.name, late, body, &mut claims).await)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(route)) = (body.as_ref(), ctx.route.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > route.max_body_bytes {
                ctx.gateway_error = Some(GatewayError {
                    status: 413,
                    code: "body_too_large",
                });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds the route's limit",
                ));
            }
        }
        Ok(())
    }

    /// The first try's admission (breaker, bulkhead, endpoint) runs here rather than in
    /// `upstream_peer`: pingora closes the client's connection after any error from
    /// `upstream_peer`, but keeps it after a response written here. A refusal that never
    /// reached an upstream keeps the connection (the request body, if small, is drained).
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        match self.prepare_try(ctx).await {
            Ok(peer) => {
                ctx.next_peer = Some(peer);
                Ok(true)
            }
            Err(e) => {
                ctx.upstream_phase = false;
                edge::discard_small_body(session).await;
                self.fail_to_proxy(session, &e, ctx).await;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_phase = true;
        match ctx.next_peer.take() {
            Some(peer) => Ok(peer),
            None => self.prepare_try(ctx).await,
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let truncated = session.as_ref().retry_buffer_truncated();
        crate::resilience::hooks::on_connect_error(
            &self.state,
            ctx,
            session.req_header(),
            truncated,
            e,
        )
    }

    /// Replaces pingora's default (idempotent methods on reused connections only) with
    /// the route's retry policy and budget; see `resilience::hooks`.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let truncated = session.as_ref().retry_buffer_truncated();
        let written = session.response_written().is_some();
        crate::resilience::hooks::on_proxy_error(
            &self.state,
            ctx,
            &mut e,
            session.req_header(),
            truncated,
            written,
            client_reused,
        );
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        // `{name}` in a rewrite takes the route template's captured parameter.
        let rewrite = route.rewrite_path.as_deref().map(|r| {
            if ctx.path_params.is_empty() {
                Cow::Borrowed(r)
            } else {
                Cow::Owned(crate::router::template::expand(r, &ctx.path_params))
            }
        });
        let path = rewrite_path(
            &ctx.path,
            route.strip_prefix.as_deref(),
            route.add_prefix.as_deref(),
            rewrite.as_deref(),
        );
        // Most requests go upstream with the path they came with, in origin form: keep
        // the parsed URI.
        let uri = &upstream_request.uri;
        if path != uri.path() || uri.scheme().is_some() || uri.authority().is_some() {
            let uri = match upstream_request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri: http::Uri = uri
                .parse()
                .map_err(|_| Error::explain(ErrorType::InternalError, "rewritten uri invalid"))?;
            upstream_request.set_uri(uri);
        }
        headers::strip_hop_by_hop_request(upstream_request, session.is_upgrade_req());
        let endpoint = ctx.endpoint.as_ref().map(|e| e.address.as_str());
        headers::set_forwarding(
            upstream_request,
            ctx,
            &route.upstream.config.host_header,
            endpoint,
        )?;
        crate::resilience::hooks::deadline_header(ctx, upstream_request)?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        let outcome = crate::resilience::hooks::response_outcome(ctx, status);
        self.record_try(ctx, outcome);
        let (truncated, written) = (
            session.as_ref().retry_buffer_truncated(),
            session.response_written().is_some(),
        );
        crate::resilience::hooks::retry_on_status(
            &self.state,
            ctx,
            status,
            session.req_header(),
            truncated,
            written,
        )?;
        headers::strip_hop_by_hop_response(upstream_response);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::downstream_version(session, resp);
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        for (n, v) in &ctx.response_headers {
            resp.append_header(n.clone(), v.clone())?;
        }
        if self
            .state
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            session.set_keepalive(None);
        }
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let cx = ResponseCx {
            route: &route.name,
            request: session.req_header(),
        };
        for f in &route.filters {
            match f.on_response(resp, &cx) {
                Ok(Some(t)) => ctx.body_transforms.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "response filter failed")
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        for t in &mut ctx.body_transforms {
            *body = t.transform(body.take(), end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let classified = ctx
            .gateway_error
            .filter(|g| matches!(e.etype(), ErrorType::HTTPStatus(s) if *s == g.status))
            .or_else(|| respond::classify(e));
        let Some(g) = classified else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_some() {
            // Headers already went out: all we can do is cut the stream.
            return FailToProxy {
                error_code: g.status,
                can_reuse_downstream: false,
            };
        }
        // Fast refusals (breaker open, bulkhead full, no healthy endpoint) come from a state
        // change that is logged once; one warning per refused request would flood the log in
        // an outage (the access log still records each request).
        if matches!(
            g.code,
            "circuit_open" | "bulkhead_full" | "no_healthy_endpoint"
        ) {
            tracing::debug!(request_id = %ctx.request_id, route = ctx.route_name(), upstream = ctx.upstream_name(), code = g.code, error = %e, "request refused");
        } else {
            tracing::warn!(request_id = %ctx.request_id, route = ctx.route_name(), upstream = ctx.upstream_name(), code = g.code, error = %e, "request failed");
        }
        // pingora closes the downstream connection after any error once it asked for a
        // peer (even when none was chosen: proxy_to_upstream ignores `can_reuse_downstream`)
        // and when the body was not read to its end; say so, so clients don't reuse it.
        let reusable = !ctx.upstream_phase && session.as_mut().is_body_done();
        if !reusable {
            session.set_keepalive(None);
        }
        let msg = ctx
            .resilience
            .message()
            .map_or_else(|| respond::message_for(g.code).to_string(), str::to_string);
        respond::send_error(session, ctx, g.status, g.code, &msg, &[]).await;
        FailToProxy {
            error_code: g.status,
            can_reuse_downstream: reusable,
        }
    }

    /// Our own `request failed` line (with request id and route) replaces pingora's.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(err), false) = (e, ctx.try_outcome_recorded) {
            if ctx.endpoint.is_some() && ctx.upstream_status.is_none() {
                self.record_try(ctx, crate::resilience::Outcome::of_error(err));
            }
        }
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
        let m = &self.state.metrics;
        let elapsed = ctx.started.elapsed();
        match &ctx.route {
            Some(r) => r
                .metrics
                .get_or_init(|| crate::metrics::RouteMetrics::new(m, &r.name, &r.upstream.name))
                .observe(status, source == "upstream", elapsed.as_secs_f64()),
            None => {
                m.requests
                    .with_label_values(&["", "", crate::metrics::status_class(status), source])
                    .inc();
                m.request_duration
                    .with_label_values(&[""])
                    .observe(elapsed.as_secs_f64());
            }
        }
        m.request_duration_all.observe(elapsed.as_secs_f64());
        if status >= 500 {
            m.errors_all.inc();
        }
        if ctx.snap.loaded.config.access_log.enabled {
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
                error = ctx.gateway_error.map_or("", |g| g.code),
                tries = ctx.tries,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes_in = session.body_bytes_read(),
                bytes_out = session.body_bytes_sent(),
                client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                peer_ip = %ctx.client.map(|c| c.peer.to_string()).unwrap_or_default(),
            );
        }
        ctx.endpoint_inflight = None;
    }
}

impl Gateway {
    /// Admission and endpoint choice of one try: backoff of a retry, breaker, bulkhead
    /// slot, then an endpoint (SWRR) with the upstream's timeouts.
    async fn prepare_try(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no route"));
        };
        let upstream = &route.upstream;
        // Backoff of a retry, breaker, bulkhead slot: cheap refusals before the call.
        crate::resilience::hooks::before_try(&self.state, ctx).await?;
        let Some(ep) = upstream.pick(&ctx.tried, now_ms()) else {
            ctx.gateway_error = Some(GatewayError {
                status: 503,
                code: "no_healthy_endpoint",
            });
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream {} has no healthy endpoint", upstream.name),
            ));
        };
        ctx.tries += 1;
        ctx.tried.push(ep.clone());
        ctx.endpoint = Some(ep.clone());
        ctx.try_outcome_recorded = false;
        ep.inflight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.endpoint_inflight = Some(EndpointInflight(ep.clone()));

        let t = &upstream.config.timeouts;
        let mut peer = HttpPeer::new(ep.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect.get());
        peer.options.read_timeout = Some(t.read.get());
        peer.options.write_timeout = Some(t.write.get());
        peer.options.idle_timeout =
            Some(ctx.snap.loaded.config.runtime.upstream_idle_timeout.get());
        if let Some(total) = t.total {
            let left = total.get().saturating_sub(ctx.started.elapsed());
            if left.is_zero() {
                ctx.gateway_error = Some(GatewayError {
                    status: 504,
                    code: "upstream_timeout",
                });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(504),
                    "total deadline spent",
                ));
            }
            peer.options.read_timeout = Some(t.read.get().min(left));
            peer.options.connection_timeout = Some(t.connect.get().min(left));
        }
        Ok(Box::new(peer))
    }

    /// Counts one upstream try's outcome, once per try (metrics, breaker, outlier detection).
    fn record_try(&self, ctx: &mut RequestCtx, outcome: Option<crate::resilience::Outcome>) {
        crate::resilience::hooks::record_try(&self.state, ctx, outcome);
    }
}

/// Runs request `filters` in order until one answers, and answers for it; `true` when the
/// request was answered. `claims` carries a verified JWT's claims between calls; response
/// headers the filters ask for accumulate in `ctx`.
async fn run_request_filters(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &str,
    filters: &[Arc<dyn gatehouse_filters::Filter>],
    body_prefix: Option<&[u8]>,
    claims: &mut Option<Arc<serde_json::Value>>,
) -> bool {
    if filters.is_empty() {
        return false;
    }
    let mut cx = RequestCx {
        route,
        client_ip: ctx.client_ip,
        request_id: &ctx.request_id,
        body_prefix,
        claims: claims.take(),
        response_headers: Vec::new(),
    };
    let mut stop = None;
    for f in filters {
        match f.on_request(session.req_header_mut(), &mut cx).await {
            Ok(FilterOutcome::Continue) => {}
            Ok(FilterOutcome::Respond(resp)) => {
                stop = Some(Ok(resp));
                break;
            }
            Err(e) => {
                stop = Some(Err(e));
                break;
            }
        }
    }
    *claims = cx.claims.take();
    let extra = std::mem::take(&mut cx.response_headers);
    drop(cx);
    match stop {
        None => {
            ctx.response_headers.extend(extra);
            false
        }
        Some(Ok(resp)) => {
            ctx.response_headers = extra;
            match resp.error_code {
                Some(code) => {
                    respond::send_error(
                        session,
                        ctx,
                        resp.status.as_u16(),
                        code,
                        &resp.message,
                        &resp.headers,
                    )
                    .await;
                }
                None => {
                    let body = resp.body.unwrap_or_default();
                    if let Err(e) = respond::write(
                        session,
                        ctx,
                        resp.status.as_u16(),
                        None,
                        &resp.headers,
                        "text/plain",
                        body,
                    )
                    .await
                    {
                        tracing::debug!(error = %e, "could not send filter response");
                    }
                }
            }
            true
        }
        Some(Err(e)) => {
            tracing::warn!(request_id = %ctx.request_id, route, error = %e, "filter failed");
            respond::send_error(
                session,
                ctx,
                500,
                "filter_error",
                "a gateway filter failed",
                &[],
            )
            .await;
            true
        }
    }
}
