//! A flood of refusals (401s, 429s) writes one log line per route and reason per
//! interval plus one summary with the count it held back; the access log and the metrics
//! still count every refusal.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const SECRET: &str = "refusal-log-secret-at-least-32-bytes!!";

fn flood_config(upstream: &std::net::SocketAddr) -> String {
    format!(
        r#"listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
runtime: {{ threads: 1 }}
upstreams:
  app: {{ discovery: {{ static: [ {{ address: "{upstream}" }} ] }} }}
routes:
  - name: private
    match: {{ path_prefix: /private }}
    upstream: app
    filters:
      - jwt:
          issuer: gatehouse
          audience: gatehouse
          keys: [ {{ secret_env: FLOOD_JWT_SECRET, algorithms: [HS256] }} ]
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: app
    filters:
      - rate_limit: {{ name: per_client, key: client_ip, limit: 1, window: 10m }}
"#
    )
}

/// The gateway's JSON log lines whose message is `message`.
fn lines_with(logs: &str, message: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

#[tokio::test]
async fn two_hundred_refusals_make_a_few_lines_with_the_right_counts() {
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start_with_env(&flood_config(&app.addr), &[("FLOOD_JWT_SECRET", SECRET)])
        .await;
    for _ in 0..200 {
        assert_eq!(status_of(&gw, "/private").await, 401);
    }
    let mut limited = 0;
    for _ in 0..200 {
        if status_of(&gw, "/limited").await == 429 {
            limited += 1;
        }
    }
    assert_eq!(limited, 199, "the limit lets one through");

    // The summaries come at the end of the 10 s window.
    let summarized = eventually(Duration::from_secs(20), async || {
        let logs = gw.logs();
        !lines_with(&logs, "jwt: more requests refused (lines held back)").is_empty()
            && !lines_with(
                &logs,
                "rate limited: more requests refused (lines held back)",
            )
            .is_empty()
    })
    .await;
    let logs = gw.logs();
    assert!(summarized, "summary lines written:\n{logs}");

    let jwt_lines = lines_with(&logs, "jwt: request refused");
    let jwt_summaries = lines_with(&logs, "jwt: more requests refused (lines held back)");
    assert_eq!(jwt_lines.len(), 1, "one full line:\n{logs}");
    assert_eq!(jwt_summaries.len(), 1, "one summary:\n{logs}");
    assert_eq!(jwt_summaries[0]["fields"]["reason"], "missing_token");
    assert_eq!(jwt_summaries[0]["fields"]["route"], "private");
    assert_eq!(
        jwt_lines[0]["fields"]["suppressed"].as_u64().unwrap()
            + jwt_summaries[0]["fields"]["suppressed"].as_u64().unwrap(),
        199,
        "every refusal but the logged one is counted in the summary"
    );

    let rl_lines = lines_with(&logs, "rate limited");
    let rl_summaries = lines_with(
        &logs,
        "rate limited: more requests refused (lines held back)",
    );
    assert_eq!((rl_lines.len(), rl_summaries.len()), (1, 1), "{logs}");
    assert_eq!(rl_summaries[0]["fields"]["suppressed"], 198);
    assert_eq!(rl_summaries[0]["fields"]["limit"], "per_client");

    // The access log and the metrics keep every refusal.
    let access = |status: u64| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["fields"]["status"] == status)
            .count()
    };
    assert_eq!((access(401), access(429)), (200, 199));
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_auth_failures_total",
            &[("route", "private"), ("reason", "missing_token")]
        ),
        Some(200.0)
    );
}
