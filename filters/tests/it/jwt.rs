//! The jwt filter on hand-built requests: every algorithm family, every 401 case, 403.

use std::sync::Arc;

use gatehouse_filters::{build, FilterConfig, FilterRuntime};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;
use serde_json::{json, Value};

use crate::support::{key, key_path, metric, run, Outcome};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn set_secret() {
    // Same value from every test: concurrent writes are harmless.
    std::env::set_var("GH_TEST_JWT_SECRET", SECRET);
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({"sub": "user-42", "role": "USER", "iss": "gatehouse", "aud": "gatehouse", "exp": now() + 600})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(SECRET.as_bytes())
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key("ec256_private.pem")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key("ec384_private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key("ed_private.pem")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key("rsa_private.pem")).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    encode(&h, claims, &key).unwrap()
}

fn config(extra: Value) -> FilterConfig {
    let mut cfg = json!({"jwt": {
        "issuer": "gatehouse",
        "audience": ["gatehouse", "api"],
        "keys": [
            {"secret_env": "GH_TEST_JWT_SECRET", "algorithms": ["HS256", "HS384", "HS512"]},
            {"pem_file": key_path("rsa_public.pem"), "algorithms": ["RS256", "RS384", "RS512", "PS256"]},
            {"pem_file": key_path("ec256_public.pem"), "algorithms": ["ES256"]},
            {"pem_file": key_path("ec384_public.pem"), "algorithms": ["ES384"]},
            {"pem_file": key_path("ed_public.pem"), "algorithms": ["EdDSA"]}
        ],
        "forward_claims": {"sub": "X-User-Id", "role": "X-User-Role"},
        "cookie": "session"
    }});
    for (k, v) in extra.as_object().unwrap() {
        cfg["jwt"][k] = v.clone();
    }
    serde_json::from_value(cfg).unwrap()
}

struct Fixture {
    registry: prometheus::Registry,
    filter: Arc<dyn gatehouse_filters::Filter>,
}

/// A fixture with the test config plus `extra`.
fn fixture(extra: Value) -> Fixture {
    fixture_of(&config(extra))
}

/// A fixture of `cfg`, its metrics in a registry of its own.
fn fixture_of(cfg: &FilterConfig) -> Fixture {
    set_secret();
    let registry = prometheus::Registry::new();
    let rt = Arc::new(FilterRuntime::new(None, &registry).unwrap());
    let filter = build(cfg, "test_route", &rt).unwrap();
    Fixture { registry, filter }
}

/// A fixture whose filter has only the given key sources.
fn fixture_with_keys(keys: Value) -> Fixture {
    fixture_of(&serde_json::from_value(json!({"jwt": {"keys": keys}})).unwrap())
}

fn bearer(token: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/api/user/me", None).unwrap();
    r.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    r
}

impl Fixture {
    async fn call(&self, req: RequestHeader) -> Outcome {
        run(self.filter.as_ref(), req, None, None).await
    }

    /// The filter's status for an HS256 token with `claims` (0: passed).
    async fn hs256_status(&self, claims: &Value) -> u16 {
        let token = sign(Algorithm::HS256, None, claims);
        self.call(bearer(&token)).await.status()
    }

    fn failures(&self, reason: &str) -> f64 {
        metric(
            &self.registry,
            "gatehouse_auth_failures_total",
            &[("route", "test_route"), ("reason", reason)],
        )
    }

    /// Asserts a 401 counted under `reason`.
    async fn assert_401(&self, token: &str, reason: &str) {
        let before = self.failures(reason);
        let out = self.call(bearer(token)).await;
        assert_eq!(out.status(), 401, "expected 401 ({reason})");
        let r = out.response.as_ref().unwrap();
        assert_eq!(r.error_code, Some("unauthorized"));
        assert_eq!(
            out.header("www-authenticate").as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(self.failures(reason), before + 1.0, "reason label {reason}");
        assert!(out.claims.is_none());
    }
}

#[tokio::test]
async fn every_algorithm_family_is_accepted() {
    let f = fixture(json!({}));
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let out = f.call(bearer(&sign(alg, None, &claims()))).await;
        assert_eq!(out.status(), 0, "{alg:?} should be accepted");
        assert_eq!(out.claims.as_ref().unwrap()["sub"], "user-42");
        assert_eq!(out.request.headers.get("x-user-id").unwrap(), "user-42");
        assert_eq!(out.request.headers.get("x-user-role").unwrap(), "USER");
    }
}

#[tokio::test]
async fn invalid_tokens_are_401_with_their_reason() {
    let f = fixture(json!({}));
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    f.assert_401(&sign(Algorithm::HS256, None, &c), "expired")
        .await;
    let mut c = claims();
    c["nbf"] = json!(now() + 300);
    f.assert_401(&sign(Algorithm::RS256, None, &c), "not_yet_valid")
        .await;
    let mut c = claims();
    c["iat"] = json!(now() + 86_400);
    f.assert_401(&sign(Algorithm::HS256, None, &c), "issued_in_future")
        .await;
    let mut c = claims();
    c["iat"] = json!("yesterday");
    f.assert_401(&sign(Algorithm::HS256, None, &c), "invalid_claim")
        .await;
    let mut c = claims();
    c["iss"] = json!("someone-else");
    f.assert_401(&sign(Algorithm::ES256, None, &c), "bad_issuer")
        .await;
    let mut c = claims();
    c["aud"] = json!(["other"]);
    f.assert_401(&sign(Algorithm::EdDSA, None, &c), "bad_audience")
        .await;
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    f.assert_401(&sign(Algorithm::HS256, None, &c), "missing_claim")
        .await;

    // Signed by a key we do not know.
    let other = EncodingKey::from_rsa_pem(&key("rsa2_private.pem")).unwrap();
    let forged = encode(&Header::new(Algorithm::RS256), &claims(), &other).unwrap();
    f.assert_401(&forged, "bad_signature").await;
    // A valid token with its payload swapped.
    let good = sign(Algorithm::HS256, None, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims();
    admin["role"] = json!("ADMIN");
    let payload = base64_url(&serde_json::to_vec(&admin).unwrap());
    f.assert_401(
        &format!("{}.{}.{}", parts[0], payload, parts[2]),
        "bad_signature",
    )
    .await;

    // alg: none, with and without a signature part.
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(&serde_json::to_vec(&claims()).unwrap());
    f.assert_401(&format!("{none_header}.{payload}."), "alg_none")
        .await;
    f.assert_401(&format!("{none_header}.{payload}.{}", parts[2]), "alg_none")
        .await;

    for garbage in ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        f.assert_401(garbage, "malformed").await;
    }
    // Key URLs in the header are ignored, never fetched: still a bad signature.
    let mut h = Header::new(Algorithm::RS256);
    h.jku = Some("http://127.0.0.1:9/jwks.json".into());
    h.x5u = Some("http://127.0.0.1:9/cert.pem".into());
    let t = encode(&h, &claims(), &other).unwrap();
    f.assert_401(&t, "bad_signature").await;

    let big = format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c");
    f.assert_401(&big, "token_too_large").await;

    let before = f.failures("missing_token");
    let out = f
        .call(RequestHeader::build("GET", b"/", None).unwrap())
        .await;
    assert_eq!(out.status(), 401);
    assert_eq!(f.failures("missing_token"), before + 1.0);
    let mut basic = RequestHeader::build("GET", b"/", None).unwrap();
    basic
        .insert_header("authorization", "Basic dXNlcjpwYXNz")
        .unwrap();
    assert_eq!(f.call(basic).await.status(), 401);
}

#[tokio::test]
async fn rs_hs_confusion_is_refused() {
    let fx = fixture_with_keys(json!([
        {"pem_file": key_path("rsa_public.pem"), "algorithms": ["RS256"]}
    ]));
    // The attacker signs HS256 with the public key's PEM as the HMAC secret.
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&key("rsa_public.pem")),
    )
    .unwrap();
    let out = fx.call(bearer(&t)).await;
    assert_eq!(out.status(), 401);
    assert_eq!(fx.failures("alg_not_allowed"), 1.0);
    // The same key does verify RS256.
    let rs256 = bearer(&sign(Algorithm::RS256, None, &claims()));
    assert_eq!(fx.call(rs256).await.status(), 0);
}

