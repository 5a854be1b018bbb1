//! HTTP/1 conformance at the edge: the checks and rewrites of a client's request before it
//! is routed (Host, absolute-form targets, header limits, client-nominated hop-by-hop
//! headers), `Expect: 100-continue` and request buffering, and the HTTP version of
//! forwarded responses. The limits of the read itself (header bytes, header deadline,
//! connection cap) are pingora's, set per listener in `app.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{header, HeaderValue, Version};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::refusal::Refusal;
use crate::config::model::HttpListenerConfig;

/// Per-listener request limits checked on the parsed header (RFC 6585 §5, RFC 9110 §15.5.15).
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    /// Largest header section in bytes (431).
    pub max_header_bytes: usize,
    /// Largest header field line in bytes (431).
    pub max_line_bytes: usize,
    /// Most header fields (431).
    pub max_headers: usize,
    /// Longest request-target in bytes (414).
    pub max_uri_bytes: usize,
    /// Serve pipelined HTTP/1.1 requests in order (RFC 9112 §9.3.2).
    pub pipelining: bool,
}

impl From<&HttpListenerConfig> for EdgeLimits {
    fn from(c: &HttpListenerConfig) -> Self {
        Self {
            max_header_bytes: c.max_request_header_bytes,
            max_line_bytes: c.max_header_line_bytes,
            max_headers: c.max_headers,
            max_uri_bytes: c.max_uri_bytes,
            pipelining: c.pipelining,
        }
    }
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self::from(&HttpListenerConfig::default())
    }
}

/// Checks a parsed request against the listener's limits, refuses a repeated
/// `Content-Length` (400 `protocol_error`, RFC 9110 §8.6), and applies RFC 9112 §3.2's Host rules:
/// an HTTP/1.1 request needs exactly one Host whose value is a valid `uri-host[:port]`
/// (a list, an empty value or junk is 400), unless its target is in absolute form (whose
/// authority pingora has already put in a differing Host: vendor/PATCHES.md, patch 4).
pub fn check_request(req: &RequestHeader, limits: &EdgeLimits) -> Result<(), Refusal> {
    let uri_len = req.raw_path().len();
    if uri_len > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    if req.headers.len() > limits.max_headers {
        return Err(Refusal::TooManyHeaderFields);
    }
    let mut total = req.method.as_str().len() + uri_len + 12;
    for (n, v) in &req.headers {
        let line = n.as_str().len() + 2 + v.len();
        if line > limits.max_line_bytes {
            return Err(Refusal::HeaderFieldTooLarge);
        }
        total += line + 2;
    }
    if total > limits.max_header_bytes {
        return Err(Refusal::HeaderSectionTooLarge);
    }
    // pingora refuses differing Content-Length values but accepts repeated identical ones
    // and forwards every copy: a strict upstream then refuses the request (or a lenient
    // one frames it its own way). RFC 9110 §8.6 allows refusing them; nginx does.
    if req
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Refusal::ProtocolError);
    }
    if req.version != Version::HTTP_11 {
        return Ok(()); // HTTP/1.0 needs no Host; HTTP/2 carries :authority
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if absolute_target(req).is_some() => Ok(()),
        (None, _) => Err(Refusal::MissingHost),
        (Some(_), Some(_)) => Err(Refusal::MultipleHosts),
        (Some(h), None) if valid_host(h) => Ok(()),
        (Some(_), None) => Err(Refusal::InvalidHost),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): parsable as an authority, without userinfo and
/// without the comma of a combined list.
fn valid_host(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && !b.contains(&b',')
        && !b.contains(&b'@')
        && http::uri::Authority::try_from(b).is_ok()
}

