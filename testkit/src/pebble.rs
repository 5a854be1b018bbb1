//! pebble, the ACME test CA (Debian package `pebble`), with `pebble-challtestsrv` as its
//! DNS server (every name resolves to 127.0.0.1), on fresh loopback ports; validation is
//! real (`PEBBLE_VA_ALWAYS_VALID` unset): pebble's VA connects to the HTTP-01 and
//! TLS-ALPN-01 ports given at start. Both processes are killed by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::{free_port, is_listening};

/// How long pebble may take to listen.
const UP_WITHIN: Duration = Duration::from_secs(20);

/// A running pebble and its DNS server.
pub struct Pebble {
    /// The ACME directory URL (https, trusted through [`Pebble::ca_file`]).
    pub directory: String,
    /// The CA of pebble's own HTTPS listeners (made here), PEM.
    pub ca_file: PathBuf,
    /// The management interface's port (`/roots/0`: the root that signs issued chains).
    pub management_port: u16,
    ca_pem: String,
    log_path: PathBuf,
    pebble: Child,
    dns: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{:?} does not start ({e}): install pebble (scripts/setup.sh test)",
                cmd.get_program()
            )
        })
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity` (pebble's
    /// `certificateValidityPeriod`; `None`: its default of years). Authorizations are
    /// never reused (`PEBBLE_AUTHZREUSE=0`: every order is validated) and nonces never
    /// rejected on purpose. Panics (with the logs) when either process does not come up.
    pub fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, cert_pem, key_pem) = https_identity();
        let ca_file = dir.path().join("pebble-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        let (acme_port, management_port, dns_port, dns_mgmt_port) =
            (free_port(), free_port(), free_port(), free_port());
        let mut conf = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = validity {
            conf["certificateValidityPeriod"] = v.as_secs().into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": conf }).to_string()).unwrap();
        let dns = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]),
            &dir.path().join("challtestsrv.log"),
        );
        let log_path = dir.path().join("pebble.log");
        let pebble = spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env_remove("PEBBLE_VA_ALWAYS_VALID"),
            &log_path,
        );
        let mut p = Pebble {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_file,
            management_port,
            ca_pem,
            log_path,
            pebble,
            dns,
            _dir: dir,
        };
        let deadline = Instant::now() + UP_WITHIN;
        while !(is_listening(acme_port)
            && is_listening(management_port)
            && is_listening(dns_mgmt_port))
        {
            let exited = [&mut p.pebble, &mut p.dns]
                .into_iter()
                .find_map(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("pebble or its DNS exited with {status}:\n{}", p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not listen:\n{}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// SIGKILLs pebble (by its PID); its DNS server stays.
    pub fn kill(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    /// pebble's log so far, then its DNS server's.
    pub fn logs(&self) -> String {
        let dns = self.log_path.with_file_name("challtestsrv.log");
        format!(
            "{}\n--- challtestsrv ---\n{}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            std::fs::read_to_string(dns).unwrap_or_default()
        )
    }

    /// How many requests pebble's log shows for ACME resource `path` (`/order-plz`: new
    /// orders, `/sign-me-up`: account registrations and look-ups).
    pub fn requests_to(&self, path: &str) -> usize {
        let needle = format!("POST {path} ");
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// The root CA that signs the chains pebble issues (PEM, from its management API).
    pub async fn issuing_root(&self) -> String {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        r.text().await.unwrap()
    }
}

/// A CA and a leaf for `localhost` / `127.0.0.1` signed by it, for pebble's HTTPS: (CA
/// PEM, leaf PEM, leaf key PEM).
fn https_identity() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "gatehouse test pebble HTTPS CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
