//! The one place where failures become HTTP responses: a [`Refusal`] (made by the gateway,
//! or read from a pingora error by [`classify`]) becomes a status, a stable
//! `X-Gatehouse-Error` code and a small JSON body, or for a gRPC request a gRPC status.

use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

use super::ctx::{GatewayError, RequestCtx};
use super::refusal::Refusal;
use crate::resilience::{Outcome, OutcomeKind};

/// Header that marks responses the gateway made itself.
pub const ERROR_HEADER: &str = "x-gatehouse-error";

/// What a pingora error means, decided once for the client's answer and for the try's
/// metric, breaker and retry reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The gateway's answer; `None` when the client is gone and nothing can be sent.
    pub refusal: Option<Refusal>,
    /// The try's outcome when the upstream caused it; `None` for the client's or the
    /// gateway's own errors, which never count against an upstream and are never retried.
    pub outcome: Option<Outcome>,
}

/// The one classifier of pingora errors (pingora's own default in `fail_to_proxy` maps
/// `ErrorSource::Upstream` to 502, `Downstream` to 400, `Internal` to 500; timeouts are
/// 504 as in nginx and Envoy). A refusal carried as the error's cause wins.
pub fn classify(e: &Error) -> Classified {
    use ErrorType::*;
    use OutcomeKind as K;
    let source = e.esource();
    let (refusal, kind) = match e.etype() {
        HTTPStatus(413) => (Some(Refusal::BodyTooLarge), K::Reset),
        HTTPStatus(400) => (Some(Refusal::BadRequest), K::Reset),
        HTTPStatus(503) => (Some(Refusal::Unavailable), K::Reset),
        HTTPStatus(504) => (Some(Refusal::UpstreamTimeout), K::Reset),
        HTTPStatus(s) => (Some(Refusal::Status(*s)), K::Reset),
        ConnectTimedout | TLSHandshakeTimedout => {
            (Some(Refusal::UpstreamConnectTimeout), K::ConnectTimeout)
        }
        // The TCP connection was made but TLS was not: the certificate, the name, a client
        // certificate or the protocol (pingora's openssl connector, `InvalidCert` when the
        // chain did not verify).
        TLSHandshakeFailure | InvalidCert => (Some(Refusal::UpstreamTls), K::TlsError),
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
        | ConnectProxyFailure | HandshakeError => {
            (Some(Refusal::UpstreamConnectFailed), K::ConnectError)
        }
        ReadTimedout | WriteTimedout => match source {
            ErrorSource::Downstream => (None, K::Timeout),
            _ => (Some(Refusal::UpstreamTimeout), K::Timeout),
        },
        // An answer that is not HTTP is the upstream's protocol error, not a reset: the
        // connection worked, the peer is broken (RFC 9112 section 4).
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 if *source == ErrorSource::Upstream => {
            (Some(Refusal::UpstreamProtocolError), K::ProtocolError)
        }
        ReadError | WriteError | ConnectionClosed | H1Error | H2Error | InvalidHTTPHeader
        | InvalidH2 => match source {
            ErrorSource::Upstream => (Some(Refusal::UpstreamReset), K::Reset),
            ErrorSource::Downstream => match e.etype() {
                InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => {
                    (Some(Refusal::BadRequest), K::Reset)
                }
                _ => (None, K::Reset),
            },
            _ => (Some(Refusal::Internal), K::Reset),
        },
        _ => match source {
            ErrorSource::Upstream => (Some(Refusal::UpstreamError), K::Reset),
            ErrorSource::Downstream => (Some(Refusal::BadRequest), K::Reset),
            _ => (Some(Refusal::Internal), K::Reset),
        },
    };
    Classified {
        refusal: Refusal::of_error(e).cloned().or(refusal),
        outcome: (*source == ErrorSource::Upstream).then(|| Outcome::of_failure(kind)),
    }
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The JSON body of a gateway error; `trace_id` (W3C, 32 hex digits) follows the
/// request id when the request is traced (`trace_id` not empty).
pub fn error_body(code: &str, message: &str, request_id: &str, trace_id: &str) -> Bytes {
    let trace = if trace_id.is_empty() {
        String::new()
    } else {
        format!(",\"trace_id\":{}", json_escape(trace_id))
    };
    Bytes::from(format!(
        "{{\"error\":{},\"message\":{},\"request_id\":{}{trace}}}",
        json_escape(code),
        json_escape(message),
        json_escape(request_id)
    ))
}

/// Sends the gateway's answer for `refusal` and records it in the context: a JSON body
/// with the refusal's status, or for a gRPC request a gRPC status ([`grpc_answer`]).
/// Errors writing to a client that went away are logged at debug level only.
pub async fn refuse(session: &mut Session, ctx: &mut RequestCtx, refusal: &Refusal) {
    let (status, code) = (refusal.status(), refusal.code());
    let mut headers = refusal.headers();
    let grpc = grpc_content_type(session.req_header());
    let grpc_status = grpc.map(|_| refusal.grpc_status());
    ctx.gateway_error = Some(GatewayError {
        status,
        code,
        grpc_status,
    });
    let written = match (grpc, grpc_status) {
        (Some(content_type), Some(g)) => {
            headers.extend(grpc_answer(g, &refusal.message()));
            write(
                session,
                ctx,
                200,
                Some(code),
                &headers,
                content_type,
                Bytes::new(),
            )
            .await
        }
        _ => {
            let body = error_body(code, &refusal.message(), &ctx.request_id, ctx.trace_id());
            write(
                session,
                ctx,
                status,
                Some(code),
                &headers,
                "application/json",
                body,
            )
            .await
        }
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not send error response");
    }
}

/// The `content-type` of the gateway's answer when `req` is a gRPC call (its
/// `content-type` is `application/grpc`, `application/grpc+proto`, ... or gRPC-Web's
/// `application/grpc-web*`), `None` for any other request.
fn grpc_content_type(req: &pingora_http::RequestHeader) -> Option<&'static str> {
    let ct = req.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    let lower = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
    if lower(b"application/grpc-web") {
        Some("application/grpc-web")
    } else if lower(b"application/grpc") {
        Some("application/grpc")
    } else {
        None
    }
}

