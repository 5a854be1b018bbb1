//! Headers the gateway owns: request id, forwarding headers, and hop-by-hop stripping.

use std::time::SystemTime;

use http::HeaderValue;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;
use crate::upstream::HostHeader;

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
    let mut hex = [0u8; 32];
    // `hex::encode` pushes char by char (about 1,000 instructions per id); this is a tenth.
    // 16 bytes always fill the 32 digits: the call cannot fail.
    let _ = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut hex);
    String::from_utf8_lossy(&hex).into_owned()
}

/// The declared body length, if any and parsable.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// RFC 9110 7.6.1 hop-by-hop headers besides `Connection` and `Upgrade` (framing headers
/// are pingora's business). The one list: detection and removal both read it.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether `n` is a hop-by-hop header or may name one (`Connection`).
fn is_hop_by_hop(n: &http::HeaderName) -> bool {
    n == http::header::CONNECTION || n == http::header::UPGRADE || HOP_BY_HOP.contains(&n.as_str())
}

/// Removes from a request's trailer section the fields that only mean something in a
/// header section and must not reach the upstream as trailers: hop-by-hop fields, framing
/// (`Content-Length`, `Transfer-Encoding`) and routing (`Host`) — RFC 9110 §6.5.1 lists
/// framing, routing and request modifiers among the fields a trailer cannot carry.
pub(super) fn sanitize_trailers(t: &mut http::HeaderMap) {
    let drop: Vec<http::HeaderName> = t
        .keys()
        .filter(|n| {
            is_hop_by_hop(n)
                || *n == http::header::CONTENT_LENGTH
                || *n == http::header::TRANSFER_ENCODING
                || *n == http::header::HOST
        })
        .cloned()
        .collect();
    for n in drop {
        t.remove(n);
    }
}

/// Header names a `Connection` header nominates, framing headers excepted.
pub(super) fn connection_listed(h: &http::HeaderMap) -> Vec<http::HeaderName> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual tokens name no header; checked before anything is allocated.
        .filter(|s| {
            !s.is_empty()
                && !s.eq_ignore_ascii_case("close")
                && !s.eq_ignore_ascii_case("keep-alive")
                && !s.eq_ignore_ascii_case("upgrade")
        })
        .filter_map(|s| http::HeaderName::from_bytes(s.as_bytes()).ok())
        .filter(|n| n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING)
        .collect()
}

/// The hop-by-hop names present in `h` to remove: those its `Connection` lists and those of
/// the fixed set. `None` when it carries none (most messages: one pass over the names, no
/// allocation, instead of a removal per name). `Connection` and `Upgrade` themselves are
/// not in it (the callers decide on them).
fn hop_by_hop_names(h: &http::HeaderMap) -> Option<Vec<http::HeaderName>> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    let mut connection = false;
    for n in h.keys() {
        if n == http::header::CONNECTION {
            connection = true;
        } else if HOP_BY_HOP.contains(&n.as_str()) {
            names.push(n.clone());
        }
    }
    if connection {
        for n in connection_listed(h) {
            if h.contains_key(&n) && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    (!names.is_empty()).then_some(names)
}

/// Removes hop-by-hop headers from the request sent upstream; `Upgrade` and `Connection`
/// survive only on an upgrade request (WebSocket). A client's `TE: trailers` goes on as
/// `TE: trailers` (the one value RFC 9113 §8.2.2 allows in HTTP/2; gRPC servers ask for
/// it, and Envoy and nginx's `grpc_pass` forward it), any other `TE` value is dropped.
pub fn strip_hop_by_hop_request(req: &mut RequestHeader, upgrade: bool) {
    if let Some(names) = hop_by_hop_names(&req.headers) {
        let trailers = req.headers.get_all(http::header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("trailers")
                })
            })
        });
        for n in &names {
            req.remove_header(n);
        }
        if trailers {
            let _ = req.insert_header(http::header::TE, "trailers");
        }
    }
    if !upgrade {
        req.remove_header(&http::header::UPGRADE);
        req.remove_header(&http::header::CONNECTION);
    }
}

/// Removes hop-by-hop headers from the upstream's response.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    let Some(names) = hop_by_hop_names(&resp.headers) else {
        return;
    };
    for n in &names {
        resp.remove_header(n);
    }
}

/// Removes from a client's request every header in `owned` (the gateway sets them).
pub fn remove_owned(req: &mut RequestHeader, owned: &[http::HeaderName]) {
    let present: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| owned.contains(n))
        .cloned()
        .collect();
    for n in &present {
        req.remove_header(n);
    }
}