#[tokio::test]
async fn kid_selects_the_key() {
    let fx = fixture_with_keys(json!([
        {"pem_file": key_path("rsa_public.pem"), "algorithms": ["RS256"], "kid": "k1"},
        {"pem_file": key_path("rsa2_public.pem"), "algorithms": ["RS256"], "kid": "k2"}
    ]));
    let signed_by_k1_as = |kid| bearer(&sign(Algorithm::RS256, Some(kid), &claims()));
    assert_eq!(fx.call(signed_by_k1_as("k1")).await.status(), 0);
    // Signed with key 1 but claiming kid k2: k2's key does not verify it.
    assert_eq!(fx.call(signed_by_k1_as("k2")).await.status(), 401);
    let out = fx.call(signed_by_k1_as("k9")).await;
    assert_eq!(out.status(), 401);
    assert_eq!(fx.failures("unknown_kid"), 1.0);
    assert_eq!(fx.failures("bad_signature"), 1.0);
}

#[tokio::test]
async fn leeway_applies_to_exp() {
    let f = fixture(json!({"leeway": "60s"}));
    let mut c = claims();
    c["exp"] = json!(now() - 30);
    assert_eq!(f.hs256_status(&c).await, 0);
    let f = fixture(json!({"leeway": "0s"}));
    assert_eq!(f.hs256_status(&c).await, 401);
}

