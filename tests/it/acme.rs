//! ACME (RFC 8555) against pebble, the ACME test CA, with real validation: pebble's VA
//! connects to the gateway's clear-text listener (HTTP-01) or TLS listener (TLS-ALPN-01),
//! resolving the test domain to 127.0.0.1 through pebble-challtestsrv. Issuance (the
//! served chain leads to pebble's root), storage (owner-only files), renewal of a
//! short-lived certificate with a connection kept open, a dead CA during renewal (counted,
//! the old certificate keeps serving), and a restart that reuses the stored account and
//! certificate without a new order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::x509::X509;

use crate::support::tls::*;
use crate::support::*;

const DOMAIN: &str = "acme.gatehouse.test";

/// How long one order may take here (pebble validating against a debug gateway on busy
/// cores); far beyond what it takes.
const ISSUED_WITHIN: Duration = Duration::from_secs(60);

/// pebble validating against the gateway's two listener ports (chosen before either
/// starts), a storage directory that outlives one gateway, and an upstream behind it.
struct Setup {
    pebble: Pebble,
    plain_port: u16,
    tls_port: u16,
    storage: tempfile::TempDir,
    upstream: TestUpstream,
}

impl Setup {
    /// `validity`: pebble's certificate lifetime (`None`: its default, years).
    async fn new(validity: Option<Duration>) -> Self {
        let (plain_port, tls_port) = (free_port(), free_port());
        let [upstream] = upstreams(["a"]).await;
        Self {
            pebble: Pebble::start(plain_port, tls_port, validity),
            plain_port,
            tls_port,
            storage: tempfile::tempdir().unwrap(),
            upstream,
        }
    }

    /// The gateway: a clear-text listener (`with_plain`) and the TLS listener `public`
    /// whose certificate comes from pebble through `challenge`.
    async fn gateway(&self, challenge: &str, renew_before: &str, with_plain: bool) -> TestGateway {
        let plain = if with_plain {
            format!(
                "  - {{ name: plain, address: \"127.0.0.1:{}\" }}\n",
                self.plain_port
            )
        } else {
            String::new()
        };
        let yaml = format!(
            "listeners:\n{plain}  - name: public\n    address: \"{{listen}}\"\n    tls:\n      acme: {{ directory: \"{dir}\", email: ops@gatehouse.test, domains: [{DOMAIN}], storage: \"{storage}\", challenge: {challenge}, renew_before: {renew_before}, ca_file: \"{ca}\" }}\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\nshutdown: {{ grace_period: 1s }}\nupstreams:\n{up}routes:\n{ALL_TO_A}",
            dir = self.pebble.directory,
            storage = self.storage.path().display(),
            ca = self.pebble.ca_file.display(),
            up = plain_upstream("a", self.upstream.addr),
        );
        TestGateway::start_on(&gatehouse_bin(), self.tls_port, &yaml, &[], &[]).await
    }

    /// pebble's issuing root.
    async fn root(&self) -> X509 {
        X509::from_pem(self.pebble.issuing_root().await.as_bytes()).unwrap()
    }

    /// The server directory inside the storage root (one per ACME directory URL).
    fn server_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.storage.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "one directory per ACME server: {dirs:?}");
        dirs.remove(0)
    }
}

async fn renewals(gw: &TestGateway, result: &str) -> f64 {
    metric(
        gw,
        "gatehouse_acme_renewals_total",
        &[("name", DOMAIN), ("result", result)],
    )
    .await
}

/// Waits until `result` orders reach `n`; panics with both logs after `within`.
async fn wait_renewals(gw: &TestGateway, pebble: &Pebble, result: &str, n: f64, within: Duration) {
    if !eventually(within, async || renewals(gw, result).await >= n).await {
        panic!(
            "{result} orders did not reach {n} within {within:?}\n--- gateway ---\n{}\n--- pebble ---\n{}",
            gw.logs(),
            pebble.logs()
        );
    }
}

/// A TLS connection for DOMAIN whose chain verifies up to `root`.
async fn connect_verified(
    port: u16,
    root: &X509,
) -> pingora_core::tls::tokio_ssl::SslStream<tokio::net::TcpStream> {
    let hello = Hello {
        sni: Some(DOMAIN),
        ..HTTP1
    };
    connect(port, root, hello)
        .await
        .unwrap_or_else(|e| panic!("handshake verified against pebble's root: {e}"))
}