/// The parsed target of an absolute-form request (`GET http://h/p`). pingora keeps such a
/// target verbatim and gives the URI only its path.
fn absolute_target(req: &RequestHeader) -> Option<http::Uri> {
    let raw = req.raw_path();
    let scheme_end = raw.windows(3).position(|w| w == b"://")?;
    if !raw[..scheme_end].eq_ignore_ascii_case(b"http")
        && !raw[..scheme_end].eq_ignore_ascii_case(b"https")
    {
        return None;
    }
    http::Uri::try_from(raw)
        .ok()
        .filter(|u| u.authority().is_some())
}

/// Turns an absolute-form request into origin form before it is routed: the target's
/// authority becomes `Host` (pingora has already replaced a differing one), so routing,
/// filters, logs and the upstream all see one host, and the upstream gets `/path?query`
/// (RFC 9112 §3.2.2: the target's authority wins; an origin server expects origin form).
///
/// An HTTP/2 request's `:authority` becomes `Host` the same way when it has none (RFC 9113
/// §8.3.1: an intermediary that forwards to HTTP/1.1 must make `Host` from it; an HTTP/2
/// upstream gets it back as `:authority`).
pub fn absolute_to_origin(req: &mut RequestHeader) {
    if req.version == Version::HTTP_2 && !req.headers.contains_key(header::HOST) {
        if let Some(v) = req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            let _ = req.insert_header(header::HOST, v);
        }
    }
    let Some(target) = absolute_target(req) else {
        return;
    };
    if !req.headers.contains_key(header::HOST) {
        if let Some(v) = target
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            let _ = req.insert_header(header::HOST, v);
        }
    }
    let pq = target.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(origin) = http::Uri::builder().path_and_query(pq).build() {
        req.set_uri(origin);
    }
}

/// Removes the headers the client's `Connection` header nominates, before any filter runs
/// (RFC 9110 §7.6.1; DESIGN.md: nothing the gateway sets is ever removed by a client's
/// `Connection`). `Connection` keeps only the options pingora reads (`close`, `keep-alive`,
/// `upgrade`); `Host` and the framing headers are never removed this way.
pub fn strip_client_nominated(req: &mut RequestHeader) {
    if !req.headers.contains_key(header::CONNECTION) {
        return;
    }
    for n in super::headers::connection_listed(&req.headers) {
        if n != header::HOST {
            req.remove_header(&n);
        }
    }
    let kept: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| matches!(t.as_str(), "close" | "keep-alive" | "upgrade"))
        .collect();
    req.remove_header(&header::CONNECTION);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            let _ = req.insert_header(header::CONNECTION, v);
        }
    }
}

/// Reads the request body before the request goes upstream: the first `prefix` bytes for
/// filters, or, with `whole` > 0, the complete body (request buffering, or a filter that
/// buffers it), which it returns whole. A client that sent `Expect: 100-continue` is answered
/// `100 Continue` first (RFC 9110 §10.1.1) and the expectation is not forwarded: the gateway
/// met it. pingora's retry buffer replays what was read to the upstream (a body larger than
/// that buffer is put back in it by the caller, [`replay_body`]). Errors: 400 for a malformed
/// body, 413 beyond `whole`.
pub async fn read_body(
    session: &mut Session,
    prefix: usize,
    whole: usize,
) -> Result<Option<Bytes>, Refusal> {
    if prefix == 0 && whole == 0 {
        return Ok(None);
    }
    if session.as_mut().is_body_empty() {
        return Ok(None);
    }
    answer_expect_continue(session).await;
    session.as_mut().enable_retry_buffering();
    let limit = if whole > 0 { whole } else { prefix };
    let mut buf = Vec::new();
    loop {
        if whole == 0 && buf.len() >= prefix {
            break;
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if whole > 0 && buf.len() > limit {
                    return Err(Refusal::BodyOverBuffer);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "request body refused");
                return Err(Refusal::BadRequestBody);
            }
        }
    }
    if whole == 0 {
        buf.truncate(prefix);
    }
    Ok(Some(Bytes::from(buf)))
}

