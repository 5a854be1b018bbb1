//! Certificates obtained and renewed by ACME (RFC 8555) for a TLS listener: the stored
//! certificate served at start, renewal `renew_before` its expiry with jitter, retries
//! with backoff while the old certificate keeps serving. Runs as a background service,
//! off the request path.

pub mod client;
pub mod http01;
pub mod storage;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

pub use client::{AcmeError, Client, Issued, Responder};
pub use http01::Http01Tokens;
pub use storage::Storage;

use crate::config::model::AcmeConfig;
use crate::telemetry::Telemetry;
use crate::tls::{CertStore, CertifiedKey};

/// The install id of ACME certificates in a listener's store.
pub const INSTALL_ID: &str = "acme";

/// The first retry after a failed order; each further failure doubles it.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// The longest wait between two failed orders.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// The longest single sleep: the wall clock is looked at again after it (a suspended host
/// or a clock step does not push a renewal past its time).
const WAKE_AT_LEAST_EVERY: Duration = Duration::from_secs(600);
/// One order (account, challenges, validation, issuance) may take this long.
const ORDER_WITHIN: Duration = Duration::from_secs(300);
/// How long to wait at start for the listeners to be bound before the first order (the
/// server validates against them).
const LISTENERS_WITHIN: Duration = Duration::from_secs(30);

/// When a certificate expiring at `not_after` (unix seconds) is due for renewal:
/// `renew_before` ahead of it, minus `jitter` (0..=1, drawn once per certificate) times a
/// tenth of `renew_before`, so that many gateways renewing the same week spread out (as
/// certbot and Caddy do).
pub fn renewal_due(not_after: i64, renew_before: Duration, jitter: f64) -> i64 {
    let before = renew_before.as_secs_f64();
    not_after - (before + before / 10.0 * jitter.clamp(0.0, 1.0)) as i64
}

/// The wait after the `failures`-th failed order in a row (1 = the first):
/// [`RETRY_FIRST`], doubling, at most [`RETRY_MAX`].
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1u32 << doublings).min(RETRY_MAX)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The ACME certificate of one TLS listener.
pub struct AcmeManager {
    listener: String,
    cfg: AcmeConfig,
    /// Relative `storage` and `ca_file` paths start here (the config file's directory).
    config_dir: std::path::PathBuf,
    store: Arc<CertStore>,
    tokens: Arc<Http01Tokens>,
    telemetry: Arc<Telemetry>,
    /// Whether every listener is bound (the server validates against them).
    listeners_ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// When the certificate found in storage at start is due (unix seconds; 0: none).
    stored_due: i64,
}

impl AcmeManager {
    /// The manager of listener `listener`'s `cfg`, installing into `store` and answering
    /// HTTP-01 through `tokens`; its metric series start at 0. A valid stored certificate
    /// is served now, before the listeners accept.
    pub fn new(
        listener: &str,
        cfg: AcmeConfig,
        config_dir: &Path,
        store: Arc<CertStore>,
        tokens: Arc<Http01Tokens>,
        telemetry: Arc<Telemetry>,
        listeners_ready: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        telemetry.acme_certificate(cfg.domains.first().map_or("", String::as_str));
        let mut m = Self {
            listener: listener.to_string(),
            cfg,
            config_dir: config_dir.to_path_buf(),
            store,
            tokens,
            telemetry,
            listeners_ready,
            stored_due: 0,
        };
        m.stored_due = m.serve_stored();
        m
    }

    /// Serves the stored certificate when it is still good; its renewal time, or 0.
    fn serve_stored(&self) -> i64 {
        let root = self.config_dir.join(&self.cfg.storage);
        // An unusable storage is reported (and retried) by the renewal loop.
        let Ok(storage) = Storage::open(&root, &self.cfg.directory) else {
            return 0;
        };
        match self.stored(&storage).map(|c| self.serve(c, "acme storage")) {
            Some(Ok(due)) => due,
            Some(Err(e)) => {
                tracing::warn!(listener = %self.listener, error = %e, "stored ACME certificate not served");
                0
            }
            None => 0,
        }
    }

    /// The certificate's name in metrics and files: its first domain.
    fn name(&self) -> &str {
        self.cfg.domains.first().map_or("", String::as_str)
    }

    /// Serves `cert` now; returns its renewal time (unix seconds).
    fn serve(&self, cert: CertifiedKey, source: &str) -> Result<i64, AcmeError> {
        let not_after = cert.not_after;
        self.store
            .install(INSTALL_ID, self.cfg.domains.clone(), cert)?;
        self.telemetry
            .tls_certificate_loaded(&self.listener, self.name(), not_after, source);
        Ok(renewal_due(
            not_after,
            self.cfg.renew_before.get(),
            rand::random::<f64>(),
        ))
    }

