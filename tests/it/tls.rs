//! TLS on listeners, with a test CA and leaf certificates made here (rcgen) and a real
//! OpenSSL client that verifies the chain and reports which certificate it got: handshake
//! and ALPN, SNI (exact, wildcard, default), min_version, certificate reload (a connection
//! kept open across it), a broken certificate refused, the metrics, and redirect_https.

use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;
use pingora_core::tls::tokio_ssl::SslStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pki::{Leaf, Pki};
use crate::support::tls::*;
use crate::support::*;

/// A config whose listener `public` terminates TLS with `tls` (a YAML flow mapping).
fn tls_config(a: &TestUpstream, tls: &str) -> String {
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\", tls: {tls} }} ]\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\nshutdown: {{ grace_period: 2s }}\nupstreams:\n{}routes:\n{ALL_TO_A}",
        plain_upstream("a", a.addr)
    )
}

/// Starts the gateway with `files` (name, content) beside its config.
async fn start(yaml: &str, files: &[(&str, &str)]) -> TestGateway {
    TestGateway::start_program(&gatehouse_bin(), yaml, files, &[]).await
}

/// The gateway before upstream `a`, its listener's `tls` mapping `tls`, with each named leaf
/// beside its config as NAME.pem and NAME.key.
async fn serving(tls: &str, leaves: &[(&str, &Leaf)]) -> (TestUpstream, TestGateway) {
    let [a] = upstreams(["a"]).await;
    let names: Vec<_> = leaves
        .iter()
        .map(|(n, leaf)| (format!("{n}.pem"), format!("{n}.key"), leaf))
        .collect();
    let files: Vec<(&str, &str)> = names
        .iter()
        .flat_map(|(pem, key, leaf)| [(pem.as_str(), &*leaf.cert), (key.as_str(), &*leaf.key)])
        .collect();
    let gw = start(&tls_config(&a, tls), &files).await;
    (a, gw)
}

/// A gateway serving one leaf for a.test, and the CA that signed it.
struct OneLeaf {
    pki: Pki,
    ca: X509,
    leaf: Leaf,
    a: TestUpstream,
    gw: TestGateway,
}

impl OneLeaf {
    /// `extra` goes on in the listener's `tls` mapping (e.g. `, min_version: "1.3"`).
    async fn start(extra: &str) -> Self {
        let pki = Pki::new();
        let leaf = pki.leaf(&["a.test"]);
        let tls = format!("{{ cert: a.pem, key: a.key{extra} }}");
        let (a, gw) = serving(&tls, &[("a", &leaf)]).await;
        let ca = pki.ca_x509();
        Self {
            pki,
            ca,
            leaf,
            a,
            gw,
        }
    }
}

fn dir_of(gw: &TestGateway) -> std::path::PathBuf {
    gw.config_path.parent().unwrap().to_path_buf()
}

