//! The JWT attack suite (issue 18): forged, confused and malformed tokens against a filter
//! with an HS256 secret, an RS256 public key and an ES256 public key. Every one is a 401
//! (never a pass, never an internal error), a valid control token passes, and no key URL a
//! token names (`jku`, `x5u`, `jwk`, `x5c`) is ever fetched: the test serves them and
//! counts the connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use gatehouse_filters::metrics::AUTH_FAILURE_REASONS;
use gatehouse_filters::{build, FilterConfig, FilterRuntime};
use jsonwebtoken::{Algorithm, EncodingKey};
use pingora_http::RequestHeader;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::{key, key_path, metric, run};

const SECRET: &str = "an-attack-suite-secret-long-enough-0123456789";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({"sub": "u1", "iss": "gatehouse", "aud": "gatehouse", "exp": now() + 600, "iat": now()})
}

/// A token from a raw header and payload text, signed with `key` as `alg`.
fn forge(header: &Value, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

/// A token with a raw header and payload and `signature` as its third part.
fn unsigned(header: &Value, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    )
}

fn hs(secret: &[u8], header: Value, payload: &Value) -> String {
    forge(
        &header,
        &payload.to_string(),
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
    )
}

fn rs_attacker(header: Value, payload: &Value) -> String {
    let k = EncodingKey::from_rsa_pem(&key("rsa2_private.pem")).unwrap();
    forge(&header, &payload.to_string(), Algorithm::RS256, &k)
}

/// A loopback server that counts connections (and answers each with an attacker JWKS).
async fn key_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"keys":[]}"#;
            let _ = s
                .write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        .as_bytes(),
                )
                .await;
        }
    });
    (format!("http://{addr}"), hits)
}

fn filter(registry: &prometheus::Registry) -> Arc<dyn gatehouse_filters::Filter> {
    std::env::set_var("GH_ATTACK_JWT_SECRET", SECRET);
    let cfg: FilterConfig = serde_json::from_value(json!({"jwt": {
        "issuer": "gatehouse",
        "audience": "gatehouse",
        "keys": [
            {"secret_env": "GH_ATTACK_JWT_SECRET", "algorithms": ["HS256"]},
            {"pem_file": key_path("rsa_public.pem"), "algorithms": ["RS256"], "kid": "rsa-1"},
            {"pem_file": key_path("ec256_public.pem"), "algorithms": ["ES256"]}
        ]
    }}))
    .unwrap();
    let rt = Arc::new(FilterRuntime::new(None, registry).unwrap());
    build(&cfg, "test_route", &rt).unwrap()
}

fn bearer(token: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/api", None).unwrap();
    r.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    r
}

