//! The request-side steps of the proxy: routing (through the router's own view of the
//! request), the body limit, the route's filter chain, and the rewrite of the request
//! that goes upstream. Each returns a [`Refusal`] or writes nothing; `respond.rs` renders.

use std::borrow::Cow;
use std::sync::Arc;

use gatehouse_filters::{RequestBody, RequestCx, Stop};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::refusal::Refusal;
use super::tunnel::{self, TunnelEnd};
use super::{client_addr, edge, headers, respond, trace};
use crate::config::model::EncodedSlashes;
use crate::path::rewrite_path;
use crate::router::{apply_encoded_slashes, Incoming};
use crate::state::{Route, State};

/// `request_filter`: the request's id, trace and client address; then the answers the
/// gateway gives by itself (an ACME HTTP-01 challenge, the listener's HTTPS redirect), else
/// the edge checks and the route ([`admit`]) and the route's filters ([`run_filters`]).
/// `Ok(true)`: the request was answered.
pub async fn filter(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &State,
    limits: &edge::EdgeLimits,
) -> Result<bool> {
    ctx.request_id = headers::request_id(session.req_header());
    ctx.trace = trace::start(state.tracing.as_ref(), session.req_header());
    ctx.client = client_addr::resolve(session, &ctx.snap);
    ctx.client_ip = ctx.client.map(|c| c.client);
    ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    if let Some(answer) = edge::acme_http01(session, ctx, &state.tls.http01) {
        respond::acme_challenge(session, ctx, answer).await;
        return Ok(true);
    }
    if let Some(location) = edge::https_redirect(session, ctx) {
        respond::redirect(session, ctx, location).await;
        return Ok(true);
    }
    match admit(session, ctx, limits) {
        Ok(route) => run_filters(session, ctx, &route).await,
        Err(refusal) => {
            respond::refuse(session, ctx, &refusal).await;
            Ok(true)
        }
    }
}

/// The edge checks and rewrites of a client's request (`edge.rs`: limits, Host,
/// absolute form, client-nominated hop-by-hop headers), then its route ([`route`]); the
/// headers only the gateway may set are removed before any filter sees the request.
pub fn admit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limits: &edge::EdgeLimits,
) -> Result<Arc<Route>, Refusal> {
    edge::check_request(session.req_header(), limits)?;
    edge::absolute_to_origin(session.req_header_mut());
    edge::strip_client_nominated(session.req_header_mut());
    let route = route(session, ctx)?;
    headers::remove_owned(session.req_header_mut(), &ctx.snap.owned_headers);
    Ok(route)
}

/// Finds the route: the router builds its view of the request (normalized path and host),
/// and the declared body length is checked against the route's limit.
pub fn route(session: &Session, ctx: &mut RequestCtx) -> Result<Arc<Route>, Refusal> {
    let req = session.req_header();
    let incoming = Incoming::new(&req.method, &req.uri, &req.headers).map_err(|e| {
        tracing::debug!(request_id = %ctx.request_id, reason = %e, "refused path");
        Refusal::BadPath(e.to_string())
    })?;
    ctx.host_header = req.headers.get(http::header::HOST).cloned();
    let route = ctx.snap.router.route_match(&incoming.request()).map(|m| {
        ctx.path_params = m
            .params
            .into_iter()
            .map(|(n, v)| (n, v.to_string()))
            .collect();
        m.value.clone()
    });
    ctx.path = incoming.path;
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
        Err(e) => return Err(Refusal::BadPath(e.to_string())),
    }
    let route = route.ok_or(Refusal::NoRoute)?;
    ctx.route = Some(route.clone());
    if headers::content_length(req).is_some_and(|len| len > route.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    Ok(route)
}

/// `request_body_filter`: a chunk of the request body, counted by [`count_body`]. After a
/// `101` the bytes are the tunnel's, not a request body: no body limit, and their end is
/// the client closing the tunnel.
pub fn body_chunk(
    session: &Session,
    ctx: &mut RequestCtx,
    chunk: Option<&bytes::Bytes>,
    end_of_stream: bool,
) -> Result<()> {
    if session.was_upgraded() {
        if end_of_stream {
            tunnel::closed(ctx, TunnelEnd::ClientClose);
        }
        return Ok(());
    }
    count_body(ctx, chunk)
}

/// Counts a streamed request body chunk against the route's `max_body_bytes` (a
/// chunked body has no declared length to check up front). Errors: 413
/// [`Refusal::BodyTooLarge`] as soon as the total passes the limit.
pub fn count_body(ctx: &mut RequestCtx, chunk: Option<&bytes::Bytes>) -> Result<()> {
    if let (Some(b), Some(route)) = (chunk, ctx.route.as_ref()) {
        ctx.body_bytes += b.len() as u64;
        if ctx.body_bytes > route.max_body_bytes {
            return Err(Refusal::BodyTooLarge.into_error("request body exceeds the route's limit"));
        }
    }
    Ok(())
}

