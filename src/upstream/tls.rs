//! TLS to an upstream's endpoints: its CA, client certificate and name, read from the
//! files once per config load, applied to each try's pingora peer and to health probes.

use std::hash::Hasher;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use pingora_core::tls::tokio_ssl::SslStream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::config::model::{DiscoveryConfig, UpstreamTlsConfig};
use crate::config::ConfigError;
use crate::tls::{CertError, CertifiedKey};

/// An upstream's TLS settings, ready for the request path. Two settings are equal when
/// their [`UpstreamTls::group_key`]s are (the files' contents and the options).
pub struct UpstreamTls {
    /// Trust anchors from `ca_file`; `None`: the system's roots.
    ca: Option<Arc<Box<[X509]>>>,
    /// The client certificate and key for mutual TLS.
    client: Option<Arc<CertKey>>,
    /// `server_name`, else the DNS discovery name; `None`: each endpoint's host.
    server_name: Option<String>,
    /// Verify the chain and the name.
    verify: bool,
    /// pingora's pool key for these settings: a peer with other settings never gets a
    /// connection made with these (pingora's own reuse hash leaves out the CA).
    pub group_key: u64,
    /// The health probes' connector, with the same trust, client certificate and verify.
    probe: SslConnector,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .field("group_key", &self.group_key)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.group_key == other.group_key
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Reads upstream `name`'s TLS files (relative to `dir`). Every problem is an error at
    /// `at` (`upstreams.NAME.tls`) plus the field, naming the upstream and the file: an
    /// unreadable file, no PEM certificate, a key that does not parse or is not the
    /// certificate's.
    pub fn load(
        cfg: &UpstreamTlsConfig,
        discovery: &DiscoveryConfig,
        dir: &Path,
        at: &str,
        name: &str,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut digest = Sha256::new();
        let err = |field: &str, file: &Path, msg: String| {
            ConfigError::at(
                format!("{at}.{field}"),
                format!("upstream {name:?}: {}: {msg}", file.display()),
            )
        };
        let ca = cfg.ca_file.as_ref().and_then(|f| {
            let path = dir.join(f);
            let read = std::fs::read(&path).map_err(|e| format!("cannot read: {e}"));
            let certs = read.and_then(|pem| {
                digest.update(&pem);
                match X509::stack_from_pem(&pem) {
                    Ok(c) if !c.is_empty() => Ok(c),
                    Ok(_) => Err("holds no PEM certificate".to_string()),
                    Err(e) => Err(format!("not a PEM certificate list: {e}")),
                }
            });
            certs.map_err(|m| errs.push(err("ca_file", &path, m))).ok()
        });
        let client = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => {
                let (cert, key) = (dir.join(c), dir.join(k));
                match CertifiedKey::from_files(&cert, &key) {
                    Ok(ck) => {
                        for x in &ck.chain {
                            if let Ok(der) = x.to_der() {
                                digest.update(&der);
                            }
                        }
                        Some(Arc::new(CertKey::new(ck.chain, ck.key)))
                    }
                    Err(e) => {
                        let (field, file) = match &e {
                            CertError::BadKey(_) | CertError::KeyMismatch => ("client_key", &key),
                            CertError::Read { path, .. } if Path::new(path) == key => {
                                ("client_key", &key)
                            }
                            _ => ("client_cert", &cert),
                        };
                        errs.push(err(field, file, e.to_string()));
                        None
                    }
                }
            }
            // Validation reports a certificate without its key.
            _ => None,
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let server_name = cfg.server_name.clone().or(match discovery {
            DiscoveryConfig::Dns(d) => Some(d.name.clone()),
            _ => None,
        });
        digest.update(server_name.as_deref().unwrap_or("").as_bytes());
        digest.update([u8::from(cfg.verify), u8::from(cfg.ca_file.is_some())]);
        let sum = digest.finalize();
        let mut group = std::collections::hash_map::DefaultHasher::new();
        group.write(&sum);
        let probe = probe_connector(ca.as_deref(), client.as_deref(), cfg.verify).map_err(|e| {
            vec![ConfigError::at(
                at.to_string(),
                format!("upstream {name:?}: OpenSSL refused the TLS settings: {e}"),
            )]
        })?;
        Ok(Self {
            ca: ca.map(|c| Arc::new(c.into_boxed_slice())),
            client,
            server_name,
            verify: cfg.verify,
            group_key: group.finish(),
            probe,
        })
    }

    /// The name sent as SNI and verified for the endpoint `address` (`host:port`, as
    /// configured or discovered): the configured or DNS name, else the address's host.
    pub fn server_name_for(&self, address: &str) -> String {
        match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(address).to_string(),
        }
    }

    /// A TLS peer for endpoint `addr` (`address` as configured) with these settings.
    pub fn peer(&self, addr: std::net::SocketAddr, address: &str) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.server_name_for(address));
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        peer
    }

    /// The TLS handshake of a health probe over `tcp`, as a try would make it (HTTP/1.1
    /// by ALPN). Errors: OpenSSL's reason.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        address: &str,
    ) -> Result<SslStream<TcpStream>, String> {
        let mut conf = self.probe.configure().map_err(|e| e.to_string())?;
        conf.set_verify_hostname(self.verify);
        let ssl = conf
            .into_ssl(&self.server_name_for(address))
            .map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(stream)
    }
}

/// The host of `host:port` (`[v6]:port` without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// OpenSSL's client context for probes: the CA list or the system's roots, the client
/// certificate, ALPN `http/1.1`, and no verification when `verify` is off.
fn probe_connector(
    ca: Option<&[X509]>,
    client: Option<&CertKey>,
    verify: bool,
) -> Result<SslConnector, openssl::error::ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    match ca {
        Some(list) => {
            let mut store = X509StoreBuilder::new()?;
            for c in list {
                store.add_cert(c.clone())?;
            }
            b.set_verify_cert_store(store.build())?;
        }
        None => b.set_default_verify_paths()?,
    }
    if let Some(ck) = client {
        b.set_certificate(ck.leaf())?;
        for c in ck.intermediates() {
            b.add_extra_chain_cert(c.clone())?;
        }
        b.set_private_key(ck.key())?;
    }
    b.set_alpn_protos(b"\x08http/1.1")?;
    if !verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("api.internal:443"), "api.internal");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }
}
