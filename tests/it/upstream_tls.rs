//! TLS to upstreams, against real OpenSSL servers whose certificates are made here (rcgen):
//! a verified HTTPS upstream, a wrong CA and a wrong server name refused (502
//! `upstream_tls`, outcome `tls_error`) without sharing pooled connections with the good
//! one, `verify: false`, mutual TLS, health probes over TLS, HTTP/2 by ALPN, and the
//! located errors of bad TLS settings.

use std::net::SocketAddr;
use std::time::Duration;

use openssl::ssl::SslVersion;

use crate::support::https_upstream::https_upstream;
use crate::support::pki::Pki;
use crate::support::*;

/// TLS settings that trust the test CA (`ca.pem`) and expect the name `localhost`.
const TEST_CA: &str = "{ ca_file: ca.pem, server_name: localhost }";
/// TLS settings that trust another CA (`other.pem`) than the one that signed the upstream.
const OTHER_CA: &str = "{ ca_file: other.pem, server_name: localhost }";

/// The CA files beside the gateway's config: `ca.pem` (of `pki`) and `other.pem`.
fn ca_files(pki: &Pki, other: &Pki) -> [(&'static str, String); 2] {
    [("ca.pem", pki.ca_pem()), ("other.pem", other.ca_pem())]
}

/// Upstream `name` to the one endpoint `addr` over TLS (`tls` a YAML flow mapping), no
/// retries, so that one request is one try.
fn tls_upstream(name: &str, addr: SocketAddr, tls: &str, extra: &str) -> String {
    static_upstream(
        name,
        &[addr],
        &format!("    retry: null\n    tls: {tls}\n{extra}"),
    )
}

/// The gateway with `upstreams`, a route `/<name>/` to each upstream named, and `files`
/// beside its config (the TLS paths are relative to it).
async fn gateway(upstreams: &str, names: &[&str], files: &[(&str, &str)]) -> TestGateway {
    let routes: String = names
        .iter()
        .map(|n| route(n, &format!("/{n}/"), n))
        .collect();
    TestGateway::start_program(&gatehouse_bin(), &config(upstreams, &routes), files, &[]).await
}

/// Status, `X-Gatehouse-Error` and the echoing upstream's JSON (null for a refusal) of
/// `GET path`.
async fn call(gw: &TestGateway, path: &str) -> (u16, String, serde_json::Value) {
    let r = send(client().get(gw.url(path))).await;
    let code = r.header("x-gatehouse-error").unwrap_or("").to_string();
    let body = if code.is_empty() {
        r.body.clone()
    } else {
        serde_json::Value::Null
    };
    (r.status, code, body)
}

async fn outcome(gw: &TestGateway, upstream: &str, outcome: &str) -> f64 {
    metric(
        gw,
        "gatehouse_upstream_requests_total",
        &[("upstream", upstream), ("outcome", outcome)],
    )
    .await
}

#[tokio::test]
async fn verified_upstream_and_refused_certificates() {
    let (pki, other) = (Pki::new(), Pki::new());
    let up = https_upstream("secure", &pki.leaf(&["localhost"]), None, None).await;
    let ups = [
        tls_upstream("good", up.addr, TEST_CA, ""),
        tls_upstream("wrongca", up.addr, OTHER_CA, ""),
        tls_upstream(
            "wrongname",
            up.addr,
            "{ ca_file: ca.pem, server_name: other.test }",
            "",
        ),
        // No CA file: the system's roots, which do not know the test CA.
        tls_upstream("systemroots", up.addr, "{ server_name: localhost }", ""),
        tls_upstream("noverify", up.addr, "{ verify: false }", ""),
    ]
    .concat();
    let names = ["good", "wrongca", "wrongname", "systemroots", "noverify"];
    let files = ca_files(&pki, &other);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let gw = gateway(&ups, &names, &files).await;

    // The good upstream first: its pooled connection (same address and name) must not be
    // handed to the upstreams whose settings refuse the certificate.
    for _ in 0..2 {
        let (status, code, body) = call(&gw, "/good/x").await;
        assert_eq!((status, code.as_str()), (200, ""), "{body}");
        assert_eq!(
            (body["upstream"].as_str(), body["path"].as_str()),
            (Some("secure"), Some("/good/x"))
        );
    }
    for name in ["wrongca", "wrongname", "systemroots"] {
        let (status, code, _) = call(&gw, &format!("/{name}/x")).await;
        assert_eq!((status, code.as_str()), (502, "upstream_tls"), "{name}");
        assert_eq!(outcome(&gw, name, "tls_error").await, 1.0, "{name}");
        assert_eq!(outcome(&gw, name, "success").await, 0.0, "{name}");
    }
    let (status, _, body) = call(&gw, "/noverify/x").await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("secure")));
    assert_eq!(outcome(&gw, "good", "success").await, 2.0);
    assert_eq!(
        up.hits(),
        3,
        "only the good and the unverified requests arrived"
    );
    let logs = gw.logs();
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"error\":\"upstream_tls\"") && l.contains("\"status\":502"))
        .collect();
    assert_eq!(refused.len(), 3, "{logs}");
}

