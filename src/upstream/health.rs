//! Active health checks: one HTTP request or TCP connect to an endpoint, with a timeout.

use std::time::Duration;

use super::probe::{self, ProbeError, Target};
use crate::config::model::{HealthCheckConfig, HealthCheckKind};

/// Why a check failed (logged on the transition to unhealthy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The connection could not be made.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(String),
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

impl From<ProbeError> for CheckFailure {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Connect(m) => CheckFailure::Connect(m),
            ProbeError::Tls(m) => CheckFailure::Tls(m),
            ProbeError::Malformed => CheckFailure::Malformed,
        }
    }
}

/// Runs one check against `target` (over TLS for a TLS upstream: a `tcp` check then
/// completes the handshake too, as HAProxy's `check-ssl` does).
pub async fn check(target: Target<'_>, cfg: &HealthCheckConfig) -> Result<(), CheckFailure> {
    match tokio::time::timeout(cfg.timeout.get(), check_inner(target, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(CheckFailure::Timeout),
    }
}

async fn check_inner(target: Target<'_>, cfg: &HealthCheckConfig) -> Result<(), CheckFailure> {
    if cfg.kind == HealthCheckKind::Tcp {
        probe::open(target).await?;
        return Ok(());
    }
    let host = cfg.host.clone().unwrap_or_else(|| target.addr.to_string());
    // Read to EOF (Connection: close), at most 64 KiB, when the body is checked.
    let want_body = cfg.body_contains.is_some();
    let resp = probe::request(
        target,
        &cfg.method,
        &cfg.path,
        &host,
        "gatehouse-health-check",
        64 * 1024,
        want_body,
    )
    .await?;
    if resp.status < cfg.expected_status[0] || resp.status > cfg.expected_status[1] {
        return Err(CheckFailure::Status(resp.status));
    }
    if let Some(want) = &cfg.body_contains {
        if !String::from_utf8_lossy(&resp.body).contains(want.as_str()) {
            return Err(CheckFailure::Body);
        }
    }
    Ok(())
}

/// The interval with up to 10% random jitter, so that many gateways don't check in step.
pub fn jittered(interval: Duration) -> Duration {
    let jitter = interval.as_secs_f64() * 0.1 * rand::random::<f64>();
    interval + Duration::from_secs_f64(jitter)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot-per-connection server answering every request with `answer`.
    async fn server(answer: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    if !answer.is_empty() {
                        let _ = s.write_all(answer.as_bytes()).await;
                    } else {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                });
            }
        });
        addr
    }

    fn cfg(yaml: &str) -> HealthCheckConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn http_checks_status_range_and_body() {
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhealthy")
            .await;
        let bad = server(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        let junk = server("SSH-2.0-OpenSSH\r\n").await;
        let silent = server("").await;
        let c = cfg("{ interval: 1s, timeout: 300ms }");
        assert_eq!(check(Target::plain(ok), &c).await, Ok(()));
        assert_eq!(
            check(Target::plain(bad), &c).await,
            Err(CheckFailure::Status(503))
        );
        assert_eq!(
            check(Target::plain(junk), &c).await,
            Err(CheckFailure::Malformed)
        );
        assert_eq!(
            check(Target::plain(silent), &c).await,
            Err(CheckFailure::Timeout)
        );
        assert_eq!(
            check(Target::plain(ok), &cfg("{ body_contains: healthy }")).await,
            Ok(())
        );
        assert_eq!(
            check(Target::plain(ok), &cfg("{ body_contains: READY }")).await,
            Err(CheckFailure::Body)
        );
        assert_eq!(
            check(Target::plain(bad), &cfg("{ expected_status: [200, 599] }")).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn tcp_check_only_connects() {
        let silent = server("").await;
        let c = cfg("{ kind: tcp, timeout: 300ms }");
        assert_eq!(check(Target::plain(silent), &c).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(
            check(Target::plain(closed), &c).await,
            Err(CheckFailure::Connect(_))
        ));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(10) && j <= Duration::from_secs(11),
                "{j:?}"
            );
        }
    }
}