#[tokio::test]
async fn handshake_alpn_and_http_over_tls() {
    let OneLeaf {
        ca, leaf, a, gw, ..
    } = OneLeaf::start("").await;
    let mut s = connect(gw.port, &ca, HTTP1).await.unwrap();
    assert_eq!(served(&s), leaf.fingerprint());
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _) = get_on(&mut s, "a.test", "/x").await;
    assert_eq!(status, 200);
    assert_eq!(
        a.last_headers()["x-forwarded-proto"],
        "https",
        "the upstream learns the client used https"
    );
    let (status, _) = get_on(&mut s, "a.test", "/y").await;
    assert_eq!(status, 200, "keep-alive over TLS");

    // A client offering both gets h2, and pingora speaks HTTP/2 on it: its first frame
    // after our preface is a SETTINGS frame (RFC 9113 §3.4).
    let both = Hello {
        alpn: &["h2", "http/1.1"],
        ..HTTP1
    };
    let mut s = connect(gw.port, &ca, both).await.unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame, got {frame:?}");

    // No ALPN at all: HTTP/1.1.
    let none = Hello { alpn: &[], ..HTTP1 };
    let mut s = connect(gw.port, &ca, none).await.unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), None);
    assert_eq!(get_on(&mut s, "a.test", "/z").await.0, 200);
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_the_default() {
    let pki = Pki::new();
    let first = pki.leaf(&["first.test"]);
    let exact = pki.leaf(&["api.example.test"]);
    let wild = pki.leaf(&["*.example.test"]);
    let named = pki.leaf(&["ignored.test"]);
    let fallback = pki.leaf(&["fallback.test"]);
    let tls = "{ certificates: [ { cert: first.pem, key: first.key }, { cert: wild.pem, key: wild.key }, { cert: exact.pem, key: exact.key }, { cert: named.pem, key: named.key, names: [other.test] }, { cert: fallback.pem, key: fallback.key, default: true } ] }";
    let leaves = [
        ("first", &first),
        ("exact", &exact),
        ("wild", &wild),
        ("named", &named),
        ("fallback", &fallback),
    ];
    let (_a, gw) = serving(tls, &leaves).await;
    let ca = pki.ca_x509();
    // The SNI a client sends, the leaf it must get, and why.
    let cases = [
        (Some("api.example.test"), &exact, "exact beats wildcard"),
        (Some("API.Example.TEST"), &exact, "names are case-blind"),
        (Some("www.example.test"), &wild, ""),
        (
            Some("a.b.example.test"),
            &fallback,
            "a wildcard covers one label only",
        ),
        (Some("example.test"), &fallback, ""),
        (Some("first.test"), &first, ""),
        (Some("other.test"), &named, "names: overrides the SANs"),
        (Some("ignored.test"), &fallback, ""),
        (Some("unknown.test"), &fallback, "unknown name: default"),
        (None, &fallback, "no SNI: default"),
    ];
    for (sni, want, why) in cases {
        let got = leaf_of(gw.port, &ca, Hello { sni, ..HTTP1 }).await;
        assert_eq!(got, want.fingerprint(), "SNI {sni:?}: {why}");
    }
}

#[tokio::test]
async fn without_a_marked_default_the_first_certificate_is_served() {
    let pki = Pki::new();
    let first = pki.leaf(&["first.test"]);
    let second = pki.leaf(&["second.test"]);
    let tls = "{ certificates: [ { cert: 1.pem, key: 1.key }, { cert: 2.pem, key: 2.key } ] }";
    let (_a, gw) = serving(tls, &[("1", &first), ("2", &second)]).await;
    let ca = pki.ca_x509();
    let none = Hello { sni: None, ..HTTP1 };
    assert_eq!(leaf_of(gw.port, &ca, none).await, first.fingerprint());
    let second_sni = Hello {
        sni: Some("second.test"),
        ..HTTP1
    };
    assert_eq!(
        leaf_of(gw.port, &ca, second_sni).await,
        second.fingerprint()
    );
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client_and_counts_it() {
    let OneLeaf { ca, gw, .. } = OneLeaf::start(", min_version: \"1.3\"").await;
    let failures = |reason: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                "gatehouse_tls_handshake_failures_total",
                &[("listener", "public"), ("reason", reason)],
            )
            .await
        }
    };
    assert_eq!(failures("protocol_version").await, 0.0, "pre-initialized");
    let old = Hello {
        max_version: Some(SslVersion::TLS1_2),
        ..HTTP1
    };
    let refused = connect(gw.port, &ca, old).await;
    assert!(refused.is_err(), "a TLS 1.2-only client is refused");
    let counted_once = async |reason| {
        let once = eventually(Duration::from_secs(5), async || {
            failures(reason).await == 1.0
        });
        assert!(once.await, "one {reason} failure:\n{}", gw.metrics().await);
    };
    let s = connect(gw.port, &ca, HTTP1).await.unwrap();
    assert_eq!(s.ssl().version_str(), "TLSv1.3");
    counted_once("protocol_version").await;

    // Plain HTTP on the TLS port is a handshake failure too, not a request.
    let (status, _) = raw_get(gw.port, "/").await;
    assert_ne!(status, 200);
    counted_once("not_tls").await;
}