#[tokio::test]
async fn leeway_applies_to_iat() {
    let f = fixture(json!({"leeway": "60s"}));
    let mut c = claims();
    c["iat"] = json!(now() + 30);
    assert_eq!(
        f.hs256_status(&c).await,
        0,
        "a clock 30 s ahead is within the leeway"
    );
    c["iat"] = json!(now() - 3600);
    assert_eq!(f.hs256_status(&c).await, 0, "an iat in the past is fine");
    let f = fixture(json!({"leeway": "0s"}));
    c["iat"] = json!(now() + 30);
    f.assert_401(&sign(Algorithm::HS256, None, &c), "issued_in_future")
        .await;
}

#[tokio::test]
async fn role_and_scope_requirements_are_403() {
    let f = fixture(json!({"require": {"role": "ADMIN"}}));
    let before = f.failures("forbidden");
    let out = f
        .call(bearer(&sign(Algorithm::HS256, None, &claims())))
        .await;
    assert_eq!(out.status(), 403);
    assert_eq!(out.response.as_ref().unwrap().error_code, Some("forbidden"));
    assert!(
        out.request.headers.get("x-user-id").is_none(),
        "no claim headers on refusal"
    );
    assert_eq!(f.failures("forbidden"), before + 1.0);
    let mut admin = claims();
    admin["role"] = json!("ADMIN");
    assert_eq!(f.hs256_status(&admin).await, 0);

    let f = fixture(json!({"require_scopes": ["users:write"]}));
    let mut c = claims();
    c["scope"] = json!("users:read");
    assert_eq!(f.hs256_status(&c).await, 403);
    c["scp"] = json!(["users:write"]);
    assert_eq!(f.hs256_status(&c).await, 0);
}

#[tokio::test]
async fn spoofed_claim_headers_are_replaced_or_removed() {
    let f = fixture(json!({}));
    let mut req = bearer(&sign(Algorithm::HS256, None, &claims()));
    req.insert_header("x-user-id", "admin").unwrap();
    req.append_header("x-user-id", "root").unwrap();
    let out = f.call(req).await;
    let ids: Vec<_> = out.request.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["user-42"]);

    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("x-user-role", "ADMIN").unwrap();
    let out = f.call(req).await;
    assert_eq!(out.status(), 401);
    assert!(out.request.headers.get("x-user-role").is_none());

    let names = config(json!({})).owned_request_headers();
    assert!(names.iter().any(|n| n == "x-user-id") && names.iter().any(|n| n == "x-user-role"));
}

#[tokio::test]
async fn token_from_cookie() {
    let f = fixture(json!({}));
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    let t = sign(Algorithm::ES384, None, &claims());
    req.insert_header("cookie", format!("theme=dark; session={t}; other=1"))
        .unwrap();
    assert_eq!(f.call(req).await.status(), 0);
}

