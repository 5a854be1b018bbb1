//! One TLS listener's certificates: the set served now (behind an `ArcSwap`, read once per
//! handshake without a lock), rebuilt on the cold path from the config's files, the
//! certificates installed at run time (ACME) and the TLS-ALPN-01 challenge certificates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::ssl::{AlpnError, NameType, SslAcceptor, SslMethod, SslRef, SslVersion};
use pingora_core::listeners::TlsAccept;

use super::cert::CertifiedKey;
use super::Expiry;
use crate::config::model::TlsVersion;

/// ALPN protocol id of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What this gateway offers in ALPN, in preference order (wire format, RFC 7301 §3.1).
const SERVER_ALPN: &[u8] = b"\x02h2\x08http/1.1";

/// A certificate and the SNI names it answers.
#[derive(Debug, Clone)]
pub struct Served {
    /// Exact names and `*.parent` wildcards, lowercase.
    pub names: Vec<String>,
    /// The certificate.
    pub cert: Arc<CertifiedKey>,
    /// Served to clients without SNI or with an unknown name.
    pub default: bool,
}

impl Served {
    /// Served under the certificate's own SAN names (or `names` when not empty).
    pub fn new(cert: Arc<CertifiedKey>, names: Vec<String>, default: bool) -> Self {
        let names = if names.is_empty() {
            cert.names.clone()
        } else {
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        };
        Self {
            names,
            cert,
            default,
        }
    }
}

/// What the config file says a listener serves: its certificates in declared order and
/// the lowest TLS version.
#[derive(Debug, Clone)]
pub struct FileCerts {
    /// In declared order; the default is the one marked, else the first.
    pub certs: Vec<Served>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// The certificate and key files read (watched for changes).
    pub files: Vec<std::path::PathBuf>,
}

/// The certificates one handshake chooses from, with the acceptor they go with.
pub struct CertSet {
    acceptor: SslAcceptor,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent of `*.parent`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// TLS-ALPN-01 certificates by exact name.
    challenges: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// The certificate for SNI `name`: an exact name, then a wildcard one label deep (RFC
    /// 6125 §6.4.3: `*.example.com` covers `a.example.com`, not `a.b.example.com` or
    /// `example.com`), else the default. `None` when the listener has no certificate.
    pub fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c);
            }
            if let Some(c) = name
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return Some(c);
            }
        }
        self.default.as_ref()
    }

    /// The TLS-ALPN-01 certificate registered for `name`.
    pub fn challenge(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let name = name?.trim_end_matches('.').to_ascii_lowercase();
        self.challenges.get(&name)
    }

    /// The acceptor of this set (protocol versions, ciphers, ALPN).
    pub fn acceptor(&self) -> &SslAcceptor {
        &self.acceptor
    }
}

/// Everything a rebuild starts from (the cold side).
#[derive(Default, Clone)]
struct Sources {
    files: Vec<Served>,
    min_version: TlsVersion,
    /// Run-time certificates by install id, in id order.
    installed: BTreeMap<String, Served>,
    challenges: HashMap<String, Arc<CertifiedKey>>,
}

