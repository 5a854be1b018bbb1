//! The gateway's own refusals and failures as one typed enum: each variant knows its
//! status, its stable `X-Gatehouse-Error` code, its message and its extra headers.
//! A refusal made during the upstream phases travels to `fail_to_proxy` as the cause of
//! the pingora error; `respond.rs` renders every one of them the same way.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType};

/// Why the gateway answers a request itself instead of (or after) the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No route matches the request: 404 `no_route`.
    #[error("no route matches this request")]
    NoRoute,
    /// The request path cannot be normalized (`path::PathError`): 400 `bad_path`.
    #[error("the request path is not acceptable: {0}")]
    BadPath(String),
    /// The request body exceeds the route's `max_body_bytes`: 413 `body_too_large`.
    #[error("the request body exceeds this route's limit")]
    BodyTooLarge,
    /// Every endpoint of the upstream is unhealthy or ejected: 503 `no_healthy_endpoint`.
    #[error("no healthy endpoint is available for this upstream")]
    NoHealthyEndpoint {
        /// The upstream.
        upstream: Arc<str>,
    },
    /// The upstream's circuit breaker is open: 503 `circuit_open` with `Retry-After`
    /// (whole seconds, rounded up, at least 1).
    #[error("the circuit breaker of upstream {upstream:?} is open: it is failing, so the gateway does not call it for now")]
    CircuitOpen {
        /// The upstream.
        upstream: Arc<str>,
        /// Until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The upstream's concurrency limit and queue are full: 503 `bulkhead_full` with
    /// `Retry-After: 1`.
    #[error("upstream {upstream:?} is at its concurrency limit: {reason}")]
    BulkheadFull {
        /// The upstream.
        upstream: Arc<str>,
        /// Why no slot was given (queue full, waited too long).
        reason: String,
    },
    /// The route's total deadline (`timeouts.total`) is spent: 504 `upstream_timeout`.
    /// `retrying`: it was the backoff of a retry that found no time left.
    #[error("{}", if *.retrying { format!("the total deadline for upstream {upstream:?} leaves no time for another try") } else { "the upstream did not answer in time".to_string() })]
    DeadlineSpent {
        /// The upstream.
        upstream: Arc<str>,
        /// Whether a retry's backoff found the deadline spent.
        retrying: bool,
    },
    /// A filter failed (an infrastructure error, not a rejection): 500 `filter_error`.
    #[error("a gateway filter failed")]
    FilterFailed,
    /// A filter rejected the request (401 from `jwt`, 429 from `rate_limit`, ...), with the
    /// filter's status, code, message and headers.
    #[error("{message}")]
    Rejected {
        /// Status sent.
        status: u16,
        /// The filter's stable code.
        code: &'static str,
        /// The filter's message.
        message: Cow<'static, str>,
        /// The filter's headers (`WWW-Authenticate`, `Retry-After`, ...).
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// The upstream could not be reached: 502 `upstream_connect_failed`.
    #[error("the upstream could not be reached")]
    UpstreamConnectFailed,
    /// The TLS handshake with the upstream failed (its certificate did not verify against
    /// `tls.ca_file` or the name, it refused our client certificate or had none for us, no
    /// shared protocol): 502 `upstream_tls`.
    #[error("the TLS handshake with the upstream failed")]
    UpstreamTls,
    /// The upstream did not accept the connection in time: 504 `upstream_connect_timeout`.
    #[error("the upstream did not accept the connection in time")]
    UpstreamConnectTimeout,
    /// The upstream did not answer in time: 504 `upstream_timeout`.
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// The upstream closed the connection before a complete answer: 502 `upstream_reset`.
    #[error("the upstream closed the connection before answering")]
    UpstreamReset,
    /// The upstream's answer was not valid HTTP (a malformed status line, binary
    /// garbage; RFC 9112 section 4): 502 `upstream_protocol_error`.
    #[error("the upstream sent an answer that is not valid HTTP")]
    UpstreamProtocolError,
    /// The upstream's connection ended before the body its header announced (RFC 9112
    /// section 8): `upstream_truncated`. The header already went to the client, so this
    /// is never rendered: the client's connection is closed instead, and the code is
    /// the access log's `error`.
    #[error("the upstream closed the connection before the end of the response body")]
    UpstreamTruncated,
    /// Another upstream failure: 502 `upstream_error`.
    #[error("the gateway could not complete the request")]
    UpstreamError,
    /// The request could not be parsed: 400 `bad_request`.
    #[error("the request could not be parsed")]
    BadRequest,
    /// An upstream's own 503 that ended the retries: 503 `unavailable`.
    #[error("the gateway could not complete the request")]
    Unavailable,
    /// Another status pingora produced: `gateway_error`.
    #[error("the gateway could not complete the request")]
    Status(u16),
    /// A gateway-internal error: 500 `internal_error`.
    #[error("the gateway could not complete the request")]
    Internal,
    /// The request-target is longer than the listener's `max_uri_bytes`: 414
    /// `uri_too_long` (RFC 9110 section 15.5.15).
    #[error("the request target is too long")]
    UriTooLong,
    /// The request has more header fields than the listener's `max_headers`: 431
    /// `header_fields_too_large` (RFC 6585 section 5).
    #[error("the request has too many header fields")]
    TooManyHeaderFields,
    /// One header field line is longer than the listener's `max_header_line_bytes`: 431
    /// `header_fields_too_large` (RFC 6585 section 5).
    #[error("a request header field is too large")]
    HeaderFieldTooLarge,
    /// The header section is larger than the listener's `max_request_header_bytes`: 431
    /// `header_fields_too_large` (RFC 6585 section 5).
    #[error("the request header section is too large")]
    HeaderSectionTooLarge,
    /// An HTTP/1.1 request in origin form without a Host header: 400 `bad_host`
    /// (RFC 9112 section 3.2).
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    /// More than one Host header (or a combined list): 400 `bad_host` (RFC 9112
    /// section 3.2).
    #[error("more than one Host header")]
    MultipleHosts,
    /// A Host header that is not `uri-host[:port]`: 400 `bad_host` (RFC 9110 section 7.2).
    #[error("the Host header is not a valid host")]
    InvalidHost,
    /// The body of a route that buffers the request is larger than `buffer_body`: 413
    /// `body_too_large` (the same code as [`Refusal::BodyTooLarge`], another message).
    #[error("the request body is larger than the route buffers")]
    BodyOverBuffer,
    /// The request body could not be read (bad chunked coding, a length mismatch): 400
    /// `bad_request_body` (RFC 9112 section 6.3).
    #[error("the request body is malformed")]
    BadRequestBody,
    /// pingora's HTTP/1 parser refused the request header before any phase ran (a
    /// malformed request line or header field, a smuggling vector, a conflicting Host;
    /// RFC 9112 sections 3 and 5): 400 `protocol_error`.
    #[error("the request is not valid HTTP/1.1")]
    ProtocolError,
}

impl Refusal {
    /// The HTTP status sent (RFC 9110 section 15).
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::BadPath(_)
            | Refusal::BadRequest
            | Refusal::MissingHost
            | Refusal::MultipleHosts
            | Refusal::InvalidHost
            | Refusal::BadRequestBody
            | Refusal::ProtocolError => 400,
            Refusal::BodyTooLarge | Refusal::BodyOverBuffer => 413,
            Refusal::UriTooLong => 414,
            Refusal::TooManyHeaderFields
            | Refusal::HeaderFieldTooLarge
            | Refusal::HeaderSectionTooLarge => 431,
            Refusal::NoHealthyEndpoint { .. }
            | Refusal::CircuitOpen { .. }
            | Refusal::BulkheadFull { .. }
            | Refusal::Unavailable => 503,
            Refusal::DeadlineSpent { .. }
            | Refusal::UpstreamConnectTimeout
            | Refusal::UpstreamTimeout => 504,
            Refusal::FilterFailed | Refusal::Internal => 500,
            Refusal::Rejected { status, .. } | Refusal::Status(status) => *status,
            Refusal::UpstreamConnectFailed
            | Refusal::UpstreamTls
            | Refusal::UpstreamReset
            | Refusal::UpstreamProtocolError
            | Refusal::UpstreamTruncated
            | Refusal::UpstreamError => 502,
        }
    }

    /// The stable code sent as `X-Gatehouse-Error` and as the JSON body's `error`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::BadPath(_) => "bad_path",
            Refusal::BodyTooLarge | Refusal::BodyOverBuffer => "body_too_large",
            Refusal::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Refusal::CircuitOpen { .. } => "circuit_open",
            Refusal::BulkheadFull { .. } => "bulkhead_full",
            Refusal::DeadlineSpent { .. } | Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::FilterFailed => "filter_error",
            Refusal::Rejected { code, .. } => code,
            Refusal::UpstreamConnectFailed => "upstream_connect_failed",
            Refusal::UpstreamTls => "upstream_tls",
            Refusal::UpstreamConnectTimeout => "upstream_connect_timeout",
            Refusal::UpstreamReset => "upstream_reset",
            Refusal::UpstreamProtocolError => "upstream_protocol_error",
            Refusal::UpstreamTruncated => "upstream_truncated",
            Refusal::UpstreamError => "upstream_error",
            Refusal::BadRequest => "bad_request",
            Refusal::Unavailable => "unavailable",
            Refusal::Status(_) => "gateway_error",
            Refusal::Internal => "internal_error",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::TooManyHeaderFields
            | Refusal::HeaderFieldTooLarge
            | Refusal::HeaderSectionTooLarge => "header_fields_too_large",
            Refusal::MissingHost | Refusal::MultipleHosts | Refusal::InvalidHost => "bad_host",
            Refusal::BadRequestBody => "bad_request_body",
            Refusal::ProtocolError => "protocol_error",
        }
    }

    /// The gRPC status code (gRPC's `doc/statuscodes.md`) of the answer to a gRPC request,
    /// which gets HTTP 200 and this code in `grpc-status` instead of the status: the
    /// meaning where the refusal has one (no route: 12 UNIMPLEMENTED; unavailable,
    /// breaker open, connect failures: 14 UNAVAILABLE; the upstream's or the total
    /// deadline: 4 DEADLINE_EXCEEDED; a size limit or 429: 8 RESOURCE_EXHAUSTED), else
    /// gRPC's "HTTP to gRPC status code mapping" of [`Refusal::status`]
    /// ([`grpc_status_of_http`]).
    pub fn grpc_status(&self) -> u8 {
        match self {
            Refusal::NoRoute => GRPC_UNIMPLEMENTED,
            Refusal::NoHealthyEndpoint { .. }
            | Refusal::CircuitOpen { .. }
            | Refusal::BulkheadFull { .. }
            | Refusal::Unavailable
            | Refusal::UpstreamConnectFailed
            | Refusal::UpstreamTls
            | Refusal::UpstreamConnectTimeout
            | Refusal::UpstreamReset
            | Refusal::UpstreamProtocolError
            | Refusal::UpstreamTruncated
            | Refusal::UpstreamError => GRPC_UNAVAILABLE,
            Refusal::DeadlineSpent { .. } | Refusal::UpstreamTimeout => GRPC_DEADLINE_EXCEEDED,
            Refusal::BodyTooLarge
            | Refusal::BodyOverBuffer
            | Refusal::UriTooLong
            | Refusal::TooManyHeaderFields
            | Refusal::HeaderFieldTooLarge
            | Refusal::HeaderSectionTooLarge => GRPC_RESOURCE_EXHAUSTED,
            Refusal::FilterFailed | Refusal::Internal => GRPC_INTERNAL,
            _ => grpc_status_of_http(self.status()),
        }
    }

    /// The human message of the JSON body (never a secret).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Extra response headers: `Retry-After` (RFC 9110 section 10.2.3) on the refusals
    /// that will pass, and a filter's own headers.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let retry_after = |d: Duration| {
            // Whole seconds, rounded up, at least 1.
            let secs = d.as_millis().div_ceil(1000).max(1);
            vec![(http::header::RETRY_AFTER, HeaderValue::from(secs as u64))]
        };
        match self {
            Refusal::CircuitOpen { retry_after: d, .. } => retry_after(*d),
            Refusal::BulkheadFull { .. } => retry_after(Duration::from_secs(1)),
            Refusal::Rejected { headers, .. } => headers.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether it is a fast refusal caused by a state change that was logged once
    /// (breaker open, bulkhead full, no healthy endpoint): one warning per refused
    /// request would flood the log in an outage.
    pub fn is_fast(&self) -> bool {
        matches!(
            self,
            Refusal::CircuitOpen { .. }
                | Refusal::BulkheadFull { .. }
                | Refusal::NoHealthyEndpoint { .. }
        )
    }

    /// The pingora error that carries this refusal as its cause (see
    /// [`Refusal::of_error`]), with a log context.
    pub fn into_error(self, context: impl Into<String>) -> Box<Error> {
        let status = self.status();
        Error::because(ErrorType::HTTPStatus(status), context.into(), self)
    }

    /// The refusal a pingora error carries, if it was made by [`Refusal::into_error`].
    pub fn of_error(e: &Error) -> Option<&Refusal> {
        e.root_cause().downcast_ref::<Refusal>()
    }
}

