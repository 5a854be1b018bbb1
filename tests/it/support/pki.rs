//! A test certificate authority made in the test (rcgen) and the leaves it signs, as PEM,
//! for the TLS listener and TLS upstream suites.

use openssl::hash::MessageDigest;
use openssl::x509::X509;
use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A test CA and the leaves it signs.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and key in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// SHA-256 of the leaf, to compare with what a client got.
    pub fn fingerprint(&self) -> Vec<u8> {
        let x = X509::from_pem(self.cert.as_bytes()).unwrap();
        x.digest(MessageDigest::sha256()).unwrap().to_vec()
    }
}

impl Pki {
    /// A new self-signed CA.
    pub fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    /// The CA certificate.
    pub fn ca_x509(&self) -> X509 {
        X509::from_pem(self.ca.pem().as_bytes()).unwrap()
    }

    /// A leaf for `names` (SAN DNS names), valid until `not_after` (unix seconds) or for
    /// a year.
    pub fn leaf_until(&self, names: &[&str], not_after: Option<i64>) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = match not_after {
            Some(t) => time::OffsetDateTime::from_unix_timestamp(t).unwrap(),
            None => now + time::Duration::days(365),
        };
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A leaf for `names`, valid for a year.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_until(names, None)
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}