/// `t` as `2026-11-25T15:42:47.123Z` (UTC, milliseconds, like JavaScript's
/// `toISOString`): the calendar fields from `time`, the digits written directly rather
/// than through a format description on the request path.
pub fn iso8601_millis(t: SystemTime) -> [u8; 24] {
    let dt: time::OffsetDateTime = t.into();
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, dt.year().clamp(0, 9999) as u32);
    put(5, 2, u32::from(u8::from(dt.month())));
    put(8, 2, u32::from(dt.day()));
    put(11, 2, u32::from(dt.hour()));
    put(14, 2, u32::from(dt.minute()));
    put(17, 2, u32::from(dt.second()));
    put(20, 3, u32::from(dt.millisecond()));
    out
}

/// Sets the headers the gateway owns on the upstream request: request id, forwarding
/// headers (see `client_addr`), timestamp and `Host`.
pub fn set_forwarding(
    req: &mut RequestHeader,
    ctx: &RequestCtx,
    host_policy: &HostHeader,
    endpoint: Option<&str>,
) -> Result<()> {
    req.insert_header("x-request-id", ctx.request_id.as_str())?;
    let proto = if ctx.tls { "https" } else { "http" };
    super::client_addr::set_forwarding_headers(
        req,
        ctx.client.as_ref(),
        ctx.host_header.as_ref(),
        proto,
    )?;
    let now = iso8601_millis(SystemTime::now());
    req.insert_header(
        "x-request-timestamp",
        HeaderValue::from_bytes(&now)
            .map_err(|_| Error::explain(ErrorType::InternalError, "timestamp header"))?,
    )?;
    match host_policy {
        HostHeader::Preserve => {}
        HostHeader::Endpoint => {
            if let Some(e) = endpoint {
                req.insert_header(http::header::HOST, e)?;
            }
        }
        HostHeader::Set(v) => req.insert_header(http::header::HOST, v.as_str())?,
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
        for h in ["connection", "x-secret", "keep-alive"] {
            assert!(req.headers.get(h).is_none(), "{h} survived");
        }
        assert!(req.headers.get("x-fine").is_some());
        assert_eq!(req.headers["te"], "trailers", "gRPC's TE: trailers goes on");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("te", "gzip;q=0.5, Trailers").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        assert_eq!(req.headers["te"], "trailers", "only the trailers token");
        req.insert_header("te", "gzip").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        assert!(
            req.headers.get("te").is_none(),
            "other codings are hop-by-hop"
        );
    }

    #[test]
    fn connection_alone_is_removed_and_only_present_hop_by_hop_names_are_touched() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive").unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        req.insert_header("x-fine", "1").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("upgrade").is_none());
        assert_eq!(req.headers.len(), 1);

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "Keep-Alive, X-Hop")
            .unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        resp.insert_header("x-fine", "1").unwrap();
        assert_eq!(
            hop_by_hop_names(&resp.headers),
            Some(vec![http::HeaderName::from_static("x-hop")])
        );
        strip_hop_by_hop_response(&mut resp);
        assert!(resp.headers.get("x-hop").is_none());
        assert!(resp.headers.get("x-fine").is_some());

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "keep-alive").unwrap();
        resp.insert_header("content-type", "text/plain").unwrap();
        assert_eq!(hop_by_hop_names(&resp.headers), None, "nothing to remove");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn strips_a_lone_hop_by_hop_header_and_keeps_ordinary_requests_intact() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("proxy-authorization", "Basic x").unwrap();
        req.insert_header("x-fine", "1").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        assert!(req.headers.get("proxy-authorization").is_none());
        assert_eq!(req.headers.len(), 1);

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("trailer", "x-checksum").unwrap();
        resp.insert_header("content-type", "text/plain").unwrap();
        strip_hop_by_hop_response(&mut resp);
        assert!(resp.headers.get("trailer").is_none());
        assert_eq!(resp.headers.len(), 1);
    }

    #[test]
    fn removes_owned_headers_only() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user-id", "spoofed").unwrap();
        req.insert_header("x-other", "1").unwrap();
        let owned = [
            http::HeaderName::from_static("x-user-id"),
            http::HeaderName::from_static("x-roles"),
        ];
        remove_owned(&mut req, &owned);
        assert!(req.headers.get("x-user-id").is_none());
        assert_eq!(req.headers.get("x-other").unwrap(), "1");
    }

    #[test]
    fn timestamps_match_rfc3339_with_milliseconds() {
        use std::time::Duration;
        let cases = [
            0u64,
            951_782_400_123,   // 2000-02-29 (leap day)
            1_709_251_199_999, // 2024-02-29T23:59:59.999
            1_795_622_567_042, // 2026-11-25
            4_102_444_800_000, // 2100-01-01 (not a leap year)
        ];
        for ms in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let ours = String::from_utf8(iso8601_millis(t).to_vec()).unwrap();
            let dt: time::OffsetDateTime = t.into();
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            assert_eq!(ours, want, "{ms}");
        }
    }
}
