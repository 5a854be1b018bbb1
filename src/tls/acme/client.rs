//! One ACME conversation (RFC 8555 §7): the account (from storage, else registered), an
//! order for the domains, its challenges answered (HTTP-01 or TLS-ALPN-01), a CSR for a
//! fresh key, and the issued chain.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use super::http01::Http01Tokens;
use super::storage::Storage;
use crate::config::model::AcmeChallenge;
use crate::tls::{CertError, CertStore, CertifiedKey};

/// Why an order (or the account it needs) failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused something or could not be reached.
    #[error("{0}")]
    Protocol(#[from] instant_acme::Error),
    /// The storage directory could not be read or written.
    #[error("storage {path}: {source}")]
    Storage {
        /// The file or directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The stored account is not instant-acme's credentials JSON.
    #[error("stored account {path}: {source}")]
    BadAccount {
        /// The file.
        path: String,
        /// Why it did not parse.
        source: serde_json::Error,
    },
    /// An authorization or the order ended in a state other than valid.
    #[error("{0}")]
    Refused(String),
    /// The ACME server offers none of the challenge type we answer.
    #[error("the server offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
    /// A key, CSR or challenge certificate could not be made.
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The issued chain does not parse or does not match its key.
    #[error("the issued certificate: {0}")]
    Certificate(#[from] CertError),
    /// OpenSSL refused the TLS-ALPN-01 certificate in the listener's store.
    #[error("TLS store: {0}")]
    Store(#[from] openssl::error::ErrorStack),
}

impl AcmeError {
    /// Whether the server no longer knows the account (RFC 8555 §6.7
    /// `accountDoesNotExist`, e.g. a test CA restarted): the next try registers anew.
    fn account_gone(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// How the order's challenges are answered.
pub enum Responder {
    /// HTTP-01 on the clear-text listeners.
    Http01(Arc<Http01Tokens>),
    /// TLS-ALPN-01 on this TLS listener's store.
    TlsAlpn01(Arc<CertStore>),
}

impl Responder {
    /// The responder for `challenge`.
    pub fn new(challenge: AcmeChallenge, tokens: Arc<Http01Tokens>, store: Arc<CertStore>) -> Self {
        match challenge {
            AcmeChallenge::Http01 => Self::Http01(tokens),
            AcmeChallenge::TlsAlpn01 => Self::TlsAlpn01(store),
        }
    }

    fn kind(&self) -> (ChallengeType, &'static str) {
        match self {
            Self::Http01(_) => (ChallengeType::Http01, "http-01"),
            Self::TlsAlpn01(_) => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        }
    }
}

/// What an answered challenge left behind, removed when the order ends either way.
#[derive(Default)]
struct Answered<'a> {
    responder: Option<&'a Responder>,
    keys: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for k in &self.keys {
            match self.responder {
                Some(Responder::Http01(t)) => t.remove(k),
                Some(Responder::TlsAlpn01(s)) => {
                    if let Err(e) = s.clear_alpn_challenge(k) {
                        tracing::warn!(name = %k, error = %e, "TLS-ALPN-01 certificate not removed");
                    }
                }
                None => {}
            }
        }
    }
}

/// An issued certificate: the PEM chain (leaf first) and its private key.
pub struct Issued {
    /// PEM chain as the server sent it.
    pub chain_pem: String,
    /// PEM (PKCS#8) private key made for it.
    pub key_pem: String,
    /// Both, parsed.
    pub cert: CertifiedKey,
}

/// The ACME client of one certificate: its server, account and storage.
pub struct Client {
    directory: String,
    ca_file: Option<PathBuf>,
    email: Option<String>,
    storage: Storage,
    account: Option<Account>,
    /// The stored account was refused by the server: register a new one.
    ignore_stored: bool,
}

/// How long polling an order's state may take before the order counts as failed.
const POLL_FOR: Duration = Duration::from_secs(90);

impl Client {
    /// A client of the server at `directory` (trusting `ca_file`, when given, for its
    /// HTTPS), registering `email`, keeping its account in `storage`.
    pub fn new(
        directory: String,
        ca_file: Option<PathBuf>,
        email: Option<String>,
        storage: Storage,
    ) -> Self {
        Self {
            directory,
            ca_file,
            email,
            storage,
            account: None,
            ignore_stored: false,
        }
    }

    fn builder(&self) -> Result<AccountBuilder, AcmeError> {
        Ok(match &self.ca_file {
            Some(ca) => Account::builder_with_root(ca)?,
            None => Account::builder()?,
        })
    }

    fn storage_error(&self, source: std::io::Error) -> AcmeError {
        AcmeError::Storage {
            path: self.storage.account_path().display().to_string(),
            source,
        }
    }

    /// The stored account's credentials JSON could not be read or written.
    fn bad_account(&self, source: serde_json::Error) -> AcmeError {
        AcmeError::BadAccount {
            path: self.storage.account_path().display().to_string(),
            source,
        }
    }

    /// The account: in memory, else the stored one, else a new registration (stored
    /// before use). The flag is true when it was registered now.
    async fn account(&mut self) -> Result<(Account, bool), AcmeError> {
        if let Some(a) = &self.account {
            return Ok((a.clone(), false));
        }
        let stored = if self.ignore_stored {
            None
        } else {
            self.storage.account().map_err(|e| self.storage_error(e))?
        };
        let (account, created) = match stored {
            Some(json) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&json).map_err(|e| self.bad_account(e))?;
                (self.builder()?.from_credentials(creds).await?, false)
            }
            None => {
                let contact: Vec<String> = self
                    .email
                    .iter()
                    .map(|e| format!("mailto:{}", e.trim_start_matches("mailto:")))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, creds) = self
                    .builder()?
                    .create(&new, self.directory.clone(), None)
                    .await?;
                let json = serde_json::to_vec(&creds).map_err(|e| self.bad_account(e))?;
                self.storage
                    .save_account(&json)
                    .map_err(|e| self.storage_error(e))?;
                self.ignore_stored = false;
                (account, true)
            }
        };
        self.account = Some(account.clone());
        Ok((account, created))
    }

    /// Orders a certificate for `domains`, answering through `responder`. On success the
    /// chain and key are parsed (the key must be the leaf's) but not yet stored. The
    /// `on_account` callback hears of an account registered on the way (its URL).
    pub async fn order(
        &mut self,
        domains: &[String],
        responder: &Responder,
        on_account: impl FnOnce(&str),
    ) -> Result<Issued, AcmeError> {
        let (account, created) = self.account().await?;
        if created {
            on_account(account.id());
        }
        let result = order_with(&account, domains, responder).await;
        if let Err(e) = &result {
            if e.account_gone() {
                self.account = None;
                self.ignore_stored = true;
            }
        }
        result
    }
}

