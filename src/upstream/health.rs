//! Active health checks: one HTTP request or TCP connect to an endpoint, with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::model::{HealthCheckConfig, HealthCheckKind};

/// Why a check failed (logged on the transition to unhealthy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The connection could not be made.
    #[error("connect failed: {0}")]
    Connect(String),
    /// No complete answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The answer was not HTTP.
    #[error("malformed response")]
    Malformed,
    /// The status was outside the expected range.
    #[error("status {0} outside the expected range")]
    Status(u16),
    /// The body lacked the expected substring.
    #[error("body does not contain the expected text")]
    Body,
}

/// Runs one check against `addr`.
pub async fn check(addr: SocketAddr, cfg: &HealthCheckConfig) -> Result<(), CheckFailure> {
    match tokio::time::timeout(cfg.timeout.get(), check_inner(addr, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(CheckFailure::Timeout),
    }
}

async fn check_inner(addr: SocketAddr, cfg: &HealthCheckConfig) -> Result<(), CheckFailure> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| CheckFailure::Connect(e.to_string()))?;
    if cfg.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let host = cfg.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n",
        cfg.method, cfg.path
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| CheckFailure::Connect(e.to_string()))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Read to EOF (Connection: close), at most 64 KiB.
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| CheckFailure::Malformed)?;
        if n == 0 || buf.len() >= 64 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if cfg.body_contains.is_none() && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let status = parse_status(&buf).ok_or(CheckFailure::Malformed)?;
    if status < cfg.expected_status[0] || status > cfg.expected_status[1] {
        return Err(CheckFailure::Status(status));
    }
    if let Some(want) = &cfg.body_contains {
        let body_start = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |p| p + 4);
        if !String::from_utf8_lossy(&buf[body_start..]).contains(want.as_str()) {
            return Err(CheckFailure::Body);
        }
    }
    Ok(())
}

fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The interval with up to 10% random jitter, so that many gateways don't check in step.
pub fn jittered(interval: Duration) -> Duration {
    let jitter = interval.as_secs_f64() * 0.1 * rand::random::<f64>();
    interval + Duration::from_secs_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}