#[tokio::test]
async fn expiry_gauge_shows_each_certificates_not_after() {
    let pki = Pki::new();
    let not_after = 1_925_078_400; // 2031-01-02T00:00:00Z
    let leaf = pki.leaf_until(&["a.test", "b.test"], Some(not_after));
    let (_a, gw) = serving("{ cert: a.pem, key: a.key }", &[("a", &leaf)]).await;
    assert_eq!(
        metric(
            &gw,
            "gatehouse_tls_certificate_expiry_timestamp_seconds",
            &[("name", "a.test")]
        )
        .await,
        not_after as f64
    );

    // A renewed certificate replaces the series' value on reload; one that is no longer
    // served loses its series.
    let renewed = pki.leaf_until(&["c.test"], Some(not_after + 86_400));
    std::fs::write(dir_of(&gw).join("a.pem"), &renewed.cert).unwrap();
    std::fs::write(dir_of(&gw).join("a.key"), &renewed.key).unwrap();
    assert_eq!(admin_reload(&gw).await.status, 200);
    let m = gw.metrics().await;
    let expiry = |name| {
        metric_value(
            &m,
            "gatehouse_tls_certificate_expiry_timestamp_seconds",
            &[("name", name)],
        )
    };
    assert_eq!(expiry("c.test"), Some((not_after + 86_400) as f64));
    assert_eq!(expiry("a.test"), None, "{m}");
}

#[tokio::test]
async fn a_replaced_certificate_serves_the_next_handshake_and_open_connections_go_on() {
    let t = OneLeaf::start("").await;
    let (gw, ca, v1) = (&t.gw, &t.ca, &t.leaf);
    let v2 = t.pki.leaf(&["a.test"]);
    let mut kept = connect(gw.port, ca, HTTP1).await.unwrap();
    assert_eq!(served(&kept), v1.fingerprint());
    assert_eq!(get_on(&mut kept, "a.test", "/1").await.0, 200);

    // Renewed by writing both files and reloading (SIGHUP).
    let dir = dir_of(gw);
    rename_over(&dir.join("a.key"), &v2.key);
    rename_over(&dir.join("a.pem"), &v2.cert);
    let before = reload_successes(gw).await;
    gw.signal(SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), async || reload_successes(gw).await
            > before)
        .await,
        "reloaded:\n{}",
        gw.logs()
    );
    let fresh = connect(gw.port, ca, HTTP1).await.unwrap();
    assert_eq!(
        served(&fresh),
        v2.fingerprint(),
        "the next handshake sees the new certificate"
    );
    assert_eq!(
        get_on(&mut kept, "a.test", "/2").await.0,
        200,
        "the connection opened before the reload still serves"
    );
}

/// SIGHUP's number (Linux).
const SIGHUP: i32 = 1;

#[tokio::test]
async fn a_broken_or_mismatched_certificate_is_refused_and_the_old_one_keeps_serving() {
    let t = OneLeaf::start("").await;
    let dir = dir_of(&t.gw);
    let other = t.pki.leaf(&["a.test"]);

    // A key that is not the certificate's.
    std::fs::write(dir.join("a.pem"), &other.cert).unwrap();
    let r = admin_reload(&t.gw).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let e = &r.body["errors"][0];
    assert_eq!(e["path"], "listeners[0].tls.key", "{}", r.body);
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("\"public\"") && msg.contains("a.key") && msg.contains("does not match"),
        "names the listener, the file and the cause: {msg}"
    );
    assert_eq!(leaf_of(t.gw.port, &t.ca, HTTP1).await, t.leaf.fingerprint());

    // Not a certificate at all.
    std::fs::write(dir.join("a.pem"), "-----BEGIN CERTIFICATE-----\nnonsense\n").unwrap();
    let r = admin_reload(&t.gw).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.body["errors"][0]["path"], "listeners[0].tls.cert",
        "{}",
        r.body
    );
    assert_eq!(leaf_of(t.gw.port, &t.ca, HTTP1).await, t.leaf.fingerprint());

    // `gatehouse validate` refuses it the same way.
    let out = validate(&t.gw.config_path);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("listeners[0].tls.cert"), "{text}");

    // Fixed: applied.
    std::fs::write(dir.join("a.pem"), &t.leaf.cert).unwrap();
    assert_eq!(admin_reload(&t.gw).await.status, 200);
}

#[tokio::test]
async fn a_missing_certificate_file_stops_the_start_with_its_path() {
    let [a] = upstreams(["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &path,
        fill(
            &tls_config(&a, "{ cert: missing.pem, key: missing.key }"),
            free_port(),
            free_port(),
        ),
    )
    .unwrap();
    let out = validate(&path);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("listeners[0].tls.cert") && text.contains("missing.pem"),
        "{text}"
    );
}

