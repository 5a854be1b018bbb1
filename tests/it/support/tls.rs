//! A TLS client for the gateway's TLS listeners (OpenSSL, as pingora's): a verified
//! handshake with chosen SNI, ALPN and version, the leaf the server sent, and requests on
//! the open connection.

use std::pin::Pin;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;
use pingora_core::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one client handshake should offer.
#[derive(Clone, Copy)]
pub struct Hello<'a> {
    pub sni: Option<&'a str>,
    pub alpn: &'a [&'a str],
    pub max_version: Option<SslVersion>,
}

pub const HTTP1: Hello<'static> = Hello {
    sni: Some("a.test"),
    alpn: &["http/1.1"],
    max_version: None,
};

/// A verified TLS connection to the gateway's proxy port (the chain must lead to `ca`;
/// the host name is not checked here, the tests compare the leaf they got).
pub async fn connect(
    port: u16,
    ca: &X509,
    hello: Hello<'_>,
) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.cert_store_mut().add_cert(ca.clone()).unwrap();
    if !hello.alpn.is_empty() {
        let mut wire = Vec::new();
        for p in hello.alpn {
            wire.push(p.len() as u8);
            wire.extend_from_slice(p.as_bytes());
        }
        b.set_alpn_protos(&wire).unwrap();
    }
    b.set_max_proto_version(hello.max_version).unwrap();
    let conf = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .use_server_name_indication(hello.sni.is_some());
    let ssl = conf.into_ssl(hello.sni.unwrap_or("unused")).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut s = SslStream::new(ssl, tcp).unwrap();
    tokio::time::timeout(Duration::from_secs(10), Pin::new(&mut s).connect())
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// The SHA-256 of the leaf the server sent.
pub fn served(s: &SslStream<TcpStream>) -> Vec<u8> {
    let cert = s.ssl().peer_certificate().expect("a server certificate");
    cert.digest(MessageDigest::sha256()).unwrap().to_vec()
}

/// The SHA-256 of the leaf a new handshake with `hello` gets (the connection is closed).
pub async fn leaf_of(port: u16, ca: &X509, hello: Hello<'_>) -> Vec<u8> {
    served(&connect(port, ca, hello).await.unwrap())
}

/// Appends what `s` sends by `deadline` to `buf`; `what` names what is awaited.
pub async fn read_more(
    s: &mut SslStream<TcpStream>,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    what: &str,
) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap();
    assert!(n > 0, "connection closed before the {what} ended");
    buf.extend_from_slice(&chunk[..n]);
}

/// One `GET path` on an open HTTP/1.1 connection: status and the header block.
pub async fn get_on(s: &mut SslStream<TcpStream>, host: &str, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                read_more(s, &mut buf, deadline, "body").await;
            }
            let status = head[9..12].parse().unwrap();
            return (status, head);
        }
        read_more(s, &mut buf, deadline, "response head").await;
    }
}