/// The headers of a gRPC "Trailers-Only" answer (gRPC's `PROTOCOL-HTTP2.md`): HTTP 200
/// with `grpc-status` and `grpc-message` in the one header block that ends the stream,
/// which every gRPC client reads as the call's status. The message is percent-encoded as
/// the protocol requires (bytes outside 0x20..=0x7E, and `%`).
pub fn grpc_answer(status: u8, message: &str) -> [(http::HeaderName, http::HeaderValue); 2] {
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    [
        (
            http::HeaderName::from_static("grpc-status"),
            http::HeaderValue::from(u16::from(status)),
        ),
        (
            http::HeaderName::from_static("grpc-message"),
            // Only visible ASCII is left, which is always a valid header value.
            http::HeaderValue::from_str(&encoded)
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
        ),
    ]
}

/// `fail_to_proxy`: the answer for a failed request, from the refusal its error carries or
/// from [`classify`]. Nothing is sent when the client is gone or the response header
/// already went out (then the stream is cut).
pub async fn fail(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    let Some(refusal) = classify(e).refusal else {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    };
    let (status, code) = (refusal.status(), refusal.code());
    if session.response_written().is_some() {
        if Refusal::of_error(e).is_some() {
            ctx.gateway_error = Some(GatewayError {
                status,
                code,
                grpc_status: None,
            });
        }
        return FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        };
    }
    let (route, upstream) = (ctx.route_name(), ctx.upstream_name());
    // Fast refusals come from a state change that was logged once; one warning per
    // refused request would flood the log in an outage (the access log records each).
    if refusal.is_fast() {
        tracing::debug!(request_id = %ctx.request_id, route, upstream, code, error = %e, "request refused");
    } else {
        tracing::warn!(request_id = %ctx.request_id, route, upstream, code, error = %e, "request failed");
    }
    // pingora closes the downstream connection after any error once it asked for a
    // peer (even when none was chosen: proxy_to_upstream ignores `can_reuse_downstream`)
    // and when the body was not read to its end; say so, so clients don't reuse it.
    let reusable = !ctx.upstream_phase && session.as_mut().is_body_done();
    if !reusable {
        session.set_keepalive(None);
    }
    refuse(session, ctx, &refusal).await;
    FailToProxy {
        error_code: status,
        can_reuse_downstream: reusable,
    }
}