#[test]
fn bad_key_configs_are_refused() {
    set_secret();
    std::env::set_var("GH_TEST_EMPTY_SECRET", "");
    let rt = Arc::new(FilterRuntime::default());
    let cases = [
        (
            json!({"hs256_secret_env": "GH_TEST_SURELY_UNSET_VAR"}),
            "is not set",
        ),
        (json!({"hs256_secret_env": "GH_TEST_EMPTY_SECRET"}), "empty"),
        (json!({}), "no keys"),
        (
            json!({"keys": [{"secret": "", "algorithms": ["HS256"]}]}),
            "empty",
        ),
        (
            json!({"keys": [{"secret": "s", "algorithms": []}]}),
            "at least one",
        ),
        (
            json!({"keys": [{"secret": "s", "algorithms": ["RS256"]}]}),
            "HS256/HS384/HS512 only",
        ),
        (
            json!({"keys": [{"pem_file": key_path("rsa_public.pem"), "algorithms": ["HS256"]}]}),
            "HS*",
        ),
        (
            json!({"keys": [{"pem_file": key_path("rsa_public.pem"), "algorithms": ["RS256", "ES256"]}]}),
            "mix key types",
        ),
        (
            json!({"keys": [{"pem_file": key_path("ec256_public.pem"), "algorithms": ["RS256"]}]}),
            "not a RSA public key",
        ),
        (
            json!({"keys": [{"pem_file": "/nonexistent.pem", "algorithms": ["RS256"]}]}),
            "cannot read",
        ),
        (
            json!({"keys": [{"secret": "s", "pem_file": key_path("rsa_public.pem"), "algorithms": ["HS256"]}]}),
            "exactly one",
        ),
        (
            json!({"keys": [{"jwks_url": "ftp://x/jwks", "algorithms": ["RS256"]}]}),
            "http",
        ),
        (
            json!({"keys": [{"jwks_url": "http://x/jwks", "algorithms": ["HS256"]}]}),
            "HS*",
        ),
        (
            json!({"keys": [{"secret": "s", "algorithms": ["HS256"], "cache_ttl": "1m"}]}),
            "only apply to jwks_url",
        ),
        (
            json!({"hs256_secret_env": "GH_TEST_JWT_SECRET", "forward_claims": {"sub": "bad header"}}),
            "invalid header name",
        ),
    ];
    for (cfg, want) in cases {
        let fc: FilterConfig = serde_json::from_value(json!({ "jwt": cfg })).unwrap();
        let err = build(&fc, "r", &rt)
            .err()
            .unwrap_or_else(|| panic!("{cfg} should be refused"));
        assert!(err.message.contains(want), "{cfg}: {}", err.message);
    }
    // Unknown fields and alg none are refused by the schema itself.
    for bad in [
        json!({"jwt": {"hs256_secret_env": "X", "bogus": 1}}),
        json!({"jwt": {"keys": [{"secret": "s", "algorithms": ["none"]}]}}),
    ] {
        assert!(
            serde_json::from_value::<FilterConfig>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn a_cached_token_still_expires_and_a_tampered_copy_is_refused() {
    let f = fixture(json!({"leeway": "0s"}));
    let mut c = claims();
    c["exp"] = json!(now() + 2);
    let token = sign(Algorithm::HS256, None, &c);
    for _ in 0..3 {
        let out = f.call(bearer(&token)).await;
        assert_eq!(out.status(), 0);
        assert_eq!(out.request.headers.get("x-user-id").unwrap(), "user-42");
    }
    // Same header and claims, another signature: not the cached token.
    let (body, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    f.assert_401(&format!("{body}.{flipped}{}", &sig[1..]), "bad_signature")
        .await;
    // The cache honours exp: once it passes, the same token is refused as expired.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    f.assert_401(&token, "expired").await;
}

#[tokio::test]
async fn the_token_cache_can_be_turned_off() {
    let f = fixture(json!({"token_cache_size": 0}));
    let token = sign(Algorithm::HS256, None, &claims());
    assert_eq!(f.call(bearer(&token)).await.status(), 0);
    assert_eq!(f.call(bearer(&token)).await.status(), 0);
}