fn fingerprint_of_file(path: &Path) -> Vec<u8> {
    let chain = X509::stack_from_pem(&std::fs::read(path).unwrap()).unwrap();
    chain[0].digest(MessageDigest::sha256()).unwrap().to_vec()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn http_01_issues_from_pebble_stores_owner_only_and_a_restart_reuses_account_and_certificate()
{
    let s = Setup::new(None).await;
    let gw = s.gateway("http-01", "30d", true).await;
    wait_renewals(&gw, &s.pebble, "success", 1.0, ISSUED_WITHIN).await;
    assert_eq!(renewals(&gw, "failure").await, 0.0, "{}", gw.logs());
    assert!(
        metric(
            &gw,
            "gatehouse_acme_renewal_timestamp_seconds",
            &[("name", DOMAIN)]
        )
        .await
            > 0.0
    );
    // observability.rs checks the dashboard's and the alert rules' ACME names against
    // tests/it/data/acme-metrics.txt, a scrape like this one: it must still match.
    let scrape = gw.metrics().await;
    let captured = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/acme-metrics.txt"),
    )
    .unwrap();
    let types: Vec<&str> = captured
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .collect();
    assert_eq!(types.len(), 2, "{captured}");
    for line in types {
        assert!(
            scrape.contains(line),
            "the scrape lacks {line:?}:\n{scrape}"
        );
    }

    let root = s.root().await;
    let mut conn = connect_verified(gw.port, &root).await;
    let leaf = served(&conn);
    let (status, _) = get_on(&mut conn, DOMAIN, "/x").await;
    assert_eq!(
        status, 200,
        "routed to the upstream over the ACME certificate"
    );

    let dir = s.server_dir();
    let (crt, key, account) = (
        dir.join(format!("{DOMAIN}.crt")),
        dir.join(format!("{DOMAIN}.key")),
        dir.join("account.json"),
    );
    assert_eq!(
        fingerprint_of_file(&crt),
        leaf,
        "the stored certificate is the one served"
    );
    assert_eq!(
        (mode(&dir), mode(&crt), mode(&key), mode(&account)),
        (0o700, 0o600, 0o600, 0o600)
    );
    let events = admin_json(&gw, "/admin/status").await["events"].to_string();
    assert!(events.contains("ACME certificate issued"), "{events}");
    // A token nobody is waiting for is routed like any other path.
    let r = client()
        .get(format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/unknown",
            s.plain_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream_of(r).await.1, "a");

    let (orders, accounts) = (
        s.pebble.requests_to("/order-plz"),
        s.pebble.requests_to("/sign-me-up"),
    );
    assert_eq!((orders, accounts), (1, 1), "{}", s.pebble.logs());
    let account_before = std::fs::read(&account).unwrap();
    drop(conn);
    drop(gw);

    let gw = s.gateway("http-01", "30d", true).await;
    // Served from storage at once: the first handshake already gets it.
    let conn = connect_verified(gw.port, &root).await;
    assert_eq!(
        served(&conn),
        leaf,
        "the stored certificate, served at start"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        renewals(&gw, "success").await,
        0.0,
        "no new order: {}",
        gw.logs()
    );
    assert_eq!(renewals(&gw, "failure").await, 0.0, "{}", gw.logs());
    assert_eq!(
        s.pebble.requests_to("/order-plz"),
        1,
        "no new order at pebble"
    );
    assert_eq!(
        s.pebble.requests_to("/sign-me-up"),
        1,
        "no new account at pebble"
    );
    assert_eq!(
        std::fs::read(&account).unwrap(),
        account_before,
        "the stored account is kept"
    );
}

#[tokio::test]
async fn tls_alpn_01_issues_from_pebble_without_a_clear_text_listener() {
    let s = Setup::new(None).await;
    let gw = s.gateway("tls-alpn-01", "30d", false).await;
    wait_renewals(&gw, &s.pebble, "success", 1.0, ISSUED_WITHIN).await;
    let root = s.root().await;
    let mut conn = connect_verified(gw.port, &root).await;
    assert_eq!(
        served(&conn),
        fingerprint_of_file(&s.server_dir().join(format!("{DOMAIN}.crt")))
    );
    assert_eq!(get_on(&mut conn, DOMAIN, "/x").await.0, 200);
    assert_eq!(renewals(&gw, "failure").await, 0.0, "{}", gw.logs());
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_and_an_open_connection_survives() {
    // 40 s certificates renewed 30 s (minus up to 3 s of jitter) before they expire.
    let s = Setup::new(Some(Duration::from_secs(40))).await;
    let gw = s.gateway("http-01", "30s", true).await;
    wait_renewals(&gw, &s.pebble, "success", 1.0, ISSUED_WITHIN).await;
    let root = s.root().await;
    let mut open = connect_verified(gw.port, &root).await;
    let first = served(&open);
    assert_eq!(get_on(&mut open, DOMAIN, "/before").await.0, 200);

    wait_renewals(&gw, &s.pebble, "success", 2.0, ISSUED_WITHIN).await;
    let renewed = connect_verified(gw.port, &root).await;
    assert_ne!(
        served(&renewed),
        first,
        "a new handshake gets the renewed certificate"
    );
    assert_eq!(
        get_on(&mut open, DOMAIN, "/after").await.0,
        200,
        "the connection opened before the renewal still serves"
    );
    assert_eq!(renewals(&gw, "failure").await, 0.0, "{}", gw.logs());
}

#[tokio::test]
async fn pebble_dead_at_renewal_counts_a_failure_and_the_old_certificate_keeps_serving() {
    let mut s = Setup::new(Some(Duration::from_secs(40))).await;
    let gw = s.gateway("http-01", "30s", true).await;
    wait_renewals(&gw, &s.pebble, "success", 1.0, ISSUED_WITHIN).await;
    let root = s.root().await;
    let first = served(&connect_verified(gw.port, &root).await);
    s.pebble.kill();

    // Due 7-10 s after issuance; then the order fails at once (connection refused).
    wait_renewals(&gw, &s.pebble, "failure", 1.0, Duration::from_secs(30)).await;
    assert_eq!(renewals(&gw, "success").await, 1.0);
    let mut conn = connect_verified(gw.port, &root).await;
    assert_eq!(served(&conn), first, "the old certificate keeps serving");
    assert_eq!(get_on(&mut conn, DOMAIN, "/x").await.0, 200);
    let events = admin_json(&gw, "/admin/status").await["events"].to_string();
    assert!(events.contains("ACME order failed"), "{events}");
}