/// Makes `body` the request body sent upstream for a body read whole before connecting: a
/// filter's replacement (then `Content-Length` is set to its length and a
/// `Transfer-Encoding` removed: the upstream gets a sized body, RFC 9112 §6.2), or the
/// client's body when it outgrew pingora's retry buffer (64 KiB). Vendored pingora patch 10
/// (`set_retry_buffer`): pingora has no hook that supplies a request body it did not read.
pub fn replay_body(session: &mut Session, body: Bytes, replaced: bool) -> Result<(), Refusal> {
    if replaced {
        let req = session.req_header_mut();
        req.remove_header(&header::TRANSFER_ENCODING);
        req.insert_header(header::CONTENT_LENGTH, body.len())
            .map_err(|_| Refusal::BadRequestBody)?;
    }
    if (replaced || session.as_ref().retry_buffer_truncated())
        && !session.as_mut().set_retry_buffer(body)
    {
        return Err(Refusal::BadRequestBody);
    }
    Ok(())
}

/// Largest request body read and dropped so that a refused request keeps its connection
/// (nginx discards a refused request's body the same way); a larger one closes it.
const DISCARD_BODY_BYTES: u64 = 64 * 1024;

/// Reads and drops a refused request's body when it is small and already on its way, so
/// that the connection can serve the client's next request.
pub async fn discard_small_body(session: &mut Session) {
    if session.as_mut().is_body_done() {
        return;
    }
    let small = super::headers::content_length(session.req_header())
        .is_some_and(|n| n <= DISCARD_BODY_BYTES);
    let expects = session.req_header().headers.contains_key(header::EXPECT);
    if !small || expects {
        return; // the response closes the connection instead
    }
    let drain = session.as_mut().drain_request_body();
    if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::debug!("request body not discarded in time");
    }
}

async fn answer_expect_continue(session: &mut Session) {
    let req = session.req_header();
    let expects = req.version == Version::HTTP_11
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects {
        return;
    }
    session.req_header_mut().remove_header(&header::EXPECT);
    if session.as_ref().body_bytes_read() == 0 {
        if let Err(e) = session.as_mut().write_continue_response().await {
            tracing::debug!(error = %e, "could not send 100 Continue");
        }
    }
}

/// After SIGTERM (`draining`, set by `app.rs`) responses ask clients to close their
/// connection.
pub fn close_if_draining(session: &mut Session, draining: &AtomicBool) {
    if draining.load(Ordering::Relaxed) {
        session.set_keepalive(None);
    }
}

/// An intermediary sends its own HTTP version (RFC 9110 §6.2): HTTP/1.1 on HTTP/1
/// connections whatever the upstream spoke. An HTTP/1.0 client cannot take chunked coding
/// (RFC 9112 §6.1), so a body without a length goes to it close-delimited.
pub fn downstream_version(session: &Session, resp: &mut ResponseHeader) {
    if session.as_ref().is_http2() {
        return;
    }
    resp.set_version(Version::HTTP_11);
    if session.req_header().version == Version::HTTP_10
        && resp.headers.contains_key(header::TRANSFER_ENCODING)
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
    {
        resp.remove_header(&header::TRANSFER_ENCODING);
    }
}

/// Where ACME HTTP-01 challenges are fetched (RFC 8555 §8.3): never redirected.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The key authorization answering an ACME HTTP-01 challenge (RFC 8555 §8.3): a `GET`
/// (or `HEAD`) of `/.well-known/acme-challenge/TOKEN` over clear text, for a token whose
/// challenge is pending. Other tokens are routed as usual (another ACME client may be
/// behind the gateway).
pub fn acme_http01(
    session: &Session,
    ctx: &super::ctx::RequestCtx,
    tokens: &crate::tls::acme::Http01Tokens,
) -> Option<String> {
    let req = session.req_header();
    if ctx.tls || !(req.method == http::Method::GET || req.method == http::Method::HEAD) {
        return None;
    }
    let token = req.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
    tokens.answer(token)
}

