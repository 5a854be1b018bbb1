//! TLS termination's certificates: PEM loading, each TLS listener's store chosen by SNI
//! (reloaded from files, installed at run time by ACME, TLS-ALPN-01 challenges), the
//! expiry gauge, and the reasons a handshake failed.

pub mod acme;
pub mod cert;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use cert::{CertError, CertifiedKey};
pub use store::{CertSet, CertStore, FileCerts, Pick, Served, ACME_TLS_ALPN};

use crate::config::model::{GatewayConfig, ListenerTlsConfig};
use crate::config::ConfigError;
use crate::telemetry::Telemetry;

/// The `reason` label values of `gatehouse_tls_handshake_failures_total`, all
/// pre-initialized per TLS listener.
pub const HANDSHAKE_FAILURE_REASONS: [&str; 9] = [
    "no_shared_cipher",
    "protocol_version",
    "unknown_ca",
    "bad_certificate",
    "no_certificate",
    "not_tls",
    "client_closed",
    "timeout",
    "other",
];

/// The bounded reason for a failed handshake, from OpenSSL's error reason string (the
/// server's own, or the alert the client sent): `no_shared_cipher`, `protocol_version`
/// (a version below `min_version` or unknown), `unknown_ca` / `bad_certificate` (the
/// client refused our certificate), `not_tls` (plain HTTP or other bytes), else `other`.
pub fn failure_reason(openssl_reason: &str) -> &'static str {
    let r = openssl_reason.to_ascii_lowercase();
    if r.contains("no shared cipher") || r.contains("no suitable signature") {
        "no_shared_cipher"
    } else if r.contains("unsupported protocol")
        || r.contains("protocol version")
        || r.contains("version too low")
    {
        "protocol_version"
    } else if r.contains("unexpected eof") {
        "client_closed"
    } else if r.contains("unknown ca") {
        "unknown_ca"
    } else if r.contains("certificate") {
        "bad_certificate"
    } else if r.contains("http request")
        || r.contains("wrong version number")
        || r.contains("unknown protocol")
        || r.contains("packet length too long")
    {
        "not_tls"
    } else {
        "other"
    }
}

/// The expiry gauge over every store: a certificate served by two listeners is one
/// series; the earliest `notAfter` wins when two certificates share a name.
pub struct Expiry {
    telemetry: Arc<Telemetry>,
    by_listener: Mutex<BTreeMap<String, Vec<(String, i64)>>>,
}

impl Expiry {
    /// An empty board publishing through `telemetry`.
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self {
            telemetry,
            by_listener: Mutex::new(BTreeMap::new()),
        }
    }

    fn set(&self, listener: &str, certs: &[Arc<CertifiedKey>]) {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(
            listener.to_string(),
            certs
                .iter()
                .map(|c| (c.label.clone(), c.not_after))
                .collect(),
        );
        let mut served: BTreeMap<String, i64> = BTreeMap::new();
        for (label, t) in all.values().flatten() {
            let e = served.entry(label.clone()).or_insert(*t);
            *e = (*e).min(*t);
        }
        self.telemetry.tls_certificates(&served);
    }
}

/// The certificate stores of every TLS listener, by listener name. Built at start; the
/// set of TLS listeners changes only with a restart.
pub struct TlsStores {
    stores: BTreeMap<String, Arc<CertStore>>,
    /// Pending ACME HTTP-01 answers, served by every clear-text listener.
    pub http01: Arc<acme::Http01Tokens>,
}