/// An mTLS upstream refuses the gateway without its client certificate. Over TLS 1.2 the
/// refusal is part of the handshake (`upstream_tls`); over TLS 1.3 the client's side of the
/// handshake is over before the server checks its certificate, so the refusal arrives as
/// the server's reset of the connection the request was written to (`upstream_reset`).
#[tokio::test]
async fn mutual_tls_upstream_requires_the_client_certificate() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let tls12 = https_upstream(
        "mtls12",
        &leaf,
        Some(pki.ca_x509()),
        Some(SslVersion::TLS1_2),
    )
    .await;
    let tls13 = https_upstream("mtls13", &leaf, Some(pki.ca_x509()), None).await;
    let client = pki.leaf(&["gatehouse"]);
    let with_cert = "{ ca_file: ca.pem, server_name: localhost, client_cert: client.pem, client_key: client.key }";
    let without = TEST_CA;
    let ups = [
        tls_upstream("cert12", tls12.addr, with_cert, ""),
        tls_upstream("nocert12", tls12.addr, without, ""),
        tls_upstream("cert13", tls13.addr, with_cert, ""),
        tls_upstream("nocert13", tls13.addr, without, ""),
    ]
    .concat();
    let ca = pki.ca_pem();
    let files = [
        ("ca.pem", ca.as_str()),
        ("client.pem", client.cert.as_str()),
        ("client.key", client.key.as_str()),
    ];
    let gw = gateway(&ups, &["cert12", "nocert12", "cert13", "nocert13"], &files).await;
    for (version, up, refusal, outcome_label) in [
        ("12", &tls12, "upstream_tls", "tls_error"),
        ("13", &tls13, "upstream_reset", "reset"),
    ] {
        let (status, code, body) = call(&gw, &format!("/cert{version}/a")).await;
        assert_eq!((status, code.as_str()), (200, ""), "{}", gw.logs());
        assert_eq!(body["upstream"], format!("mtls{version}"));
        let nocert = format!("nocert{version}");
        let (status, code, _) = call(&gw, &format!("/{nocert}/a")).await;
        assert_eq!((status, code.as_str()), (502, refusal), "{}", gw.logs());
        assert_eq!(outcome(&gw, &nocert, outcome_label).await, 1.0);
        let (status, _, _) = call(&gw, &format!("/cert{version}/b")).await;
        assert_eq!(status, 200);
        assert_eq!(
            up.hits(),
            2,
            "TLS 1.{version}: the refused request never arrived"
        );
    }
}

#[tokio::test]
async fn health_probes_speak_tls_with_the_upstreams_settings() {
    let (pki, other) = (Pki::new(), Pki::new());
    let up = https_upstream("secure", &pki.leaf(&["localhost"]), None, None).await;
    let check = "    health_check: { path: /health, interval: 200ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1, initial_state: unhealthy }\n";
    let ups = [
        tls_upstream("trusted", up.addr, TEST_CA, check),
        tls_upstream("untrusted", up.addr, OTHER_CA, check),
    ]
    .concat();
    let files = ca_files(&pki, &other);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let gw = gateway(&ups, &["trusted", "untrusted"], &files).await;
    let ep = up.addr.to_string();
    let healthy = async |u: &str| {
        metric(
            &gw,
            "gatehouse_upstream_endpoint_healthy",
            &[("upstream", u), ("endpoint", ep.as_str())],
        )
        .await
    };
    assert!(
        eventually(Duration::from_secs(10), async || healthy("trusted").await
            == 1.0)
        .await,
        "{}",
        gw.logs()
    );
    let (status, _, body) = call(&gw, "/trusted/x").await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("secure")));
    // Several probe rounds later the untrusted one is still down: its probes fail the
    // handshake, as its requests would.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(healthy("untrusted").await, 0.0);
    let (status, code, _) = call(&gw, "/untrusted/x").await;
    assert_eq!((status, code.as_str()), (503, "no_healthy_endpoint"));
}

