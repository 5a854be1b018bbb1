//! Filters end to end through the gateway: JWT authentication and roles, claim headers,
//! rate limits in the real Redis, shared by two gateways, and a dead Redis.

use std::time::{Duration, Instant};

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

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), rand_u64())
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (std::process::id() as u64).rotate_left(32)
}

fn jwt_config(upstream: &std::net::SocketAddr) -> String {
    format!(
        r#"listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
runtime: {{ threads: 1 }}
upstreams:
  app: {{ discovery: {{ static: [ {{ address: "{upstream}" }} ] }} }}
routes:
  - name: public
    match: {{ path_prefix: /public }}
    upstream: app
  - name: admin
    match: {{ path_prefix: /api/admin }}
    upstream: app
    filters:
      - jwt:
          issuer: gatehouse
          audience: gatehouse
          keys: [ {{ secret_env: TEST_JWT_SECRET, algorithms: [HS256] }} ]
          require: {{ role: ADMIN }}
          forward_claims: {{ sub: X-User-Id, role: X-User-Role }}
  - name: api
    match: {{ path_prefix: /api }}
    upstream: app
    filters:
      - jwt:
          issuer: gatehouse
          audience: gatehouse
          keys: [ {{ secret_env: TEST_JWT_SECRET, algorithms: [HS256] }} ]
          forward_claims: {{ sub: X-User-Id, role: X-User-Role }}
"#
    )
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
    let r = c
        .get(gw.url("/api/me"))
        .header("authorization", format!("Bearer {}", valid("USER")))
        .header("x-user-id", "1")
        .header("x-user-role", "ADMIN")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = app.last_headers();
    assert_eq!(h["x-user-id"], "42");
    assert_eq!(h["x-user-role"], "USER");

    // role check: USER on /api/admin -> 403, ADMIN -> 200
    let r = c
        .get(gw.url("/api/admin/users"))
        .header("authorization", format!("Bearer {}", valid("USER")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-gatehouse-error"], "forbidden");
    let r = c
        .get(gw.url("/api/admin/users"))
        .header("authorization", format!("Bearer {}", valid("ADMIN")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // a public route never forwards client-sent claim headers
    let r = c
        .get(gw.url("/public/x"))
        .header("x-user-id", "1")
        .header("x-user-role", "ADMIN")
        .send()
        .await
        .unwrap();
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

fn limit_config(upstream: &std::net::SocketAddr, redis: Option<&str>, limits: &str) -> String {
    let redis = redis
        .map(|u| format!("redis: {{ url: \"{u}\", timeout: 100ms }}\n"))
        .unwrap_or_default();
    format!(
        r#"listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
runtime: {{ threads: 1 }}
{redis}upstreams:
  app: {{ discovery: {{ static: [ {{ address: "{upstream}" }} ] }} }}
routes:
  - name: limited
    match: {{ path_prefix: / }}
    upstream: app
    filters:
{limits}"#
    )
}

#[tokio::test]
async fn login_limit_per_email_in_redis() {
    let app = TestUpstream::start("user").await;
    let limits =
        "      - rate_limit: { name: login_per_email, key: body.email, limit: 5, window: 15m }\n";
    let gw = TestGateway::start(&limit_config(
        &app.addr,
        Some("redis://127.0.0.1:6379"),
        limits,
    ))
    .await;
    let email = format!("{}@example.com", unique("login"));
    let body = json!({"email": email, "password": "x".repeat(100)}).to_string();
    for i in 1..=5 {
        let r = client()
            .post(gw.url("/login"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "attempt {i}");
        assert_eq!(r.headers()["ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            (5 - i).to_string().as_str()
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            v["body_bytes"],
            body.len() as u64,
            "the body reaches the upstream unchanged"
        );
    }
    let r = client()
        .post(gw.url("/login"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-gatehouse-error"], "rate_limited");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 900, "{retry_after}");
    assert_eq!(app.hits(), 5);
    // another email is still allowed
    let other = json!({"email": format!("{}@example.com", unique("other"))}).to_string();
    let r = client()
        .post(gw.url("/login"))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // no email at all: refused with 400 by default
    let r = client()
        .post(gw.url("/login"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_ratelimit_decisions_total",
            &[("limit", "login_per_email"), ("decision", "limited")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn two_gateways_share_one_limit() {
    let app = TestUpstream::start("app").await;
    let limits = "      - rate_limit: { name: per_client, key: \"header:x-client\", limit: 4, window: 1m }\n";
    let cfg = limit_config(&app.addr, Some("redis://127.0.0.1:6379"), limits);
    let (g1, g2) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    let who = unique("client");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let r = client()
            .get(gw.url("/x"))
            .header("x-client", &who)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429, 429, 429],
        "the limit is global across instances"
    );
}

#[tokio::test]
async fn dead_redis_follows_each_failure_policy_within_the_timeout() {
    let app = TestUpstream::start("app").await;
    let (hole, _task) = black_hole().await;
    for (redis, what) in [
        (format!("redis://127.0.0.1:{}", free_port()), "refused"),
        (format!("redis://{hole}"), "black hole"),
    ] {
        let limits = "      - rate_limit: { name: open, key: \"header:x-open\", limit: 1, window: 1m, on_redis_error: fail_open }\n      - rate_limit: { name: closed, key: \"header:x-closed\", limit: 1, window: 1m, on_redis_error: fail_closed }\n      - rate_limit: { name: local, key: \"header:x-local\", limit: 2, window: 1m, on_redis_error: local }\n";
        let cfg = limit_config(
            &app.addr,
            Some(&redis),
            &limits.replace("}\n", ", on_missing_key: skip }\n"),
        );
        let gw = TestGateway::start(&cfg).await;
        let send = |h: &'static str| {
            let url = gw.url("/x");
            async move {
                let started = Instant::now();
                let r = client().get(url).header(h, "k").send().await.unwrap();
                (r.status().as_u16(), started.elapsed())
            }
        };
        // fail_open: never limited, even past the limit
        for _ in 0..3 {
            let (s, took) = send("x-open").await;
            assert_eq!(s, 200, "{what}: fail_open");
            assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        }
        let (s, _) = send("x-closed").await;
        assert_eq!(s, 503, "{what}: fail_closed");
        let local: Vec<u16> = [
            send("x-local").await.0,
            send("x-local").await.0,
            send("x-local").await.0,
        ]
        .to_vec();
        assert_eq!(
            local,
            [200, 200, 429],
            "{what}: local fallback enforces the limit in-process"
        );
        let m = gw.metrics().await;
        assert_eq!(
            metric_value(&m, "gatehouse_redis_up", &[]),
            Some(0.0),
            "{what}"
        );
    }
}

#[tokio::test]
async fn redis_coming_back_resumes_global_limiting() {
    let app = TestUpstream::start("app").await;
    let port = free_port();
    let start_redis = || {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    };
    let mut redis = start_redis();
    let url = format!("redis://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(5), async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await
    );
    let limits = "      - rate_limit: { name: closed, key: \"header:x-k\", limit: 100, window: 1m, on_redis_error: fail_closed }\n";
    let gw = TestGateway::start(&limit_config(&app.addr, Some(&url), limits)).await;
    let status = || {
        let u = gw.url("/x");
        async move {
            client()
                .get(u)
                .header("x-k", "a")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status().await, 200);
    redis.kill().unwrap();
    redis.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || status().await == 503).await,
        "dead Redis -> fail_closed 503"
    );
    let mut redis = start_redis();
    assert!(
        eventually(Duration::from_secs(10), async || status().await == 200).await,
        "Redis back -> limiting through Redis resumes"
    );
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "gatehouse_redis_up", &[]), Some(1.0));
    redis.kill().unwrap();
    let _ = redis.wait();
}