/// gRPC status 2: UNKNOWN.
const GRPC_UNKNOWN: u8 = 2;
/// gRPC status 4: DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u8 = 4;
/// gRPC status 7: PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: u8 = 7;
/// gRPC status 8: RESOURCE_EXHAUSTED.
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;
/// gRPC status 12: UNIMPLEMENTED.
const GRPC_UNIMPLEMENTED: u8 = 12;
/// gRPC status 13: INTERNAL.
const GRPC_INTERNAL: u8 = 13;
/// gRPC status 14: UNAVAILABLE.
const GRPC_UNAVAILABLE: u8 = 14;
/// gRPC status 16: UNAUTHENTICATED.
const GRPC_UNAUTHENTICATED: u8 = 16;

/// gRPC's "HTTP to gRPC status code mapping" (`doc/http-grpc-status-mapping.md`), with
/// 429 and the size limits (413, 414, 431) as 8 RESOURCE_EXHAUSTED, their meaning (the
/// table has 429 as UNAVAILABLE), and 408 as 4 DEADLINE_EXCEEDED.
pub fn grpc_status_of_http(status: u16) -> u8 {
    match status {
        400 | 500 => GRPC_INTERNAL,
        401 => GRPC_UNAUTHENTICATED,
        403 => GRPC_PERMISSION_DENIED,
        404 => GRPC_UNIMPLEMENTED,
        408 => GRPC_DEADLINE_EXCEEDED,
        413 | 414 | 429 | 431 => GRPC_RESOURCE_EXHAUSTED,
        502..=504 => GRPC_UNAVAILABLE,
        _ => GRPC_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Arc<str> {
        Arc::from("api")
    }

    #[test]
    fn each_refusal_maps_to_its_status_code_and_headers() {
        let h = |name: &str, v: &str| {
            vec![(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )]
        };
        type Headers = Vec<(HeaderName, HeaderValue)>;
        #[rustfmt::skip]
        let cases: Vec<(Refusal, u16, &str, Headers)> = vec![
            (Refusal::NoRoute,                              404, "no_route",                 vec![]),
            (Refusal::BadPath("x".into()),                  400, "bad_path",                 vec![]),
            (Refusal::BodyTooLarge,                         413, "body_too_large",           vec![]),
            (Refusal::NoHealthyEndpoint { upstream: up() }, 503, "no_healthy_endpoint",      vec![]),
            (
                Refusal::CircuitOpen { upstream: up(), retry_after: Duration::from_millis(1500) },
                503, "circuit_open", h("retry-after", "2"),
            ),
            (
                Refusal::CircuitOpen { upstream: up(), retry_after: Duration::from_millis(10) },
                503, "circuit_open", h("retry-after", "1"),
            ),
            (
                Refusal::BulkheadFull { upstream: up(), reason: "queue full".into() },
                503, "bulkhead_full", h("retry-after", "1"),
            ),
            (
                Refusal::DeadlineSpent { upstream: up(), retrying: true },
                504, "upstream_timeout", vec![],
            ),
            (Refusal::FilterFailed,                         500, "filter_error",             vec![]),
            (
                Refusal::Rejected {
                    status: 401, code: "unauthorized", message: "no token".into(),
                    headers: h("www-authenticate", "Bearer"),
                },
                401, "unauthorized", h("www-authenticate", "Bearer"),
            ),
            (Refusal::UpstreamConnectFailed,                502, "upstream_connect_failed",  vec![]),
            (Refusal::UpstreamTls,                          502, "upstream_tls",             vec![]),
            (Refusal::UpstreamConnectTimeout,               504, "upstream_connect_timeout", vec![]),
            (Refusal::UpstreamTimeout,                      504, "upstream_timeout",         vec![]),
            (Refusal::UpstreamReset,                        502, "upstream_reset",           vec![]),
            (Refusal::UpstreamProtocolError,                502, "upstream_protocol_error",  vec![]),
            (Refusal::UpstreamTruncated,                    502, "upstream_truncated",       vec![]),
            (Refusal::UpstreamError,                        502, "upstream_error",           vec![]),
            (Refusal::BadRequest,                           400, "bad_request",              vec![]),
            (Refusal::Unavailable,                          503, "unavailable",              vec![]),
            (Refusal::Status(418),                          418, "gateway_error",            vec![]),
            (Refusal::Internal,                             500, "internal_error",           vec![]),
            (Refusal::UriTooLong,                           414, "uri_too_long",             vec![]),
            (Refusal::TooManyHeaderFields,                  431, "header_fields_too_large",  vec![]),
            (Refusal::HeaderFieldTooLarge,                  431, "header_fields_too_large",  vec![]),
            (Refusal::HeaderSectionTooLarge,                431, "header_fields_too_large",  vec![]),
            (Refusal::MissingHost,                          400, "bad_host",                 vec![]),
            (Refusal::MultipleHosts,                        400, "bad_host",                 vec![]),
            (Refusal::InvalidHost,                          400, "bad_host",                 vec![]),
            (Refusal::BodyOverBuffer,                       413, "body_too_large",           vec![]),
            (Refusal::BadRequestBody,                       400, "bad_request_body",         vec![]),
            (Refusal::ProtocolError,                        400, "protocol_error",           vec![]),
        ];
        for (r, status, code, headers) in cases {
            assert_eq!((r.status(), r.code()), (status, code), "{r:?}");
            assert_eq!(r.headers(), headers, "{r:?}");
        }
    }

    #[test]
    fn grpc_requests_get_the_status_code_of_the_refusals_meaning() {
        let rejected = |status| Refusal::Rejected {
            status,
            code: "x",
            message: "m".into(),
            headers: vec![],
        };
        #[rustfmt::skip]
        let cases: Vec<(Refusal, u8)> = vec![
            (Refusal::NoRoute, 12),
            (Refusal::NoHealthyEndpoint { upstream: up() }, 14),
            (Refusal::CircuitOpen { upstream: up(), retry_after: Duration::from_secs(1) }, 14),
            (Refusal::BulkheadFull { upstream: up(), reason: "full".into() }, 14),
            (Refusal::UpstreamConnectFailed, 14),
            (Refusal::UpstreamConnectTimeout, 14),
            (Refusal::UpstreamReset, 14),
            (Refusal::UpstreamTimeout, 4),
            (Refusal::DeadlineSpent { upstream: up(), retrying: true }, 4),
            (Refusal::BodyTooLarge, 8),
            (Refusal::HeaderSectionTooLarge, 8),
            (Refusal::FilterFailed, 13),
            (Refusal::BadRequest, 13),
            (rejected(401), 16),
            (rejected(403), 7),
            (rejected(429), 8),
            (rejected(418), 2),
            (Refusal::Status(503), 14),
        ];
        for (r, code) in cases {
            assert_eq!(r.grpc_status(), code, "{r:?}");
        }
    }

    #[test]
    fn messages_name_the_upstream_where_the_gateway_decided() {
        assert_eq!(
            Refusal::DeadlineSpent {
                upstream: up(),
                retrying: true
            }
            .message(),
            "the total deadline for upstream \"api\" leaves no time for another try"
        );
        assert_eq!(
            Refusal::DeadlineSpent {
                upstream: up(),
                retrying: false
            }
            .message(),
            "the upstream did not answer in time"
        );
        assert_eq!(
            Refusal::BadPath("a NUL byte".into()).message(),
            "the request path is not acceptable: a NUL byte"
        );
    }

    #[test]
    fn edge_refusals_keep_their_messages() {
        let cases = [
            (Refusal::UriTooLong, "the request target is too long"),
            (
                Refusal::TooManyHeaderFields,
                "the request has too many header fields",
            ),
            (
                Refusal::HeaderFieldTooLarge,
                "a request header field is too large",
            ),
            (
                Refusal::HeaderSectionTooLarge,
                "the request header section is too large",
            ),
            (
                Refusal::MissingHost,
                "an HTTP/1.1 request needs a Host header",
            ),
            (Refusal::MultipleHosts, "more than one Host header"),
            (Refusal::InvalidHost, "the Host header is not a valid host"),
            (
                Refusal::BodyOverBuffer,
                "the request body is larger than the route buffers",
            ),
            (Refusal::BadRequestBody, "the request body is malformed"),
        ];
        for (r, message) in cases {
            assert_eq!(r.message(), message, "{r:?}");
        }
    }

    #[test]
    fn a_refusal_travels_as_the_cause_of_a_pingora_error() {
        let e = Refusal::BodyTooLarge.into_error("request body exceeds the route's limit");
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(413));
        assert_eq!(Refusal::of_error(&e), Some(&Refusal::BodyTooLarge));
        assert_eq!(
            Refusal::of_error(&Error::new_up(ErrorType::ConnectRefused)),
            None
        );
    }
}