/// Runs the route's filters: those before the first that reads the body first, so that a
/// refusal they make (a missing token, a client's rate limit) is the answer to
/// `Expect: 100-continue` instead of `100 Continue` (RFC 9110 section 10.1.1); then reads
/// what the route needs of the body (the filters' prefix, or the whole body when the route
/// buffers) and runs the rest. `Ok(true)`: the request was answered.
pub async fn run_filters(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<bool> {
    let (len, split) = (route.filters.len(), route.filters.first_body_reader());
    let mut claims = None;
    if run_part(session, ctx, route, 0..split, None, None, &mut claims).await {
        return Ok(true);
    }
    let prefix = if split == len { 0 } else { route.body_prefix };
    let read = match edge::read_body(session, prefix, route.buffer_body).await {
        Ok(b) => b,
        Err(r) => {
            respond::refuse(session, ctx, &r).await;
            return Ok(true);
        }
    };
    let Some(read) = read else {
        return Ok(run_part(session, ctx, route, split..len, None, None, &mut claims).await);
    };
    // Prefix filters see the client's first bytes; a buffering filter the whole body, which
    // it may replace.
    let prefix = read.slice(..read.len().min(route.body_prefix));
    let mut whole = (route.filter_body || route.buffer_body > 0).then(|| RequestBody::new(read));
    let body = if route.filter_body {
        whole.as_mut()
    } else {
        None
    };
    let prefix = (route.body_prefix > 0).then_some(&prefix[..]);
    if run_part(session, ctx, route, split..len, prefix, body, &mut claims).await {
        return Ok(true);
    }
    if let Some(whole) = whole {
        let replaced = whole.is_replaced();
        if let Err(r) = edge::replay_body(session, whole.bytes().clone(), replaced) {
            respond::refuse(session, ctx, &r).await;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs the route's filters in `range` and answers for the one that stops; `true` when the
/// request was answered. `claims` carries a verified JWT's claims between the parts.
async fn run_part(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    range: std::ops::Range<usize>,
    body_prefix: Option<&[u8]>,
    body: Option<&mut RequestBody>,
    claims: &mut Option<Arc<serde_json::Value>>,
) -> bool {
    if range.is_empty() {
        return false;
    }
    let mut cx = RequestCx {
        route: &route.name,
        client_ip: ctx.client_ip,
        request_id: &ctx.request_id,
        body_prefix,
        body,
        claims: claims.take(),
        response_headers: Vec::new(),
        state: &ctx.filter_state,
    };
    let mut spent = ctx.filter_time;
    let trace = super::trace::context(ctx);
    let run = route
        .filters
        .on_request_range(range, session.req_header_mut(), &mut cx, &mut spent);
    let result = gatehouse_otel::within(trace.as_ref(), run).await;
    let added = std::mem::take(&mut cx.response_headers);
    *claims = cx.claims.take();
    drop(cx);
    ctx.filter_time = spent;
    ctx.response_headers.extend(added);
    let refusal = match result {
        Ok(()) => return false,
        Err(Stop::Respond(resp)) => match resp.error_code {
            Some(code) => Refusal::Rejected {
                status: resp.status.as_u16(),
                code,
                message: resp.message,
                headers: resp.headers,
            },
            None => {
                // An answer made by a filter (a CORS preflight, a wasm filter's local
                // response): its own content type, when it gives one, replaces the default.
                let body = resp.body.unwrap_or_default();
                let status = resp.status.as_u16();
                let (types, headers): (Vec<_>, Vec<_>) = resp
                    .headers
                    .into_iter()
                    .partition(|(n, _)| n == http::header::CONTENT_TYPE);
                let content_type = types
                    .first()
                    .and_then(|(_, v)| v.to_str().ok())
                    .unwrap_or("text/plain");
                let sent = respond::write(session, ctx, status, None, &headers, content_type, body);
                if let Err(e) = sent.await {
                    tracing::debug!(error = %e, "could not send filter response");
                }
                return true;
            }
        },
        Err(Stop::Failed(e)) => {
            tracing::warn!(request_id = %ctx.request_id, route = %route.name, error = %e, "filter failed");
            ctx.response_headers.clear();
            Refusal::FilterFailed
        }
    };
    respond::refuse(session, ctx, &refusal).await;
    true
}

/// `upstream_request_filter`: the request that goes upstream (untouched without a route):
/// the route's path rewrite (most requests keep their parsed origin-form URI), hop-by-hop
/// headers removed, forwarding headers and the deadline header set.
pub fn to_upstream(session: &Session, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(route) = ctx.route.as_deref() else {
        return Ok(());
    };
    // `{name}` in a rewrite takes the route template's captured parameter.
    let rewrite = route.rewrite_path.as_deref().map(|r| {
        if ctx.path_params.is_empty() {
            Cow::Borrowed(r)
        } else {
            Cow::Owned(crate::path::template::expand(r, &ctx.path_params))
        }
    });
    let path = rewrite_path(
        &ctx.path,
        route.strip_prefix.as_deref(),
        route.add_prefix.as_deref(),
        rewrite.as_deref(),
    );
    let uri = &req.uri;
    if path != uri.path() || uri.scheme().is_some() || uri.authority().is_some() {
        let uri = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "rewritten uri invalid"))?;
        req.set_uri(uri);
    }
    headers::strip_hop_by_hop_request(req, session.is_upgrade_req());
    let endpoint = ctx.endpoint.as_ref().map(|e| e.address.as_str());
    let policy = &route.cluster.upstream.peer.host_header;
    headers::set_forwarding(req, ctx, policy, endpoint)?;
    super::trace::to_upstream(ctx, req)?;
    super::resilience::deadline_header(ctx, req)
}

/// The request's trailers, without the fields a trailer cannot carry, through the route's
/// filters (each may edit them), their time added to the request's filter time.
pub(super) fn trailers(
    req: &mut RequestHeader,
    trailers: &mut http::HeaderMap,
    ctx: &mut RequestCtx,
) {
    headers::sanitize_trailers(trailers);
    if let Some(route) = ctx.route.clone() {
        let mut spent = ctx.filter_time;
        route
            .filters
            .on_request_trailers(req, trailers, &ctx.filter_state, &mut spent);
        ctx.filter_time = spent;
    }
}
