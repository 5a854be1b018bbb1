//! JWT end to end through the gateway: authentication, role checks, claims forwarded as
//! headers, and a missing secret refused at start.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::support::*;

const SECRET: &str = "test-secret-at-least-32-bytes-long!!";

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Routes: `/public` open, `/api/admin` for a valid token with role ADMIN, `/api` for any
/// valid token; both forward the token's `sub` and `role`.
const JWT_ROUTES: &str = r#"  - name: public
    match: { path_prefix: /public }
    upstream: app
  - name: admin
    match: { path_prefix: /api/admin }
    upstream: app
    filters:
      - jwt: { issuer: gatehouse, audience: gatehouse, keys: [ { secret_env: TEST_JWT_SECRET, algorithms: [HS256] } ], require: { role: ADMIN }, forward_claims: { sub: X-User-Id, role: X-User-Role } }
  - name: api
    match: { path_prefix: /api }
    upstream: app
    filters:
      - jwt: { issuer: gatehouse, audience: gatehouse, keys: [ { secret_env: TEST_JWT_SECRET, algorithms: [HS256] } ], forward_claims: { sub: X-User-Id, role: X-User-Role } }
"#;

fn jwt_config(upstream: &std::net::SocketAddr) -> String {
    config(&plain_upstream("app", *upstream), JWT_ROUTES)
}

#[tokio::test]
async fn jwt_authenticates_authorizes_and_forwards_claims() {
    let app = TestUpstream::start("app").await;
    let gw =
        TestGateway::start_with_env(&jwt_config(&app.addr), &[("TEST_JWT_SECRET", SECRET)]).await;
    let c = client();
    let valid = |role: &str| {
        token(
            json!({"sub": "42", "role": role, "iss": "gatehouse", "aud": "gatehouse", "exp": now() + 600}),
        )
    };
    let (user, admin) = (
        format!("Bearer {}", valid("USER")),
        format!("Bearer {}", valid("ADMIN")),
    );

    // missing, garbage, expired, wrong audience, wrong signature -> 401, nothing upstream
    let expired =
        token(json!({"sub": "42", "iss": "gatehouse", "aud": "gatehouse", "exp": now() - 3600}));
    let wrong_aud =
        token(json!({"sub": "42", "iss": "gatehouse", "aud": "other", "exp": now() + 600}));
    let bad_sig = encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "42", "iss": "gatehouse", "aud": "gatehouse", "exp": now() + 600}),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    let none_alg = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(
            format!(
                r#"{{"sub":"42","iss":"gatehouse","aud":"gatehouse","exp":{}}}"#,
                now() + 600
            )
            .as_bytes()
        )
    );
    for (what, auth) in [
        ("missing", None),
        ("garbage", Some("Bearer not.a.jwt".to_string())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong aud", Some(format!("Bearer {wrong_aud}"))),
        ("bad signature", Some(format!("Bearer {bad_sig}"))),
        ("alg none", Some(format!("Bearer {none_alg}"))),
    ] {
        let mut req = c.get(gw.url("/api/me"));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["x-gatehouse-error"], "unauthorized", "{what}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
    }
    assert_eq!(app.hits(), 0, "no rejected request reached the upstream");
    let logs = gw.logs();
    assert!(
        !logs.contains(&expired) && !logs.contains(&bad_sig),
        "tokens never appear in the log"
    );

    // valid token: claims forwarded as headers; spoofed copies replaced
    let spoofed = [("x-user-id", "1"), ("x-user-role", "ADMIN")];
    let r = get_with(
        &gw,
        "/api/me",
        &[("authorization", &user), spoofed[0], spoofed[1]],
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = app.last_headers();
    assert_eq!(h["x-user-id"], "42");
    assert_eq!(h["x-user-role"], "USER");

    // role check: USER on /api/admin -> 403, ADMIN -> 200
    let r = get_with(&gw, "/api/admin/users", &[("authorization", &user)]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-gatehouse-error"], "forbidden");
    let r = get_with(&gw, "/api/admin/users", &[("authorization", &admin)]).await;
    assert_eq!(r.status(), 200);

    // a public route never forwards client-sent claim headers
    let r = get_with(&gw, "/public/x", &spoofed).await;
    assert_eq!(r.status(), 200);
    let h = app.last_headers();
    assert!(
        h.get("x-user-id").is_none() && h.get("x-user-role").is_none(),
        "spoofed claim headers stripped on every route"
    );

    let m = gw.metrics_when(|m| m.contains("route=\"public\"")).await;
    let failures: f64 = m
        .lines()
        .filter(|l| l.starts_with("gatehouse_auth_failures_total{") && l.contains("route=\"api\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 6.0, "{m}");
}

fn base64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn missing_jwt_secret_is_refused_at_start() {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gw.yaml");
    std::fs::write(&p, fill(&jwt_config(&app.addr), free_port(), free_port())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["validate", "-c", p.to_str().unwrap()])
        .env_remove("TEST_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[1].filters[0]") && err.contains("TEST_JWT_SECRET"),
        "{err}"
    );
}