impl TlsStores {
    /// Empty stores for the TLS listeners of `cfg`; their handshake-failure series start
    /// at zero.
    pub fn new(
        cfg: &GatewayConfig,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, openssl::error::ErrorStack> {
        let expiry = Arc::new(Expiry::new(telemetry.clone()));
        let mut stores = BTreeMap::new();
        for l in cfg.listeners.iter().filter(|l| l.tls.is_some()) {
            telemetry.tls_listener(&l.name, &HANDSHAKE_FAILURE_REASONS);
            stores.insert(
                l.name.clone(),
                Arc::new(CertStore::new(&l.name, expiry.clone())?),
            );
        }
        Ok(Self {
            stores,
            http01: Arc::default(),
        })
    }

    /// The store of TLS listener `listener`.
    pub fn get(&self, listener: &str) -> Option<&Arc<CertStore>> {
        self.stores.get(listener)
    }

    /// Every certificate and key file the listeners read, for the file watcher.
    pub fn files_of(files: &BTreeMap<String, FileCerts>) -> Vec<std::path::PathBuf> {
        files
            .values()
            .flat_map(|f| f.files.iter().cloned())
            .collect()
    }

    /// Serves the certificates of a new snapshot (`files` by listener name). A listener
    /// without a store (TLS turned on by a reload: that needs a restart) is skipped.
    pub fn apply(&self, files: &BTreeMap<String, FileCerts>) {
        for (name, f) in files {
            if let Some(store) = self.stores.get(name) {
                if let Err(e) = store.set_files(f.clone()) {
                    tracing::error!(listener = %name, error = %e, "TLS settings refused by OpenSSL; the running certificates stay");
                }
            }
        }
    }
}

/// Loads listener `tls`'s certificate files (relative to `config_dir`) and checks its ACME
/// `ca_file`; every problem is an error at the field's YAML path (`at` is
/// `listeners[i].tls`) naming the file.
pub fn load_files(
    tls: &ListenerTlsConfig,
    at: &str,
    listener: &str,
    config_dir: &Path,
) -> Result<FileCerts, Vec<ConfigError>> {
    let mut certs = Vec::new();
    let mut errs = Vec::new();
    let mut files = Vec::new();
    for (path, c) in tls.all_certificates(at) {
        let (cert, key) = (config_dir.join(&c.cert), config_dir.join(&c.key));
        files.extend([cert.clone(), key.clone()]);
        match CertifiedKey::from_files(&cert, &key) {
            Ok(k) => certs.push(Served::new(Arc::new(k), c.names.clone(), c.default)),
            Err(e) => {
                let (field, file) = match e {
                    CertError::BadKey(_) | CertError::KeyMismatch => ("key", &key),
                    CertError::Read { ref path, .. } if Path::new(path) == key => ("key", &key),
                    _ => ("cert", &cert),
                };
                errs.push(ConfigError::at(
                    format!("{path}.{field}"),
                    format!("listener {listener:?}: {}: {e}", file.display()),
                ));
            }
        }
    }
    if let Some(ca) = tls.acme.as_ref().and_then(|a| a.ca_file.as_ref()) {
        let path = config_dir.join(ca);
        let problem = match std::fs::read(&path) {
            Ok(pem) => openssl::x509::X509::from_pem(&pem)
                .err()
                .map(|e| format!("not a PEM certificate: {e}")),
            Err(e) => Some(format!("cannot read: {e}")),
        };
        if let Some(p) = problem {
            errs.push(ConfigError::at(
                format!("{at}.acme.ca_file"),
                format!("listener {listener:?}: {}: {p}", path.display()),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(FileCerts {
        certs,
        min_version: tls.min_version,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_reasons_map_to_a_bounded_set() {
        let cases = [
            ("no shared cipher", "no_shared_cipher"),
            ("unsupported protocol", "protocol_version"),
            ("tlsv1 alert protocol version", "protocol_version"),
            ("tlsv1 alert unknown ca", "unknown_ca"),
            ("ssl/tls alert bad certificate", "bad_certificate"),
            ("http request", "not_tls"),
            ("wrong version number", "not_tls"),
            ("unexpected eof while reading", "client_closed"),
            ("something new", "other"),
        ];
        for (openssl, reason) in cases {
            assert_eq!(failure_reason(openssl), reason, "{openssl}");
        }
    }
}
