//! Redis over TLS (`rediss://`): the rate limiter reaches a TLS-only redis-server that
//! requires a client certificate, with the CA and client certificate from `redis.tls`;
//! without the client certificate the server refuses and the limit's failure policy
//! applies. Certificates are made in the test (rcgen).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::*;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: with rcgen's default name on both, a leaf's issuer names
        // itself and OpenSSL answers "unknown CA".
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.crt", ca.pem());
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string()]),
            ("client", vec!["gatehouse".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).unwrap();
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn config(upstream: &std::net::SocketAddr, redis_url: &str, tls: &str) -> String {
    AppConfig::new(&[*upstream])
        .top("runtime: { threads: 1 }")
        .top(&format!(
            "redis: {{ url: \"{redis_url}\", timeout: 500ms, tls: {tls} }}"
        ))
        .route(
            "limited",
            "/",
            &["rate_limit: { name: per_client, key: \"header:x-client\", limit: 3, window: 1m, on_redis_error: fail_open }"],
        )
        .to_string()
}

fn files(pki: &Pki, client: bool) -> String {
    let p = |n: &str| pki.path(n).display().to_string();
    if client {
        format!(
            "{{ ca_file: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}",
            p("ca.crt"),
            p("client.crt"),
            p("client.key")
        )
    } else {
        format!("{{ ca_file: \"{}\" }}", p("ca.crt"))
    }
}

async fn statuses(gw: &TestGateway, n: usize) -> Vec<u16> {
    let key = unique("tls");
    let mut out = Vec::new();
    for _ in 0..n {
        let r = client()
            .get(gw.url("/x"))
            .header("x-client", &key)
            .send()
            .await
            .unwrap();
        out.push(r.status().as_u16());
    }
    out
}

/// A TLS-only Redis that requires client certificates, and a gateway limiting through it
/// with the CA and, when `client_cert`, the client certificate. The parts stay alive with
/// the returned values.
async fn gateway_with_tls_redis(
    client_cert: bool,
) -> (Pki, PrivateRedis, TestUpstream, TestGateway) {
    let pki = Pki::new();
    let p = |n: &str| pki.path(n);
    let redis = PrivateRedis::start_tls(&p("server.crt"), &p("server.key"), &p("ca.crt"), true);
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(
        &app.addr,
        &redis.tls_url(),
        &files(&pki, client_cert),
    ))
    .await;
    (pki, redis, app, gw)
}

#[tokio::test]
async fn rate_limits_reach_a_tls_redis_with_a_client_certificate() {
    let (_pki, _redis, _app, gw) = gateway_with_tls_redis(true).await;
    // fail_open admits everything when Redis is unreachable: the 429s prove the counts
    // live in the TLS Redis.
    assert_eq!(
        statuses(&gw, 5).await,
        [200, 200, 200, 429, 429],
        "gateway log:\n{}",
        gw.logs()
    );
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "gatehouse_redis_up", &[]), Some(1.0));
}

#[tokio::test]
async fn a_tls_redis_refuses_a_gateway_without_its_client_certificate() {
    let (_pki, _redis, _app, gw) = gateway_with_tls_redis(false).await;
    // The handshake fails (the server wants a certificate): fail_open admits all.
    assert_eq!(statuses(&gw, 5).await, [200; 5]);
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "gatehouse_redis_up", &[]), Some(0.0));
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_ratelimit_decisions_total",
            &[("limit", "per_client"), ("decision", "fail_open")]
        ),
        Some(5.0),
        "every request took the fail_open path"
    );
    let connect_errors =
        metric_value(&m, "gatehouse_redis_errors_total", &[("op", "connect")]).unwrap_or(0.0);
    assert!(
        connect_errors >= 1.0,
        "the refused handshake is a connect error:\n{m}"
    );
}

#[test]
fn redis_tls_config_errors_are_located() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: String, want: &str| {
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            yaml.replace("{listen}", "127.0.0.1:1")
                .replace("{admin}", "127.0.0.1:2"),
        )
        .unwrap();
        let out = std::process::Command::new(gatehouse_bin())
            .args(["validate", "-c"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "refused: {want}");
        assert!(err.contains(want), "{want:?} in:\n{err}");
    };
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    check(
        config(&up, "redis://127.0.0.1:6379", &files(&pki, false)),
        "redis.tls: needs rediss:// URLs",
    );
    check(
        config(
            &up,
            "rediss://127.0.0.1:6379",
            "{ ca_file: /nonexistent/ca.pem }",
        ),
        "redis.tls.ca_file: cannot read",
    );
    check(
        config(
            &up,
            "rediss://127.0.0.1:6379",
            &format!(
                "{{ client_cert: \"{}\" }}",
                pki.path("client.crt").display()
            ),
        ),
        "redis.tls.client_cert: needs client_key",
    );
}