/// One TLS listener's certificate store. Lookups read one `ArcSwap`; every change
/// (reload, install, challenge) rebuilds the set under a mutex off the handshake path.
pub struct CertStore {
    listener: String,
    current: ArcSwap<CertSet>,
    sources: Mutex<Sources>,
    expiry: Arc<Expiry>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// Why an acceptor could not be built (OpenSSL refused its settings).
pub type AcceptorError = openssl::error::ErrorStack;

impl CertStore {
    /// An empty store for `listener` (every handshake fails until certificates arrive).
    pub(super) fn new(listener: &str, expiry: Arc<Expiry>) -> Result<Self, AcceptorError> {
        let sources = Sources::default();
        let set = build(&sources)?;
        Ok(Self {
            listener: listener.to_string(),
            current: ArcSwap::from_pointee(set),
            sources: Mutex::new(sources),
            expiry,
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The set the next handshake uses.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Replaces the config file's certificates and minimum version (a reload); run-time
    /// certificates and challenges stay.
    pub fn set_files(&self, files: FileCerts) -> Result<(), AcceptorError> {
        self.update(|s| {
            s.files = files.certs;
            s.min_version = files.min_version;
        })
    }

    /// Installs or replaces the run-time certificate `id` (e.g. `acme`), served for
    /// `names` (exact, or `*.parent`; empty: the certificate's SAN names). For a name
    /// both have, a run-time certificate wins over the config's; it survives reloads.
    /// The expiry gauge follows.
    pub fn install(
        &self,
        id: &str,
        names: Vec<String>,
        cert: CertifiedKey,
    ) -> Result<(), AcceptorError> {
        let served = Served::new(Arc::new(cert), names, false);
        tracing::info!(listener = %self.listener, id, names = ?served.names, not_after = served.cert.not_after, "TLS certificate installed");
        self.update(|s| {
            s.installed.insert(id.to_string(), served);
        })
    }

    /// Removes the run-time certificate `id`, if any.
    pub fn uninstall(&self, id: &str) -> Result<(), AcceptorError> {
        self.update(|s| {
            s.installed.remove(id);
        })
    }

    /// TLS-ALPN-01 (RFC 8737 §3): while registered, a ClientHello for SNI `name` that
    /// offers ALPN `acme-tls/1` gets `cert` and `acme-tls/1` selected; the connection is
    /// closed after the handshake. Such a ClientHello for a name without a challenge fails.
    pub fn set_alpn_challenge(&self, name: &str, cert: CertifiedKey) -> Result<(), AcceptorError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.update(|s| {
            s.challenges.insert(name, Arc::new(cert));
        })
    }

    /// Removes the TLS-ALPN-01 certificate of `name`.
    pub fn clear_alpn_challenge(&self, name: &str) -> Result<(), AcceptorError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.update(|s| {
            s.challenges.remove(&name);
        })
    }

    fn update(&self, change: impl FnOnce(&mut Sources)) -> Result<(), AcceptorError> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = sources.clone();
        change(&mut next);
        // An acceptor that cannot be built leaves the sources and the set as they were.
        let set = build(&next)?;
        let served: Vec<Arc<CertifiedKey>> = next
            .files
            .iter()
            .chain(next.installed.values())
            .map(|s| s.cert.clone())
            .collect();
        *sources = next;
        self.current.store(Arc::new(set));
        drop(sources);
        self.expiry.set(&self.listener, &served);
        Ok(())
    }
}

/// Builds the acceptor and the lookup tables from the sources.
fn build(s: &Sources) -> Result<CertSet, AcceptorError> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    if s.min_version == TlsVersion::Tls13 {
        b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    }
    b.set_alpn_select_callback(select_alpn);
    let acceptor = b.build();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    // Run-time certificates first: for a name both have, the first insert wins.
    for served in s.installed.values().chain(s.files.iter()) {
        for name in &served.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(name.clone()),
            }
            .or_insert_with(|| served.cert.clone());
        }
    }
    let default = s
        .files
        .iter()
        .find(|c| c.default)
        .or(s.files.first())
        .or(s.installed.values().next())
        .map(|c| c.cert.clone());
    Ok(CertSet {
        acceptor,
        exact,
        wildcard,
        default,
        challenges: s.challenges.clone(),
    })
}

/// ALPN (RFC 7301): `acme-tls/1` when the client offers it (RFC 8737 §3: only ACME
/// validators do), else `h2` before `http/1.1`; no overlap: no ALPN at all, and HTTP/1.1
/// is spoken (nginx does the same).
fn select_alpn<'a>(_ssl: &mut SslRef, client: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    if let Some(p) = offered(client, ACME_TLS_ALPN) {
        return Ok(p);
    }
    openssl::ssl::select_next_proto(SERVER_ALPN, client).ok_or(AlpnError::NOACK)
}

