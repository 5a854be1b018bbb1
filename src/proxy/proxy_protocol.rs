//! PROXY protocol v1/v2 on a listener (HAProxy's `accept-proxy`): the header a load
//! balancer writes before the first HTTP byte is read off the accepted connection, and its
//! source address becomes the connection's peer. Accepted only from `trusted_proxies`.
//!
//! pingora hands every accepted connection to a `ServerApp` before any HTTP parsing
//! (`process_new`), so the header is read there by wrapping the HTTP app; nothing in
//! pingora needed a change. On a TLS listener the header comes first and the handshake
//! (`proxy/tls.rs`) follows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::socket::SocketAddr as L4Addr;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use ppp::{v1, v2, HeaderResult};
use tokio::io::AsyncReadExt;

use crate::client_addr::ListenerTrust;
use crate::state::State;

/// Why a connection was closed before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The peer is not in `trusted_proxies`: nobody else may name a client address.
    #[error("peer {0} is not a trusted proxy")]
    Untrusted(IpAddr),
    /// Not a PROXY header, or a malformed one.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// The header did not arrive in time, or the connection ended first.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest v1 header (spec section 2.1: 107 bytes with CRLF).
const V1_MAX: usize = 107;
/// The v2 signature (spec section 2.2).
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads exactly one PROXY header (never a byte of what follows it) and returns the
/// source address it names: `None` for `UNKNOWN` (v1) and `LOCAL` or non-IP (v2), where the
/// spec says to keep the connection's own addresses.
pub async fn read_header<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 16];
    // 8 bytes tell the version apart ("PROXY " or the v2 signature's start) and are
    // shorter than the shortest header of either ("PROXY UNKNOWN\r\n" is 15).
    r.read_exact(&mut buf[..8]).await?;
    if buf.starts_with(b"PROXY ") {
        buf.truncate(8);
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Invalid("v1 header over 107 bytes".into()));
            }
            buf.push(r.read_u8().await?);
        }
    } else if buf[..8] == V2_SIG[..8] {
        r.read_exact(&mut buf[8..16]).await?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        r.read_exact(&mut buf[16..]).await?;
    } else {
        return Err(ProxyHeaderError::Invalid("no PROXY signature".into()));
    }
    let invalid = |e: &dyn std::fmt::Display| ProxyHeaderError::Invalid(e.to_string());
    Ok(match HeaderResult::parse(&buf) {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => None,
        },
        HeaderResult::V1(Err(e)) => return Err(invalid(&e)),
        HeaderResult::V2(Err(e)) => return Err(invalid(&e)),
    })
}

/// Checks the peer, reads its PROXY header and makes the header's source the
/// connection's peer address (what `Session::client_addr` reports from then on).
pub async fn accept(
    stream: &mut Stream,
    listener: &ListenerTrust,
    timeout: Duration,
) -> Result<(), ProxyHeaderError> {
    let digest = stream.get_socket_digest();
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    match peer {
        Some(ip) if listener.trusted.contains(ip) => {}
        Some(ip) => return Err(ProxyHeaderError::Untrusted(ip)),
        None => return Err(ProxyHeaderError::Invalid("no peer address".into())),
    }
    let source = tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if let Some(source) = source {
        let d = SocketDigest::from_raw_fd(stream.id());
        // A fresh digest: its cells are empty, so setting cannot fail.
        let _ = d.peer_addr.set(Some(L4Addr::Inet(source)));
        if let Some(local) = digest.as_ref().and_then(|d| d.local_addr()) {
            let _ = d.local_addr.set(Some(local.clone()));
        }
        stream.set_socket_digest(d);
    }
    Ok(())
}

/// Wraps the HTTP app of one listener: when the current snapshot says this listener
/// speaks PROXY protocol, each connection's header is read (and its peer checked) before
/// the app sees a byte; a refused connection is closed without a response.
pub struct ProxyProtocol<A> {
    /// The HTTP app.
    pub inner: Arc<A>,
    /// For the listener's current trust settings.
    pub state: Arc<State>,
    /// How long the header may take (the listener's header read timeout).
    pub timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ProxyProtocol<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let snap = self.state.current();
        let listener = local.and_then(|l| ListenerTrust::find(&snap.listeners, l));
        if let Some(l) = listener.filter(|l| l.proxy_protocol) {
            if let Err(e) = accept(&mut stream, l, self.timeout).await {
                tracing::debug!(error = %e, "connection closed before HTTP");
                return None;
            }
        }
        drop(snap);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let mut r = bytes;
        let res = read_header(&mut r).await.map_err(|e| e.to_string());
        (res, r.to_vec())
    }

    #[tokio::test]
    async fn v1_headers() {
        let (r, rest) =
            parse(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8080\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("198.51.100.7:40000".parse().unwrap())));
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "not a byte past the header is read"
        );
        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8080\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:40000".parse().unwrap())));
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r, Ok(None));
        assert!(parse(b"PROXY TCP4 nonsense\r\n").await.0.is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").await.0.is_err());
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(parse(long.as_bytes()).await.0.is_err());
    }

    #[tokio::test]
    async fn v2_headers() {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        h.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1]);
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&8080u16.to_be_bytes());
        h.extend_from_slice(b"GET");
        let (r, rest) = parse(&h).await;
        assert_eq!(r, Ok(Some("198.51.100.7:40000".parse().unwrap())));
        assert_eq!(rest, b"GET");
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]); // v2 LOCAL (a balancer's health check)
        assert_eq!(parse(&local).await.0, Ok(None));
        let mut bad = V2_SIG.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]); // version 3
        assert!(parse(&bad).await.0.is_err());
    }
}
