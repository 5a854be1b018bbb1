//! Rate limits end to end through the gateway: per-key limits in the real Redis, one limit
//! shared by two gateways, each failure policy against a dead Redis, and Redis coming back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn limit_config(upstream: &std::net::SocketAddr, redis: Option<&str>, limits: &str) -> String {
    // 500ms, not the 50ms default: on 2 busy cores a Redis call can take over 100ms, and
    // the default fail_open policy would then admit a request the test expects limited.
    let redis = redis
        .map(|u| format!("redis: {{ url: \"{u}\", timeout: 500ms }}\n"))
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
    let r = post(&gw, "/login", body.clone()).await;
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
    let r = post(&gw, "/login", other).await;
    assert_eq!(r.status(), 200);
    // no email at all: refused with 400 by default
    let r = post(&gw, "/login", "{}").await;
    assert_eq!(r.status(), 400);
    let m = gw.metrics().await;
    let limited = [("limit", "login_per_email"), ("decision", "limited")];
    let decisions = metric_value(&m, "gatehouse_ratelimit_decisions_total", &limited);
    assert_eq!(decisions, Some(1.0));
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
        let r = get_with(gw, "/x", &[("x-client", &who)]).await;
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
    let mut redis = PrivateRedis::start();
    let port = redis.port();
    let url = redis.url();
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
    redis.stop();
    assert!(
        eventually(Duration::from_secs(5), async || status().await == 503).await,
        "dead Redis -> fail_closed 503"
    );
    let _redis = PrivateRedis::start_on(port);
    assert!(
        eventually(Duration::from_secs(10), async || status().await == 200).await,
        "Redis back -> limiting through Redis resumes"
    );
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "gatehouse_redis_up", &[]), Some(1.0));
}
