//! A real HTTPS upstream: the test kit's echo upstream behind OpenSSL, HTTP/1.1 or HTTP/2
//! as the client's ALPN chooses, optionally requiring a client certificate from a CA.

use std::pin::Pin;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openssl::pkey::PKey;
use openssl::ssl::{
    select_next_proto, AlpnError, Ssl, SslAcceptor, SslMethod, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use pingora_core::tls::tokio_ssl::SslStream;

use super::pki::Leaf;
use super::TestUpstream;

/// Starts an echo upstream named `name` that serves `leaf` over TLS (at most `max_version`);
/// with `client_ca`, a client without a certificate signed by it is refused (mutual TLS).
pub async fn https_upstream(
    name: &str,
    leaf: &Leaf,
    client_ca: Option<X509>,
    max_version: Option<SslVersion>,
) -> TestUpstream {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_max_proto_version(max_version).unwrap();
    b.set_certificate(&X509::from_pem(leaf.cert.as_bytes()).unwrap())
        .unwrap();
    b.set_private_key(&PKey::private_key_from_pem(leaf.key.as_bytes()).unwrap())
        .unwrap();
    b.set_alpn_select_callback(|_, offered| {
        select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    if let Some(ca) = client_ca {
        b.cert_store_mut().add_cert(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    let acceptor = b.build();
    TestUpstream::start_served(name, "127.0.0.1:0", move |listener, app| async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (ssl, app) = (Ssl::new(acceptor.context()).unwrap(), app.clone());
            tokio::spawn(async move {
                let mut s = SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), TowerToHyperService::new(app))
                    .await;
            });
        }
    })
    .await
}