async fn order_with(
    account: &Account,
    domains: &[String],
    responder: &Responder,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let (kind, kind_name) = responder.kind();
    let mut answered = Answered {
        responder: Some(responder),
        keys: Vec::new(),
    };
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order of this account (RFC 8555 §7.1.4).
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Refused(format!(
                    "authorization for {} is {other:?}",
                    authz.identifier()
                )))
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::NoChallenge(kind_name, name.clone()))?;
        let key_auth = challenge.key_authorization();
        match responder {
            Responder::Http01(tokens) => {
                tokens.insert(&challenge.token, key_auth.as_str());
                answered.keys.push(challenge.token.clone());
            }
            Responder::TlsAlpn01(store) => {
                store.set_alpn_challenge(
                    &name,
                    alpn_certificate(&name, key_auth.digest().as_ref())?,
                )?;
                answered.keys.push(name.clone());
            }
        }
        challenge.set_ready().await?;
    }
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(POLL_FOR);
    let status = order.poll_ready(&policy).await?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map_or_else(|| format!("{status:?}"), |p| p.to_string());
        return Err(AcmeError::Refused(format!("order not ready: {why}")));
    }
    drop(answered);
    let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&policy).await?;
    let key_pem = key.serialize_pem();
    let cert = CertifiedKey::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
    Ok(Issued {
        chain_pem,
        key_pem,
        cert,
    })
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, `name` as its only
/// SAN, and the critical acmeIdentifier extension holding SHA-256 of the key
/// authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| AcmeError::Refused("key authorization digest is not SHA-256".into()))?;
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(CertifiedKey::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )?)
}
