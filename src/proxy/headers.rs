//! Headers the gateway owns: request id, forwarding headers, and hop-by-hop stripping.

use std::time::SystemTime;

use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;
use crate::config::model::HostHeaderPolicy;

/// A client's `X-Request-Id` is kept when it is 1..=128 of `[A-Za-z0-9._:-]`; otherwise
/// (absent, too long, odd bytes that could inject into logs) a new one is made.
pub fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            // Checked ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    new_request_id()
}

/// A random 128-bit id as 32 hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The declared body length, if any and parsable.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// RFC 9110 7.6.1 hop-by-hop headers (framing headers are pingora's business).
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

fn connection_listed(h: &http::HeaderMap) -> Vec<http::HeaderName> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "close" && s != "keep-alive" && s != "upgrade")
        .filter_map(|s| http::HeaderName::from_bytes(s.as_bytes()).ok())
        .filter(|n| n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING)
        .collect()
}

/// Removes hop-by-hop headers from the request sent upstream; `Upgrade` and `Connection`
/// survive only on an upgrade request (WebSocket).
pub fn strip_hop_by_hop_request(req: &mut RequestHeader, upgrade: bool) {
    for n in connection_listed(&req.headers) {
        req.remove_header(&n);
    }
    for n in HOP_BY_HOP {
        req.remove_header(*n);
    }
    if !upgrade {
        req.remove_header("upgrade");
        req.remove_header(&http::header::CONNECTION);
    }
}

/// Removes hop-by-hop headers from the upstream's response.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    for n in connection_listed(&resp.headers) {
        resp.remove_header(&n);
    }
    for n in HOP_BY_HOP {
        resp.remove_header(*n);
    }
}

/// Sets the forwarding headers, replacing whatever the client sent: the gateway owns them.
pub fn set_forwarding(
    req: &mut RequestHeader,
    ctx: &RequestCtx,
    host_policy: &HostHeaderPolicy,
    endpoint: Option<&str>,
) -> Result<()> {
    let ip = ctx.client_ip.map(|i| i.to_string()).unwrap_or_default();
    req.insert_header("x-request-id", ctx.request_id.as_str())?;
    if !ip.is_empty() {
        req.insert_header("x-forwarded-for", ip.as_str())?;
        req.insert_header("x-client-ip", ip.as_str())?;
    } else {
        req.remove_header("x-forwarded-for");
        req.remove_header("x-client-ip");
    }
    req.insert_header("x-forwarded-proto", "http")?;
    match &ctx.host_header {
        Some(h) => req.insert_header("x-forwarded-host", h.clone())?,
        None => {
            req.remove_header("x-forwarded-host");
        }
    }
    req.remove_header("forwarded");
    req.insert_header(
        "x-request-timestamp",
        crate::state::events::rfc3339(SystemTime::now()),
    )?;
    match host_policy {
        HostHeaderPolicy::Preserve => {}
        HostHeaderPolicy::Endpoint => {
            if let Some(e) = endpoint {
                req.insert_header(http::header::HOST, e)?;
            }
        }
        HostHeaderPolicy::Set(v) => req.insert_header(http::header::HOST, v.as_str())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_request_ids_only() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc-123_x.y:z").unwrap();
        assert_eq!(request_id(&req), "abc-123_x.y:z");
        req.insert_header("x-request-id", "bad id\"").unwrap();
        let id = request_id(&req);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }

    #[test]
    fn strips_hop_by_hop() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("x-fine", "1").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        for h in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(req.headers.get(h).is_none(), "{h} survived");
        }
        assert!(req.headers.get("x-fine").is_some());
    }
}