/// Sends `redirect_https`'s answer: `308 Permanent Redirect` to `location`, no body. A
/// successful answer of the gateway, not an error: no `X-Gatehouse-Error`.
pub async fn redirect(session: &mut Session, ctx: &RequestCtx, location: http::HeaderValue) {
    let headers = [(http::header::LOCATION, location)];
    let sent = write(
        session,
        ctx,
        308,
        None,
        &headers,
        "text/plain",
        Bytes::new(),
    );
    if let Err(e) = sent.await {
        tracing::debug!(error = %e, "could not send redirect");
    }
}

/// Answers an ACME HTTP-01 validation: `200` with the key authorization as an
/// `application/octet-stream` body (RFC 8555 §8.3). A successful answer of the gateway.
pub async fn acme_challenge(session: &mut Session, ctx: &RequestCtx, key_authorization: String) {
    let sent = write(
        session,
        ctx,
        200,
        None,
        &[],
        "application/octet-stream",
        Bytes::from(key_authorization),
    );
    if let Err(e) = sent.await {
        tracing::debug!(error = %e, "could not send the ACME challenge answer");
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
    let resp = head(ctx, status, code, extra, content_type, body.len())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The answer to a request pingora's HTTP/1 parser refused before any phase ran (vendor
/// patch 5: `ProxyHttp::request_parse_error`): `status` is pingora's (400, or 431 for a
/// header section over the limit), rendered like every gateway answer (JSON body,
/// `X-Gatehouse-Error`, `X-Request-Id`), counted and access-logged by
/// [`super::observe::unparsed`]. `None` only if the header cannot be built.
pub fn unparsed(
    tel: &crate::telemetry::Telemetry,
    snap: std::sync::Arc<crate::state::Snapshot>,
    e: &Error,
    status: u16,
    peer: Option<std::net::IpAddr>,
) -> Option<(ResponseHeader, Bytes)> {
    let refusal = match status {
        431 => Refusal::HeaderSectionTooLarge,
        _ => Refusal::ProtocolError,
    };
    let mut ctx = RequestCtx::new(snap);
    ctx.request_id = super::headers::new_request_id();
    ctx.client_ip = peer;
    let (status, code) = (refusal.status(), refusal.code());
    ctx.gateway_error = Some(GatewayError {
        status,
        code,
        grpc_status: None,
    });
    let body = error_body(code, &refusal.message(), &ctx.request_id, ctx.trace_id());
    let resp = head(
        &ctx,
        status,
        Some(code),
        &[],
        "application/json",
        body.len(),
    )
    .ok()?;
    super::observe::unparsed(tel, &ctx, e);
    Some((resp, body))
}

/// The response header of an answer made at the gateway.
fn head(
    ctx: &RequestCtx,
    status: u16,
    code: Option<&'static str>,
    extra: &[(http::HeaderName, http::HeaderValue)],
    content_type: &str,
    len: usize,
) -> pingora_core::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    if len > 0 || status != 204 {
        resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
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
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_type_and_only_upstream_ones_count() {
        let up = |t| classify(&Error::new_up(t)).outcome.map(|o| o.kind);
        for t in [ErrorType::TLSHandshakeFailure, ErrorType::InvalidCert] {
            assert_eq!(up(t.clone()), Some(OutcomeKind::TlsError));
            assert_eq!(
                classify(&Error::new_up(t)).refusal,
                Some(Refusal::UpstreamTls)
            );
        }
        assert_eq!(
            up(ErrorType::ConnectRefused),
            Some(OutcomeKind::ConnectError)
        );
        assert_eq!(
            up(ErrorType::ConnectTimedout),
            Some(OutcomeKind::ConnectTimeout)
        );
        assert_eq!(up(ErrorType::ReadTimedout), Some(OutcomeKind::Timeout));
        assert_eq!(up(ErrorType::ConnectionClosed), Some(OutcomeKind::Reset));
        assert_eq!(
            up(ErrorType::InvalidHTTPHeader),
            Some(OutcomeKind::ProtocolError)
        );
        assert_eq!(
            classify(&Error::new_up(ErrorType::InvalidHTTPHeader))
                .refusal
                .map(|r| (r.status(), r.code())),
            Some((502, "upstream_protocol_error"))
        );
        assert_eq!(
            classify(&Error::new_down(ErrorType::InvalidHTTPHeader)).refusal,
            Some(Refusal::BadRequest),
            "a client's malformed request stays a 400"
        );
        assert_eq!(
            classify(&Error::new_down(ErrorType::ConnectionClosed)).outcome,
            None
        );
        assert_eq!(
            classify(&Error::new_in(ErrorType::InternalError)).outcome,
            None
        );
        let o = classify(&Error::new_up(ErrorType::ConnectTimedout))
            .outcome
            .unwrap();
        assert_eq!(
            (o.kind.label(), o.retry_reason()),
            (
                "timeout",
                Some(crate::resilience::RetryReason::ConnectError)
            )
        );
    }

    #[test]
    fn grpc_answers_carry_a_percent_encoded_message() {
        let [(n, v), (m, w)] = grpc_answer(14, "upstream \"api\" is 100% down: ü");
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("grpc-status", "14"));
        assert_eq!(m.as_str(), "grpc-message");
        assert_eq!(
            w.to_str().unwrap(),
            "upstream \"api\" is 100%25 down: %C3%BC"
        );
        let req = |ct: &str| {
            let mut r = pingora_http::RequestHeader::build("POST", b"/a.B/C", None).unwrap();
            r.insert_header("content-type", ct).unwrap();
            r
        };
        assert_eq!(
            grpc_content_type(&req("application/grpc")),
            Some("application/grpc")
        );
        assert_eq!(
            grpc_content_type(&req("application/grpc+proto")),
            Some("application/grpc")
        );
        assert_eq!(
            grpc_content_type(&req("application/grpc-web+proto")),
            Some("application/grpc-web")
        );
        assert_eq!(grpc_content_type(&req("application/json")), None);
    }

    #[test]
    fn one_classifier_gives_the_status_and_the_reason_alike() {
        // A TLS handshake timeout is a connect timeout for the client (504) and for the
        // metrics and retries (`timeout`, retried as a connect error) alike.
        let c = classify(&Error::new_up(ErrorType::TLSHandshakeTimedout));
        assert_eq!(c.refusal, Some(Refusal::UpstreamConnectTimeout));
        assert_eq!(c.outcome.map(|o| o.kind.label()), Some("timeout"));
        let c = classify(&Error::new_up(ErrorType::ConnectRefused));
        assert_eq!(
            (
                c.refusal.map(|r| r.status()),
                c.outcome.map(|o| o.kind.label())
            ),
            (Some(502), Some("connect_error"))
        );
        assert_eq!(
            classify(&Error::new_down(ErrorType::ReadTimedout)).refusal,
            None,
            "a client that went away gets no answer"
        );
        let carried = Refusal::NoHealthyEndpoint {
            upstream: std::sync::Arc::from("api"),
        }
        .into_error("upstream api has no healthy endpoint");
        assert_eq!(
            classify(&carried).refusal.map(|r| r.code()),
            Some("no_healthy_endpoint")
        );
    }
}
