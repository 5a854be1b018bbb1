//! A certificate chain and its private key, loaded from PEM and checked to match.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// Why a certificate or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No PEM certificate in the input.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The certificate PEM did not parse.
    #[error("not a PEM certificate chain: {0}")]
    BadCertificate(ErrorStack),
    /// The key PEM did not parse.
    #[error("not a PEM private key: {0}")]
    BadKey(ErrorStack),
    /// The key is not the certificate's.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// OpenSSL refused something else (reading a date, a public key).
    #[error("{0}")]
    Openssl(#[from] ErrorStack),
}

/// A certificate chain (leaf first) and the leaf's private key, as served in a handshake.
pub struct CertifiedKey {
    /// Leaf first, then intermediates, as the client receives them.
    pub chain: Vec<X509>,
    /// The leaf's private key.
    pub key: PKey<Private>,
    /// The leaf's SAN DNS names, lowercase (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// The leaf's `notAfter`, in unix seconds.
    pub not_after: i64,
    /// The name in the expiry metric: the first SAN DNS name, else the subject's CN,
    /// else what [`CertifiedKey::with_label`] set (the file).
    pub label: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    /// Errors: no certificate, unparsable PEM, or a key that is not the leaf's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let chain = X509::stack_from_pem(cert_pem).map_err(CertError::BadCertificate)?;
        let key = PKey::private_key_from_pem(key_pem).map_err(CertError::BadKey)?;
        Self::new(chain, key)
    }

    /// Reads `cert` and `key` PEM files; the label falls back to the cert file's path.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CertError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let c = Self::from_pem(&read(cert)?, &read(key)?)?;
        Ok(if c.label.is_empty() {
            c.with_label(cert.display().to_string())
        } else {
            c
        })
    }

    /// Builds from OpenSSL objects, checking that `key` is the leaf's.
    pub fn new(chain: Vec<X509>, key: PKey<Private>) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        if !leaf.public_key()?.public_eq(&key) {
            return Err(CertError::KeyMismatch);
        }
        let names: Vec<String> = leaf
            .subject_alt_names()
            .map(|sans| {
                sans.iter()
                    .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                    .collect()
            })
            .unwrap_or_default();
        let cn = || {
            leaf.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .next()
                .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        };
        let label = names.first().cloned().or_else(cn).unwrap_or_default();
        let not_after = unix_seconds(leaf.not_after())?;
        Ok(Self {
            chain,
            key,
            names,
            not_after,
            label,
        })
    }

    /// The same certificate with another metric label.
    pub fn with_label(mut self, label: String) -> Self {
        self.label = label;
        self
    }
}

/// An ASN.1 time as unix seconds.
fn unix_seconds(t: &openssl::asn1::Asn1TimeRef) -> Result<i64, ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}
