//! The one place where failures become HTTP responses: pingora errors and filter answers
//! are turned into a status, a stable `X-Gatehouse-Error` code and a small JSON body.

use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::{GatewayError, RequestCtx};

/// Header that marks responses the gateway made itself.
pub const ERROR_HEADER: &str = "x-gatehouse-error";

/// Maps a proxy error to a status and stable code; `None` when the client is gone and
/// nothing can be sent.
pub fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    let (status, code) = match e.etype() {
        HTTPStatus(413) => (413, "body_too_large"),
        HTTPStatus(400) => (400, "bad_request"),
        HTTPStatus(503) => (503, "unavailable"),
        HTTPStatus(504) => (504, "upstream_timeout"),
        HTTPStatus(s) => (*s, "gateway_error"),
        ConnectTimedout => (504, "upstream_connect_timeout"),
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
        | ConnectProxyFailure | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
        | HandshakeError => (502, "upstream_connect_failed"),
        ReadTimedout | WriteTimedout => match e.esource() {
            ErrorSource::Downstream => return None,
            _ => (504, "upstream_timeout"),
        },
        ReadError | WriteError | ConnectionClosed | H1Error | H2Error | InvalidHTTPHeader
        | InvalidH2 => match e.esource() {
            ErrorSource::Upstream => (502, "upstream_reset"),
            ErrorSource::Downstream => match e.etype() {
                InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => (400, "bad_request"),
                _ => return None,
            },
            _ => (500, "internal_error"),
        },
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream_error"),
            ErrorSource::Downstream => (400, "bad_request"),
            _ => (500, "internal_error"),
        },
    };
    Some(GatewayError { status, code })
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The JSON body of a gateway error.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":{},\"message\":{},\"request_id\":{}}}",
        json_escape(code),
        json_escape(message),
        json_escape(request_id)
    ))
}

/// Sends a gateway error response; records it in the context. Errors writing to a
/// client that went away are logged at debug level only.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    code: &'static str,
    message: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) {
    ctx.gateway_error = Some(GatewayError { status, code });
    let body = error_body(code, message, &ctx.request_id);
    if let Err(e) = write(
        session,
        ctx,
        status,
        Some(code),
        extra,
        "application/json",
        body,
    )
    .await
    {
        tracing::debug!(error = %e, "could not send error response");
    }
}

/// Sends a complete response made at the gateway (an error or e.g. a CORS preflight).
pub async fn write(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    code: Option<&'static str>,
    extra: &[(http::HeaderName, http::HeaderValue)],
    content_type: &str,
    body: Bytes,
) -> pingora_core::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    if !body.is_empty() || status != 204 {
        resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(code) = code {
        resp.insert_header(ERROR_HEADER, code)?;
    }
    if !ctx.request_id.is_empty() {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    for (n, v) in extra.iter().chain(ctx.response_headers.iter()) {
        resp.append_header(n.clone(), v.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Human message for a gateway error code.
pub fn message_for(code: &str) -> &'static str {
    match code {
        "no_route" => "no route matches this request",
        "bad_path" => "the request path is not acceptable",
        "body_too_large" => "the request body exceeds this route's limit",
        "upstream_connect_failed" => "the upstream could not be reached",
        "upstream_connect_timeout" => "the upstream did not accept the connection in time",
        "upstream_timeout" => "the upstream did not answer in time",
        "upstream_reset" => "the upstream closed the connection before answering",
        "no_healthy_endpoint" => "no healthy endpoint is available for this upstream",
        "circuit_open" => "the upstream's circuit breaker is open",
        "bulkhead_full" => "the upstream is at its concurrency limit",
        "bad_request" => "the request could not be parsed",
        _ => "the gateway could not complete the request",
    }
}