#[tokio::test]
async fn proxy_protocol_header_comes_before_the_handshake() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.test"]);
    let [a] = upstreams(["a"]).await;
    let yaml = tls_config(&a, "{ cert: a.pem, key: a.key }").replace(
        "tls: {",
        "proxy_protocol: true, trusted_proxies: [127.0.0.1], tls: {",
    );
    let gw = start(&yaml, &[("a.pem", &leaf.cert), ("a.key", &leaf.key)]).await;
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.cert_store_mut().add_cert(pki.ca_x509()).unwrap();
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .into_ssl("a.test")
        .unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let mut s = SslStream::new(ssl, tcp).unwrap();
    tokio::time::timeout(Duration::from_secs(10), Pin::new(&mut s).connect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served(&s), leaf.fingerprint());
    assert_eq!(get_on(&mut s, "a.test", "/pp").await.0, 200);
    assert_eq!(
        a.last_headers()["x-forwarded-for"],
        "198.51.100.7",
        "the PROXY header's source is the client"
    );
}

/// A request on a plain connection with this Host: status and the `Location` header.
async fn redirect_of(port: u16, method: &str, host: &str, target: &str) -> (u16, Option<String>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text[9..12].parse().unwrap();
    let location = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    (status, location)
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_same_url_except_acme_challenges() {
    let [a] = upstreams(["a"]).await;
    let with_port = config(&plain_upstream("a", a.addr), ALL_TO_A).replace(
        "name: public, address: \"{listen}\"",
        "name: public, address: \"{listen}\", redirect_https: true, https_port: 8443",
    );
    let gw = TestGateway::start(&with_port).await;
    assert_eq!(
        redirect_of(gw.port, "GET", "shop.test:8080", "/a/b?x=1&y=%20").await,
        (308, Some("https://shop.test:8443/a/b?x=1&y=%20".into()))
    );
    assert_eq!(
        redirect_of(gw.port, "POST", "shop.test", "/form").await,
        (308, Some("https://shop.test:8443/form".into())),
        "308 keeps the method: POSTs are redirected too"
    );
    assert_eq!(
        redirect_of(gw.port, "GET", "[2001:db8::1]:8080", "/").await,
        (308, Some("https://[2001:db8::1]:8443/".into()))
    );
    let (status, location) = redirect_of(
        gw.port,
        "GET",
        "shop.test",
        "/.well-known/acme-challenge/tok-1",
    )
    .await;
    assert_eq!((status, location), (200, None), "ACME HTTP-01 is routed");
    assert_eq!(a.last_path(), "/.well-known/acme-challenge/tok-1");
    assert_eq!(a.hits(), 1, "only the challenge reached the upstream");

    // Reloadable: without https_port the Location has no port (443).
    let plain = with_port.replace(", https_port: 8443", "");
    gw.write_config(&plain);
    assert_applied(&gw, &plain).await;
    assert_eq!(
        redirect_of(gw.port, "GET", "shop.test:8080", "/a").await,
        (308, Some("https://shop.test/a".into()))
    );
}

#[tokio::test]
async fn a_renewed_certificate_file_is_served_without_any_reload_trigger() {
    let pki = Pki::new();
    let v1 = pki.leaf(&["a.test"]);
    let v2 = pki.leaf(&["a.test"]);
    let [a] = upstreams(["a"]).await;
    // Certificates in their own directory (absolute paths), as /etc/letsencrypt would be.
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_path_buf();
    std::fs::write(dir.join("a.pem"), &v1.cert).unwrap();
    std::fs::write(dir.join("a.key"), &v1.key).unwrap();
    let tls = format!(
        "{{ cert: \"{}\", key: \"{}\" }}",
        dir.join("a.pem").display(),
        dir.join("a.key").display()
    );
    let gw = start(&tls_config(&a, &tls), &[]).await;
    let ca = pki.ca_x509();
    let mut kept = connect(gw.port, &ca, HTTP1).await.unwrap();
    assert_eq!(served(&kept), v1.fingerprint());

    // What certbot or cert-manager does: the new files renamed into place.
    rename_over(&dir.join("a.key"), &v2.key);
    rename_over(&dir.join("a.pem"), &v2.cert);
    let renewed = eventually(Duration::from_secs(10), async || {
        leaf_of(gw.port, &ca, HTTP1).await == v2.fingerprint()
    })
    .await;
    assert!(renewed, "the new certificate is served:\n{}", gw.logs());
    assert_eq!(get_on(&mut kept, "a.test", "/still").await.0, 200);
    assert!(
        gw.logs().contains("\"trigger\":\"certificate\""),
        "the reload says why:\n{}",
        gw.logs()
    );
}
