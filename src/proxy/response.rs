//! The response-side step of the proxy: the request id and the headers filters added
//! on the request side, then the route's response filters (their body transforms run in
//! `response_body_filter`).

use bytes::Bytes;
use gatehouse_filters::ResponseCx;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;

/// Prepares the response header sent to the client (an upstream's or the gateway's).
/// A response filter that fails is logged and skipped: the response still goes out. A filter
/// may wait here (a wasm filter's `proxy_http_call`); the header waits with it.
/// Errors: an invalid header value (pingora's `InvalidHTTPHeader`).
pub async fn to_downstream(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    for (n, v) in &ctx.response_headers {
        resp.append_header(n.clone(), v.clone())?;
    }
    let Some(route) = ctx.route.clone() else {
        return Ok(());
    };
    let cx = ResponseCx {
        route: &route.name,
        request: req,
        state: &ctx.filter_state,
    };
    let mut transforms = std::mem::take(&mut ctx.body_transforms);
    let mut spent = ctx.filter_time;
    let errors = route
        .filters
        .on_response(resp, &cx, &mut transforms, &mut spent)
        .await;
    ctx.body_transforms = transforms;
    ctx.filter_time = spent;
    for e in errors {
        tracing::warn!(request_id = %ctx.request_id, error = %e, "response filter failed");
    }
    Ok(())
}

/// One response body chunk through the request's body transforms, in order; a tunnel's
/// bytes (after a `101`) are not a response body and pass as they are.
pub(super) fn transform_body(ctx: &mut RequestCtx, body: &mut Option<Bytes>, end_of_stream: bool) {
    if ctx.tunnel.is_some() {
        return;
    }
    for t in &mut ctx.body_transforms {
        *body = t.transform(body.take(), end_of_stream);
    }
}

/// The response's trailers through the body transforms, which may edit them (a wasm
/// filter's `proxy_on_response_trailers`).
pub(super) fn trailers(ctx: &mut RequestCtx, trailers: &mut http::HeaderMap) {
    for t in &mut ctx.body_transforms {
        t.trailers(trailers);
    }
}