/// `proto` within the client's wire-format list, if offered.
fn offered<'a>(mut list: &'a [u8], proto: &[u8]) -> Option<&'a [u8]> {
    while let Some((&len, rest)) = list.split_first() {
        let len = usize::from(len);
        let p = rest.get(..len)?;
        if p == proto {
            return Some(p);
        }
        list = &rest[len..];
    }
    None
}

/// The per-handshake certificate choice (pingora's certificate callback), from the set
/// that was current when the connection arrived.
pub struct Pick {
    set: Arc<CertSet>,
    missing: std::sync::atomic::AtomicBool,
}

impl Pick {
    /// Chooses from `set`.
    pub fn new(set: Arc<CertSet>) -> Self {
        Self {
            set,
            missing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The set chosen from.
    pub fn set(&self) -> &CertSet {
        &self.set
    }

    /// Whether the handshake found no certificate to serve.
    pub fn found_none(&self) -> bool {
        self.missing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl TlsAccept for Pick {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let name = ssl.servername(NameType::HOST_NAME);
        let cert = if ssl.selected_alpn_protocol() == Some(ACME_TLS_ALPN) {
            self.set.challenge(name)
        } else {
            self.set.pick(name)
        };
        let Some(c) = cert else {
            self.missing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        let used = (|| {
            let (leaf, rest) = c.chain.split_first()?;
            pingora_core::tls::ext::ssl_use_certificate(ssl, leaf).ok()?;
            for extra in rest {
                pingora_core::tls::ext::ssl_add_chain_cert(ssl, extra).ok()?;
            }
            pingora_core::tls::ext::ssl_use_private_key(ssl, &c.key).ok()
        })();
        if used.is_none() {
            tracing::error!(label = %c.label, "OpenSSL refused a loaded certificate");
            self.missing
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Expiry;

    #[test]
    fn alpn_lists_are_read_in_wire_format() {
        let client = b"\x08http/1.1\x0aacme-tls/1";
        assert_eq!(offered(client, ACME_TLS_ALPN), Some(&b"acme-tls/1"[..]));
        assert_eq!(offered(b"\x08http/1.1", ACME_TLS_ALPN), None);
        assert_eq!(
            offered(b"\x20short", ACME_TLS_ALPN),
            None,
            "a truncated list"
        );
    }

    /// A CertifiedKey for `names` from rcgen (self-signed), optionally with RFC 8737's
    /// acmeIdentifier extension.
    fn rcgen_cert(names: &[&str], acme: Option<[u8; 32]>) -> CertifiedKey {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(digest) = acme {
            p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        CertifiedKey::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    fn fingerprint(c: &openssl::x509::X509Ref) -> Vec<u8> {
        c.digest(openssl::hash::MessageDigest::sha256())
            .unwrap()
            .to_vec()
    }

    /// A store whose files give one self-signed certificate for `a.test` (TLS 1.2 and up),
    /// with that certificate's fingerprint.
    fn store_with_file() -> (CertStore, Arc<crate::telemetry::Telemetry>, Vec<u8>) {
        let (store, tel) = new_store();
        let file = rcgen_cert(&["a.test"], None);
        let file_fp = fingerprint(&file.chain[0]);
        let files = FileCerts {
            certs: vec![Served::new(Arc::new(file), Vec::new(), false)],
            min_version: TlsVersion::Tls12,
            files: Vec::new(),
        };
        store.set_files(files).unwrap();
        (store, tel, file_fp)
    }

    fn new_store() -> (CertStore, Arc<crate::telemetry::Telemetry>) {
        let tel = Arc::new(crate::telemetry::Telemetry::new().unwrap());
        let expiry = Arc::new(Expiry::new(tel.clone()));
        (CertStore::new("public", expiry).unwrap(), tel)
    }

    /// One in-memory handshake through pingora's `handshake_with_callback` (what the
    /// listener runs): the certificate and ALPN the client got, or the failure.
    async fn hello(
        store: &CertStore,
        sni: &str,
        alpn: &[u8],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        use openssl::ssl::{SslConnector, SslVerifyMode};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(alpn).unwrap();
        let ssl = b
            .build()
            .configure()
            .unwrap()
            .verify_hostname(false)
            .into_ssl(sni)
            .unwrap();
        let client = tokio::spawn(async move {
            let mut s = pingora_core::tls::tokio_ssl::SslStream::new(ssl, client).unwrap();
            std::pin::Pin::new(&mut s)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let cert = s.ssl().peer_certificate().map(|c| fingerprint(&c));
            let alpn = s.ssl().selected_alpn_protocol().map(|p| p.to_vec());
            // Until the server is done (TLS 1.3 session tickets follow its handshake).
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 1]).await;
            Ok::<_, String>((cert.unwrap_or_default(), alpn))
        });
        let pick = Pick::new(store.current());
        let served = pingora_core::protocols::tls::server::handshake_with_callback(
            pick.set().acceptor(),
            server,
            &pick,
        )
        .await
        .map(drop);
        let got = client.await.unwrap();
        served.map_err(|e| format!("server: {e}; client: {:?}", got.as_ref().err()))?;
        got
    }

    #[tokio::test]
    async fn tls_alpn_01_answers_with_the_challenge_certificate_only_for_acme_tls_1() {
        let (store, _tel, regular_fp) = store_with_file();
        let challenge = rcgen_cert(&["a.test"], Some([7; 32]));
        let challenge_fp = fingerprint(&challenge.chain[0]);
        store.set_alpn_challenge("A.test", challenge).unwrap();

        let (cert, alpn) = hello(&store, "a.test", b"\x0aacme-tls/1").await.unwrap();
        assert_eq!(cert, challenge_fp, "the challenge certificate");
        assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
        let (cert, alpn) = hello(&store, "a.test", b"\x02h2\x08http/1.1")
            .await
            .unwrap();
        assert_eq!(cert, regular_fp, "ordinary clients never see it");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert!(
            hello(&store, "b.test", b"\x0aacme-tls/1").await.is_err(),
            "acme-tls/1 for a name without a challenge is refused"
        );
        store.clear_alpn_challenge("a.test").unwrap();
        assert!(hello(&store, "a.test", b"\x0aacme-tls/1").await.is_err());
    }

    #[tokio::test]
    async fn installed_certificates_win_over_files_and_drive_the_expiry_gauge() {
        let (store, tel, file_fp) = store_with_file();
        let acme = rcgen_cert(&["a.test", "b.test"], None);
        let (acme_fp, acme_expiry) = (fingerprint(&acme.chain[0]), acme.not_after);
        store.install("acme", Vec::new(), acme).unwrap();
        let h2 = b"\x02h2";
        assert_eq!(hello(&store, "a.test", h2).await.unwrap().0, acme_fp);
        assert_eq!(hello(&store, "b.test", h2).await.unwrap().0, acme_fp);
        assert_eq!(
            hello(&store, "other.test", h2).await.unwrap().0,
            file_fp,
            "the file's certificate stays the default"
        );
        let gauge = &tel.metrics.tls_certificate_expiry;
        assert_eq!(gauge.with_label_values(&["a.test"]).get(), acme_expiry);
        store.uninstall("acme").unwrap();
        assert_eq!(hello(&store, "a.test", h2).await.unwrap().0, file_fp);
        assert_eq!(hello(&store, "b.test", h2).await.unwrap().0, file_fp);

        // An empty store fails every handshake (an ACME listener before its first order).
        let (empty, _) = new_store();
        assert!(hello(&empty, "a.test", h2).await.is_err());
    }
}