/// `redirect_https` on the listener that accepted this request: the `Location` of its
/// 308 (see [`https_location`]), or `None` (no redirect on this listener, a TLS
/// connection, or a request [`https_location`] leaves alone).
pub fn https_redirect(session: &Session, ctx: &super::ctx::RequestCtx) -> Option<HeaderValue> {
    if ctx.tls {
        return None;
    }
    let local = session.server_addr()?.as_inet()?;
    let listener = crate::client_addr::ListenerTrust::find(&ctx.snap.listeners, *local)?;
    let port = listener.redirect_https?;
    let trusted = ctx.client.is_some_and(|c| c.peer_trusted);
    https_location(session.req_header(), port, trusted)
}

/// `https://host[:port]/path?query` for a clear-text request (nginx's `return 308
/// https://$host$request_uri`; 308 keeps the method and body, RFC 9110 §15.4.9): the host
/// from the absolute-form target or `Host` (its port dropped), `https_port` unless 443,
/// the target as sent. `None` for an ACME HTTP-01 challenge, a request a trusted proxy
/// says came over https (`X-Forwarded-Proto: https`: redirecting would loop), a target
/// that is not a path (`*`), or no valid host: those are served or refused as usual.
pub fn https_location(
    req: &RequestHeader,
    https_port: Option<u16>,
    peer_trusted: bool,
) -> Option<HeaderValue> {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if !target.starts_with('/') || target.starts_with(ACME_CHALLENGE_PREFIX) {
        return None;
    }
    let forwarded_https = req
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if peer_trusted && forwarded_https {
        return None;
    }
    let absolute = absolute_target(req).and_then(|u| u.authority().cloned());
    let authority = match absolute {
        Some(a) => a,
        None => {
            let host = req.headers.get(header::HOST)?;
            http::uri::Authority::try_from(host.as_bytes()).ok()?
        }
    };
    let port = match https_port {
        None | Some(443) => String::new(),
        Some(p) => format!(":{p}"),
    };
    HeaderValue::from_str(&format!("https://{}{port}{target}", authority.host())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[(&str, &str)], target: &str, version: Version) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        r.set_version(version);
        for (n, v) in raw {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_repeated_content_length_is_refused_even_when_identical() {
        let l = EdgeLimits::default();
        for v in [Version::HTTP_11, Version::HTTP_10] {
            let one = req(&[("host", "h"), ("content-length", "5")], "/", v);
            assert!(check_request(&one, &l).is_ok());
            let two = req(
                &[
                    ("host", "h"),
                    ("content-length", "5"),
                    ("content-length", "5"),
                ],
                "/",
                v,
            );
            let r = check_request(&two, &l).map_err(|e| e.code());
            assert_eq!(r, Err("protocol_error"));
        }
    }

    #[test]
    fn host_rules() {
        let l = EdgeLimits::default();
        let v11 = Version::HTTP_11;
        assert!(check_request(&req(&[("host", "a.example.com:8080")], "/", v11), &l).is_ok());
        assert!(check_request(&req(&[("host", "[::1]:80")], "/", v11), &l).is_ok());
        for bad in ["", "a.example.com, b.example.com", "a,b", "u@h", "a b"] {
            let r = check_request(&req(&[("host", bad)], "/", v11), &l);
            assert_eq!(r.map_err(|e| e.status()), Err(400), "{bad:?}");
        }
        assert_eq!(
            check_request(&req(&[], "/", v11), &l).map_err(|e| e.status()),
            Err(400)
        );
        assert!(check_request(&req(&[], "http://a.example.com/x", v11), &l).is_ok());
        assert!(check_request(&req(&[], "/", Version::HTTP_10), &l).is_ok());
    }

    #[test]
    fn limits() {
        let l = EdgeLimits {
            max_header_bytes: 200,
            max_line_bytes: 50,
            max_headers: 3,
            max_uri_bytes: 20,
            pipelining: true,
        };
        let ok = req(&[("host", "h")], "/", Version::HTTP_11);
        assert!(check_request(&ok, &l).is_ok());
        let long_uri = req(
            &[("host", "h")],
            &format!("/{}", "a".repeat(20)),
            Version::HTTP_11,
        );
        assert_eq!(
            check_request(&long_uri, &l).map_err(|e| e.status()),
            Err(414)
        );
        let long_line = req(
            &[("host", "h"), ("x", &"a".repeat(50))],
            "/",
            Version::HTTP_11,
        );
        assert_eq!(
            check_request(&long_line, &l).map_err(|e| e.status()),
            Err(431)
        );
        let many = req(
            &[("host", "h"), ("a", "1"), ("b", "1"), ("c", "1")],
            "/",
            Version::HTTP_11,
        );
        assert_eq!(check_request(&many, &l).map_err(|e| e.status()), Err(431));
        let big = req(
            &[
                ("host", "h"),
                ("a", &"a".repeat(60)),
                ("b", &"b".repeat(60)),
                ("c", &"c".repeat(60)),
            ],
            "/",
            Version::HTTP_11,
        );
        let l2 = EdgeLimits {
            max_headers: 10,
            max_line_bytes: 100,
            ..l
        };
        assert_eq!(check_request(&big, &l2).map_err(|e| e.status()), Err(431));
    }

    #[test]
    fn nominated_headers_go_and_options_stay() {
        let mut r = req(
            &[
                ("host", "h"),
                ("connection", "keep-alive, X-User-Id, Host, Content-Length"),
                ("x-user-id", "forged"),
                ("content-length", "0"),
            ],
            "/",
            Version::HTTP_11,
        );
        strip_client_nominated(&mut r);
        assert!(r.headers.get("x-user-id").is_none());
        assert_eq!(r.headers["host"], "h");
        assert_eq!(r.headers["content-length"], "0");
        assert_eq!(r.headers["connection"], "keep-alive");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_authority_as_host() {
        let mut r = req(&[], "http://admin.example.com/whoami?x=1", Version::HTTP_11);
        assert!(check_request(&r, &EdgeLimits::default()).is_ok());
        absolute_to_origin(&mut r);
        assert_eq!(r.headers["host"], "admin.example.com");
        assert_eq!(r.raw_path(), b"/whoami?x=1");
        assert_eq!(r.uri.path(), "/whoami");
    }

    #[test]
    fn https_location_keeps_the_target_and_skips_challenges_and_forwarded_https() {
        let req = |target: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            for (n, v) in headers {
                r.insert_header(n.to_string(), *v).unwrap();
            }
            r
        };
        let loc = |r: &RequestHeader, port, trusted| {
            https_location(r, port, trusted).map(|v| v.to_str().unwrap().to_string())
        };
        let host = [("host", "shop.test:8080")];
        assert_eq!(
            loc(&req("/a?b=1", &host), Some(8443), false).as_deref(),
            Some("https://shop.test:8443/a?b=1")
        );
        assert_eq!(
            loc(&req("/a", &host), Some(443), false).as_deref(),
            Some("https://shop.test/a")
        );
        assert_eq!(
            loc(&req("http://abs.test:80/x", &host), None, false).as_deref(),
            Some("https://abs.test/x"),
            "the absolute-form target's authority wins (RFC 9112 §3.2.2)"
        );
        assert_eq!(
            loc(&req("/.well-known/acme-challenge/t", &host), None, false),
            None
        );
        let via_tls = [("host", "shop.test"), ("x-forwarded-proto", "https")];
        assert_eq!(
            loc(&req("/a", &via_tls), None, true),
            None,
            "no loop behind a TLS proxy"
        );
        assert_eq!(
            loc(&req("/a", &via_tls), None, false).as_deref(),
            Some("https://shop.test/a"),
            "an untrusted client's X-Forwarded-Proto means nothing"
        );
        assert_eq!(loc(&req("/a", &[("host", "bad host")]), None, false), None);
        assert_eq!(loc(&req("*", &host), None, false), None);
    }
}
