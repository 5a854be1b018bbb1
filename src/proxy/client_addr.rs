//! The client's address on the request path: resolves it once per request from the
//! connection and the listener's trusted proxies (`crate::client_addr`), and writes the
//! forwarding headers the upstream receives.

use gatehouse_filters::ip_text::ip_text;
use http::HeaderValue;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::client_addr::{forwarded_node, ClientAddr, ListenerTrust, FORWARDED, X_FORWARDED_FOR};
use crate::state::Snapshot;

/// The client behind this request's connection, under the trust settings of the listener
/// that accepted it (none when the listener is unknown, e.g. removed by a reload).
/// `None` only for a connection without an IP peer (a Unix socket).
pub fn resolve(session: &Session, snap: &Snapshot) -> Option<ClientAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    let listener = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .and_then(|local| ListenerTrust::find(&snap.listeners, *local));
    let empty = crate::client_addr::TrustedProxies::default();
    let trusted = listener.map_or(&empty, |l| &l.trusted);
    Some(ClientAddr::resolve(
        peer,
        trusted,
        &session.req_header().headers,
    ))
}

fn value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|_| Error::explain(ErrorType::InternalError, "forwarding header value"))
}

/// Writes `X-Forwarded-For`, `X-Real-IP`, `X-Client-IP`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Forwarded` on the upstream request. From a trusted peer the
/// client's chains are kept and the peer appended (`X-Forwarded-For`, and `Forwarded` when
/// the client sent one, RFC 7239 section 4), and its `X-Forwarded-Proto`/`-Host` are kept
/// when present; from any other peer every one of them is replaced by what the gateway
/// saw. `host` is the client's `Host` header; `proto` the scheme it used (`http`, `https`).
pub fn set_forwarding_headers(
    req: &mut RequestHeader,
    client: Option<&ClientAddr>,
    host: Option<&HeaderValue>,
    proto: &'static str,
) -> Result<()> {
    let Some(c) = client else {
        for n in [
            X_FORWARDED_FOR,
            "x-real-ip",
            "x-client-ip",
            FORWARDED,
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            req.remove_header(n);
        }
        return Ok(());
    };
    let peer = ip_text(c.peer);
    let peer_value = value(&peer)?;
    // From an untrusted peer (most requests) the client is the peer: one text for both.
    let client_ip = if c.client == c.peer {
        peer_value.clone()
    } else {
        value(&ip_text(c.client))?
    };
    let xff = if c.peer_trusted && req.headers.contains_key(X_FORWARDED_FOR) {
        let mut chain = String::new();
        for v in req.headers.get_all(X_FORWARDED_FOR) {
            let v = String::from_utf8_lossy(v.as_bytes());
            let v = v.trim().trim_matches(',');
            if !v.is_empty() {
                chain.push_str(v);
                chain.push_str(", ");
            }
        }
        chain.push_str(&peer);
        value(&chain)?
    } else {
        peer_value
    };
    req.insert_header(X_FORWARDED_FOR, xff)?;
    req.insert_header("x-real-ip", client_ip.clone())?;
    req.insert_header("x-client-ip", client_ip)?;

    let keep = |req: &RequestHeader, n: &str| c.peer_trusted && req.headers.contains_key(n);
    if !keep(req, "x-forwarded-proto") {
        req.insert_header("x-forwarded-proto", HeaderValue::from_static(proto))?;
    }
    if !keep(req, "x-forwarded-host") {
        match host {
            Some(h) => req.insert_header("x-forwarded-host", h.clone())?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
    if keep(req, FORWARDED) {
        let mut chain = String::new();
        for v in req.headers.get_all(FORWARDED) {
            chain.push_str(&String::from_utf8_lossy(v.as_bytes()));
            chain.push_str(", ");
        }
        chain.push_str("for=");
        chain.push_str(&forwarded_node(c.peer));
        req.insert_header(FORWARDED, value(&chain)?)?;
    } else {
        req.remove_header(&http::header::FORWARDED);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_addr::TrustedProxies;

    fn upstream_headers(peer: &str, trusted: &[&str], sent: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in sent {
            req.append_header(k.to_string(), *v).unwrap();
        }
        let t = TrustedProxies::parse(trusted).unwrap();
        let c = ClientAddr::resolve(peer.parse().unwrap(), &t, &req.headers);
        let host = HeaderValue::from_static("gw.example");
        set_forwarding_headers(&mut req, Some(&c), Some(&host), "http").unwrap();
        req
    }

    fn get<'a>(r: &'a RequestHeader, n: &str) -> Vec<&'a str> {
        r.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn untrusted_peer_replaces_everything() {
        let r = upstream_headers(
            "203.0.113.9",
            &["10.0.0.0/8"],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-real-ip", "1.1.1.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=1.1.1.1"),
            ],
        );
        assert_eq!(get(&r, "x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(get(&r, "x-real-ip"), ["203.0.113.9"]);
        assert_eq!(get(&r, "x-client-ip"), ["203.0.113.9"]);
        assert_eq!(get(&r, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&r, "x-forwarded-host"), ["gw.example"]);
        assert!(get(&r, "forwarded").is_empty());
    }

    #[test]
    fn trusted_peer_appends_and_keeps() {
        let r = upstream_headers(
            "10.0.0.5",
            &["10.0.0.0/8"],
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-for", "10.1.1.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example"),
                ("forwarded", "for=198.51.100.7;proto=https"),
            ],
        );
        assert_eq!(
            get(&r, "x-forwarded-for"),
            ["198.51.100.7, 10.1.1.1, 10.0.0.5"]
        );
        assert_eq!(get(&r, "x-real-ip"), ["198.51.100.7"]);
        assert_eq!(get(&r, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&r, "x-forwarded-host"), ["api.example"]);
        assert_eq!(
            get(&r, "forwarded"),
            ["for=198.51.100.7;proto=https, for=10.0.0.5"]
        );
    }
}