#[tokio::test]
async fn http2_over_tls_by_alpn() {
    let pki = Pki::new();
    let up = https_upstream("h2", &pki.leaf(&["localhost"]), None, None).await;
    let ups = [
        tls_upstream("two", up.addr, TEST_CA, "    protocol: h2\n"),
        tls_upstream("one", up.addr, TEST_CA, ""),
    ]
    .concat();
    let gw = gateway(&ups, &["two", "one"], &[("ca.pem", pki.ca_pem().as_str())]).await;
    for (name, version) in [
        ("two", "HTTP/2.0"),
        ("one", "HTTP/1.1"),
        ("two", "HTTP/2.0"),
    ] {
        let (status, _, body) = call(&gw, &format!("/{name}/v")).await;
        assert_eq!(status, 200, "{name}: {}", gw.logs());
        assert_eq!(body["version"], version, "{name}");
    }
}

#[test]
fn bad_tls_settings_are_refused_with_their_location() {
    let pki = Pki::new();
    let (leaf, stranger) = (pki.leaf(&["gatehouse"]), pki.leaf(&["other"]));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", &pki.ca_pem());
    write("empty.pem", "no certificate here\n");
    write("client.pem", &leaf.cert);
    write("stranger.key", &stranger.key);
    let ups = [
        "upstreams:\n",
        "  missing: { discovery: { static: [ { address: \"127.0.0.1:1\" } ] }, tls: { ca_file: nope.pem, server_name: a.test } }\n",
        "  nopem: { discovery: { static: [ { address: \"127.0.0.1:2\" } ] }, tls: { ca_file: empty.pem, server_name: a.test } }\n",
        "  mismatch: { discovery: { static: [ { address: \"127.0.0.1:3\" } ] }, tls: { ca_file: ca.pem, server_name: a.test, client_cert: client.pem, client_key: stranger.key } }\n",
        "  nokey: { discovery: { static: [ { address: \"127.0.0.1:4\" } ] }, tls: { server_name: a.test, client_cert: client.pem } }\n",
        "  cleartext: { protocol: h2, discovery: { static: [ { address: \"127.0.0.1:5\" } ] } }\n",
        "  h2ctls: { protocol: h2c, discovery: { static: [ { address: \"127.0.0.1:6\" } ] }, tls: { server_name: a.test } }\n",
        "  byip: { discovery: { static: [ { address: \"127.0.0.1:7\" } ] }, tls: { ca_file: ca.pem } }\n",
    ]
    .concat();
    // Semantic errors are reported before the files are read: two files, two runs.
    let cases = [
        (
            "semantic.yaml",
            ups.lines()
                .filter(|l| !l.contains("missing") && !l.contains("nopem") && !l.contains("mismatch"))
                .collect::<Vec<_>>()
                .join("\n"),
            vec![
                "upstreams.nokey.tls.client_key: `client_cert` needs its `client_key`",
                "upstreams.cleartext.protocol: `h2` is HTTP/2 over TLS, and this upstream has no `tls` block",
                "upstreams.h2ctls.tls: `h2c` is clear-text HTTP/2 and cannot be combined with `tls`",
                "upstreams.byip.tls.server_name: endpoint \"127.0.0.1:7\" is an IP address",
            ],
        ),
        (
            "files.yaml",
            ups.lines()
                .filter(|l| {
                    ["upstreams:", "missing", "nopem", "mismatch"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            vec![
                "upstreams.missing.tls.ca_file: upstream \"missing\": ",
                "nope.pem: cannot read",
                "upstreams.nopem.tls.ca_file: upstream \"nopem\": ",
                "empty.pem: holds no PEM certificate",
                "upstreams.mismatch.tls.client_key: upstream \"mismatch\": ",
                "stranger.key: the private key does not match the certificate's public key",
            ],
        ),
    ];
    for (file, upstreams, expect) in cases {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            format!(
                "listeners: [ {{ name: a, address: \"127.0.0.1:1\" }} ]\n{upstreams}\nroutes: []\n"
            ),
        )
        .unwrap();
        let out = validate(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{file}: expected {e:?} in:\n{stderr}");
        }
    }
}