#[tokio::test]
async fn every_attack_token_is_401_the_control_passes_and_no_key_url_is_fetched() {
    let registry = prometheus::Registry::new();
    let f = filter(&registry);
    let (url, hits) = key_server().await;
    let c = claims();
    let payload = c.to_string();
    let mut attacks: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| attacks.push((name.to_string(), token));

    // alg none, every capitalization, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        add(
            &format!("alg {alg}"),
            unsigned(&json!({"alg": alg, "typ": "JWT"}), &payload, ""),
        );
        add(
            &format!("alg {alg} with a signature"),
            unsigned(&json!({"alg": alg}), &payload, &b64(b"sig")),
        );
    }
    // RS256 / ES256 public keys used as the HS256 secret, in several encodings.
    let rsa_pem = key("rsa_public.pem");
    let ec_pem = key("ec256_public.pem");
    let der = |pem: &[u8]| {
        let text = String::from_utf8_lossy(pem);
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let trimmed = |pem: &[u8]| String::from_utf8_lossy(pem).trim_end().as_bytes().to_vec();
    for (enc, secret) in [
        ("RSA PEM", rsa_pem.clone()),
        ("RSA PEM without the last newline", trimmed(&rsa_pem)),
        ("RSA DER", der(&rsa_pem)),
        ("EC PEM", ec_pem.clone()),
        ("EC DER", der(&ec_pem)),
    ] {
        add(
            &format!("HS256 signed with the {enc} public key"),
            hs(&secret, json!({"alg": "HS256", "typ": "JWT"}), &c),
        );
        add(
            &format!("HS256 with the {enc} key and the RSA kid"),
            hs(&secret, json!({"alg": "HS256", "kid": "rsa-1"}), &c),
        );
    }
    // ES256 with r = s = 0 (psychic signatures, CVE-2022-21449).
    add(
        "ES256 r = s = 0",
        unsigned(&json!({"alg": "ES256"}), &payload, &b64(&[0u8; 64])),
    );
    // Stripped and truncated signatures.
    let valid = hs(SECRET.as_bytes(), json!({"alg": "HS256", "typ": "JWT"}), &c);
    let (signed_part, sig) = valid.rsplit_once('.').unwrap();
    add("stripped signature", format!("{signed_part}."));
    add("no signature part", signed_part.to_string());
    add(
        "truncated signature",
        format!("{signed_part}.{}", &sig[..sig.len() / 2]),
    );
    let rs_valid = forge(
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &payload,
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&key("rsa_private.pem")).unwrap(),
    );
    let (rs_part, rs_sig) = rs_valid.rsplit_once('.').unwrap();
    add(
        "RS256 truncated signature",
        format!("{rs_part}.{}", &rs_sig[..rs_sig.len() - 8]),
    );
    // Time claims.
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let hs_ok = |p: &Value| hs(SECRET.as_bytes(), json!({"alg": "HS256"}), p);
    add("expired", hs_ok(&with("exp", json!(now() - 3600))));
    add(
        "nbf a day ahead",
        hs_ok(&with("nbf", json!(now() + 86_400))),
    );
    add(
        "iat a day ahead",
        hs_ok(&with("iat", json!(now() + 86_400))),
    );
    add(
        "exp as a string",
        hs_ok(&with("exp", json!((now() + 600).to_string()))),
    );
    add("no exp", hs_ok(&without("exp")));
    // Issuer and audience.
    add("wrong iss", hs_ok(&with("iss", json!("attacker"))));
    add("missing iss", hs_ok(&without("iss")));
    add("wrong aud", hs_ok(&with("aud", json!("attacker"))));
    add("missing aud", hs_ok(&without("aud")));
    // Hostile kids: path traversal and SQL-like text name no key.
    for kid in [
        "../../../../dev/null",
        "/etc/passwd",
        "' OR '1'='1' --",
        "rsa-1\u{0}",
    ] {
        add(
            &format!("kid {kid:?}"),
            rs_attacker(json!({"alg": "RS256", "kid": kid}), &c),
        );
    }
    // Key material named by the token itself: never fetched, never used.
    let attacker_jwk = json!({"kty": "RSA", "n": b64(b"attacker"), "e": "AQAB"});
    for (name, header) in [
        (
            "jku",
            json!({"alg": "RS256", "jku": format!("{url}/jwks.json")}),
        ),
        (
            "x5u",
            json!({"alg": "RS256", "x5u": format!("{url}/cert.pem")}),
        ),
        ("jwk", json!({"alg": "RS256", "jwk": attacker_jwk})),
        (
            "x5c",
            json!({"alg": "RS256", "x5c": [b64(b"attacker-cert")]}),
        ),
        (
            "jku with the RSA kid",
            json!({"alg": "RS256", "kid": "rsa-1", "jku": format!("{url}/jwks.json")}),
        ),
    ] {
        add(
            &format!("{name} header, attacker-signed"),
            rs_attacker(header, &c),
        );
    }
    // Payloads that are not a JSON object, and headers that are not JSON.
    for (name, p) in [
        ("array payload", "[1,2,3]"),
        ("string payload", "\"u1\""),
        ("non-JSON payload", "not json"),
        ("number payload", "42"),
    ] {
        add(
            name,
            forge(
                &json!({"alg": "HS256"}),
                p,
                Algorithm::HS256,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        );
    }
    add(
        "non-JSON header",
        format!(
            "{}.{}.{}",
            b64(b"not json"),
            b64(payload.as_bytes()),
            b64(b"x")
        ),
    );
    add(
        "crit with an unknown extension",
        hs(
            SECRET.as_bytes(),
            json!({"alg": "HS256", "crit": ["x-attack"], "x-attack": true}),
            &c,
        ),
    );
    add("four parts", format!("{valid}.extra"));
    add("oversized token", {
        let mut big = claims();
        big["pad"] = json!("x".repeat(16 * 1024));
        hs_ok(&big)
    });
    add("garbage", "a.b.c".to_string());
    add("empty parts", "..".to_string());

    let mut failures = Vec::new();
    for (name, token) in &attacks {
        let out = run(f.as_ref(), bearer(token), None, None).await;
        if out.status() != 401 || out.claims.is_some() {
            failures.push(format!("{name}: status {}", out.status()));
        }
    }
    assert!(failures.is_empty(), "not refused with 401: {failures:#?}");

    // The controls pass: the same filter accepts real tokens of each key.
    for (name, token) in [("HS256", &valid), ("RS256", &rs_valid)] {
        let out = run(f.as_ref(), bearer(token), None, None).await;
        assert_eq!(out.status(), 0, "control {name} passes");
        assert_eq!(out.claims.as_ref().unwrap()["sub"], "u1");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no key URL was fetched");
    // Every reason but those no attack here can cause: each attack carries a token, the
    // keys are local (no key URL) and the filter requires no claim value.
    let not_attacked = ["missing_token", "keys_unavailable", "forbidden"];
    let refused: f64 = AUTH_FAILURE_REASONS
        .iter()
        .filter(|r| !not_attacked.contains(r))
        .map(|r| {
            metric(
                &registry,
                "gatehouse_auth_failures_total",
                &[("route", "test_route"), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(refused, attacks.len() as f64, "each refusal counted once");
    eprintln!("{} attack tokens refused with 401", attacks.len());
}