    /// The stored certificate, when it parses, matches its key, covers every domain and
    /// has not expired.
    fn stored(&self, storage: &Storage) -> Option<CertifiedKey> {
        let (cert, key) = match storage.certificate(self.name()) {
            Ok(Some(pair)) => pair,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(listener = %self.listener, error = %e, "stored ACME certificate unreadable; ordering a new one");
                return None;
            }
        };
        match CertifiedKey::from_pem(&cert, &key) {
            Ok(c)
                if c.not_after > unix_now()
                    && self
                        .cfg
                        .domains
                        .iter()
                        .all(|d| c.names.contains(&d.to_ascii_lowercase())) =>
            {
                Some(c)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(listener = %self.listener, error = %e, "stored ACME certificate refused; ordering a new one");
                None
            }
        }
    }

    /// One order: issued, stored, served. Returns the next renewal time.
    async fn renew(&self, client: &mut Client, storage: &Storage) -> Result<i64, AcmeError> {
        let responder = Responder::new(self.cfg.challenge, self.tokens.clone(), self.store.clone());
        let directory = &self.cfg.directory;
        let tel = &self.telemetry;
        let issued = client
            .order(&self.cfg.domains, &responder, |id| {
                tel.acme_account_registered(directory, id)
            })
            .await?;
        storage
            .save_certificate(
                self.name(),
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
            )
            .map_err(|source| AcmeError::Storage {
                path: storage.cert_paths(self.name()).0.display().to_string(),
                source,
            })?;
        let not_after = issued.cert.not_after;
        let due = self.serve(issued.cert, "acme")?;
        self.telemetry
            .acme_renewed(&self.listener, self.name(), not_after, due);
        Ok(due)
    }

    /// Sleeps `d` (at most [`WAKE_AT_LEAST_EVERY`]); false when shutdown came first.
    async fn sleep(shutdown: &mut ShutdownWatch, d: Duration) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = shutdown.changed() => false,
            _ = tokio::time::sleep(d.min(WAKE_AT_LEAST_EVERY)) => true,
        }
    }

    /// The renewal loop, until shutdown.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let root = self.config_dir.join(&self.cfg.storage);
        let mut failures = 0u32;
        let storage = loop {
            match Storage::open(&root, &self.cfg.directory) {
                Ok(s) => break s,
                Err(e) => {
                    failures += 1;
                    let err = AcmeError::Storage {
                        path: root.display().to_string(),
                        source: e,
                    };
                    let wait = retry_after(failures);
                    self.telemetry
                        .acme_renewal_failed(&self.listener, self.name(), &err, wait);
                    if !Self::sleep(&mut shutdown, wait).await {
                        return;
                    }
                }
            }
        };
        let mut due = self.stored_due;
        let ca_file = self.cfg.ca_file.as_ref().map(|f| self.config_dir.join(f));
        let mut client = Client::new(
            self.cfg.directory.clone(),
            ca_file,
            self.cfg.email.clone(),
            storage.clone(),
        );
        let ready_by = tokio::time::Instant::now() + LISTENERS_WITHIN;
        while !(self.listeners_ready)() && tokio::time::Instant::now() < ready_by {
            if !Self::sleep(&mut shutdown, Duration::from_millis(50)).await {
                return;
            }
        }
        failures = 0;
        loop {
            let wait = if failures > 0 {
                retry_after(failures)
            } else {
                Duration::from_secs(due.saturating_sub(unix_now()).max(0) as u64)
            };
            if !wait.is_zero() {
                if !Self::sleep(&mut shutdown, wait).await {
                    return;
                }
                if failures == 0 && due > unix_now() {
                    continue;
                }
            }
            let attempt = tokio::time::timeout(ORDER_WITHIN, self.renew(&mut client, &storage));
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                r = attempt => r,
            };
            match result {
                Ok(Ok(next)) => {
                    failures = 0;
                    due = next;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    self.telemetry.acme_renewal_failed(
                        &self.listener,
                        self.name(),
                        &e,
                        retry_after(failures),
                    );
                }
                Err(_) => {
                    failures += 1;
                    self.telemetry.acme_renewal_failed(
                        &self.listener,
                        self.name(),
                        &format!("no certificate within {ORDER_WITHIN:?}"),
                        retry_after(failures),
                    );
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AcmeManager {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_renew_before_ahead_minus_up_to_a_tenth() {
        let d30 = Duration::from_secs(30 * 86_400);
        let not_after = 100 * 86_400;
        assert_eq!(renewal_due(not_after, d30, 0.0), 70 * 86_400);
        assert_eq!(renewal_due(not_after, d30, 1.0), 67 * 86_400);
        assert_eq!(renewal_due(not_after, d30, 0.5), 68 * 86_400 + 43_200);
        assert_eq!(renewal_due(not_after, d30, 7.0), 67 * 86_400, "clamped");
    }

    #[test]
    fn retries_double_from_30s_to_an_hour() {
        let secs: Vec<u64> = (1..=9).map(|f| retry_after(f).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_after(1000).as_secs(), 3600);
    }
}
