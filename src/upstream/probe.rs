//! The gateway's own small HTTP/1.1 client for probing endpoints: one request with
//! `Connection: close`, the status line and (when asked) the body up to a bound. Shared
//! by active health checks and the scraping of the services' pool gauges. Callers bound
//! the whole exchange with their own timeout.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The connection could not be made or the request not written.
    #[error("connect failed: {0}")]
    Connect(String),
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

/// A TCP connection to `addr` (a TCP health check stops here).
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))
}

/// Sends `method path` with `Host: host` on a new connection to `addr` and reads the
/// answer: up to `max_bytes` in all, to the end when `want_body`, else only until the
/// header is complete.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    user_agent: &str,
    max_bytes: usize,
    want_body: bool,
) -> Result<ProbeResponse, ProbeError> {
    let mut stream = connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
    );
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
        let r = request(addr, "GET", "/metrics", "svc:1", "gatehouse", 1 << 20, true)
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
