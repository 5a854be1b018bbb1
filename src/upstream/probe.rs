//! The gateway's own small HTTP/1.1 client for probing endpoints: one request with
//! `Connection: close`, the status line and (when asked) the body up to a bound. Shared
//! by active health checks and the scraping of the services' pool gauges, over TLS with
//! the upstream's settings when it has them. Callers bound the whole exchange with their
//! own timeout.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::UpstreamTls;

/// Why a probe got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The connection could not be made or the request not written.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The TLS handshake failed (OpenSSL's reason).
    #[error("{0}")]
    Tls(String),
    /// The answer is not an HTTP/1.x response (or the read failed).
    #[error("malformed response")]
    Malformed,
}

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResponse {
    /// The status code.
    pub status: u16,
    /// The body as read (empty unless asked for), without transfer decoding.
    pub body: Vec<u8>,
}

/// Where a probe goes: the endpoint's socket address, and for a TLS upstream its settings
/// and the endpoint's `host:port` as configured (the default server name).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// Connected to.
    pub addr: SocketAddr,
    /// The upstream's TLS, spoken as a try speaks it.
    pub tls: Option<&'a UpstreamTls>,
    /// The endpoint's address as configured or discovered.
    pub address: &'a str,
}

impl<'a> Target<'a> {
    /// A clear-text target.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            address: "",
        }
    }
}

/// A TCP connection to `addr` (a TCP health check stops here).
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))
}

/// A connection to `target`, with its TLS handshake done when the upstream speaks TLS (a
/// TCP health check of a TLS upstream stops here).
pub async fn open(target: Target<'_>) -> Result<(), ProbeError> {
    let tcp = connect(target.addr).await?;
    if let Some(tls) = target.tls {
        tls.connect(tcp, target.address)
            .await
            .map_err(ProbeError::Tls)?;
    }
    Ok(())
}

/// Sends `method path` with `Host: host` on a new connection to `target` (over TLS when
/// the upstream speaks it) and reads the answer: up to `max_bytes` in all, to the end when
/// `want_body`, else only until the header is complete.
pub async fn request(
    target: Target<'_>,
    method: &str,
    path: &str,
    host: &str,
    user_agent: &str,
    max_bytes: usize,
    want_body: bool,
) -> Result<ProbeResponse, ProbeError> {
    let tcp = connect(target.addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
    );
    match target.tls {
        Some(tls) => {
            let stream = tls
                .connect(tcp, target.address)
                .await
                .map_err(ProbeError::Tls)?;
            exchange(stream, &req, max_bytes, want_body).await
        }
        None => exchange(tcp, &req, max_bytes, want_body).await,
    }
}

/// Writes `req` on `stream` and reads the answer (see [`request`]).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &str,
    max_bytes: usize,
    want_body: bool,
) -> Result<ProbeResponse, ProbeError> {
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ProbeError::Malformed)?;
        if n == 0 || buf.len() >= max_bytes {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !want_body && header_end(&buf).is_some() {
            break;
        }
    }
    buf.truncate(max_bytes);
    let status = parse_status(&buf).ok_or(ProbeError::Malformed)?;
    let body = match (want_body, header_end(&buf)) {
        (true, Some(end)) => buf[end..].to_vec(),
        _ => Vec::new(),
    };
    Ok(ProbeResponse { status, body })
}

/// Where the body starts: just after the header's empty line.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The status code of an HTTP/1.x status line.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }

    #[tokio::test]
    async fn reads_status_and_body_and_sends_the_host() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let r = request(
            Target::plain(addr),
            "GET",
            "/metrics",
            "svc:1",
            "gatehouse",
            1 << 20,
            true,
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let sent = server.await.unwrap();
        assert!(
            sent.starts_with("GET /metrics HTTP/1.1\r\nHost: svc:1\r\n"),
            "{sent}"
        );
    }
}
