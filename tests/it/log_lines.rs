//! The gateway's own log: one line per failed try (pingora's duplicate warnings and its
//! connection-pool race noise filtered by default), no build-machine source paths, and
//! access-log durations without float noise.

use std::net::SocketAddr;

use serde_json::Value;

use crate::support::*;

fn config(dead: SocketAddr, good: SocketAddr) -> String {
    format!(
        r#"listeners: [ {{ name: public, address: "{{listen}}" }} ]
admin: {{ address: "{{admin}}" }}
runtime: {{ threads: 2 }}
upstreams:
  mixed:
    discovery: {{ static: [ {{ address: "{dead}" }}, {{ address: "{good}" }} ] }}
    timeouts: {{ connect: 300ms }}
    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 2ms }} }}
    outlier_detection: null
  gone:
    discovery: {{ static: [ {{ address: "{dead}" }} ] }}
    timeouts: {{ connect: 300ms }}
    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 2ms }} }}
    circuit_breaker: null
    outlier_detection: null
routes:
  - {{ name: gone, match: {{ path_prefix: /gone }}, upstream: gone }}
  - {{ name: mixed, match: {{ path_prefix: / }}, upstream: mixed }}
"#
    )
}

/// The log's JSON lines (every line must be one).
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

fn retries(m: &str, upstream: &str) -> usize {
    let labels = [("upstream", upstream), ("reason", "connect_error")];
    metric_value(m, "gatehouse_upstream_retries_total", &labels).unwrap_or(0.0) as usize
}

/// Normal traffic to a pool with a dead endpoint (retried), and one request whose every
/// try fails: one gatehouse line per failed try, no pingora duplicate or pool noise, no
/// source paths; pingora's INFO lines asked for (`pingora_core=info`) keep their target.
#[tokio::test]
async fn one_gatehouse_line_per_failed_try_and_no_pingora_noise() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let good = TestUpstream::start("good").await;
    let env = [("GATEHOUSE_LOG", "info,pingora_core=info")];
    let gw = TestGateway::start_with_env(&config(dead, good.addr), &env).await;
    for _ in 0..20 {
        assert_eq!(get(&gw, "/").await.status(), 200);
    }
    assert_eq!(get(&gw, "/gone").await.status(), 502);
    let m = gw.metrics().await;
    let (mixed, gone) = (retries(&m, "mixed"), retries(&m, "gone"));
    assert!(
        mixed >= 5,
        "the dead endpoint was tried and retried: {mixed}"
    );
    assert_eq!(gone, 1, "/gone: two tries, one retry");
    // The access line is written after the request is counted and answered: wait for the
    // 21st (bounded) before reading the log.
    let mut logs = gw.logs();
    eventually(std::time::Duration::from_secs(5), async || {
        logs = gw.logs();
        logs.matches("\"target\":\"access\"").count() >= 21
    })
    .await;
    let lines = json_lines(&logs);

    let retried = with_message(&lines, "upstream try failed; retrying");
    assert_eq!(
        retried.len(),
        mixed + gone,
        "one line per retried try:\n{logs}"
    );
    assert!(retried
        .iter()
        .all(|l| l["fields"]["endpoint"] == dead.to_string()));
    let failed = with_message(&lines, "request failed");
    assert_eq!(failed.len(), 1, "one line for the last failed try:\n{logs}");
    assert_eq!(failed[0]["fields"]["route"], "gone");

    let pingora: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"].as_str().unwrap().starts_with("pingora"))
        .collect();
    assert!(
        pingora
            .iter()
            .any(|l| l["target"] == "pingora_core::server"),
        "pingora_core=info lets its INFO lines through:\n{logs}"
    );
    for l in &pingora {
        assert_ne!(l["level"], "ERROR", "{l}");
        let message = l["fields"]["message"].as_str().unwrap();
        assert!(!message.starts_with("Fail to proxy"), "{l}");
        assert!(!message.contains("reusable stream"), "{l}");
    }
    for l in &lines {
        let fields = l["fields"].as_object().unwrap();
        assert!(fields.keys().all(|k| !k.starts_with("log.")), "{l}");
    }

    // The access log's durations: at most 3 decimals (no float noise).
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 21);
    for l in access {
        for key in ["duration_ms", "filter_ms"] {
            let text = l["fields"][key].to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{key}={text}");
        }
    }
}

/// A client that gives up before the answer: its request is the client's 499
/// (`client_closed`), a 4xx, never a gateway 5xx that would page someone; the upstream's
/// endpoint is not blamed.
#[tokio::test]
async fn a_client_that_gives_up_is_a_499_not_a_gateway_5xx() {
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Sleep(3000));
    let gw = gateway_to_a(&slow, ALL_TO_A).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient.get(gw.url("/x")).send().await.is_err());
    let counted = |m: &str, class: &str| {
        let labels = [
            ("route", "all"),
            ("status_class", class),
            ("source", "gateway"),
        ];
        metric_value(m, "gatehouse_requests_total", &labels).unwrap_or(0.0)
    };
    let m = gw.metrics_when(|m| counted(m, "4xx") >= 1.0).await;
    assert_eq!((counted(&m, "4xx"), counted(&m, "5xx")), (1.0, 0.0), "{m}");
    let logs = gw.logs();
    let lines = json_lines(&logs);
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 1, "{logs}");
    assert_eq!(access[0]["fields"]["status"], 499);
    assert_eq!(access[0]["fields"]["error"], "client_closed");
    let ups = admin_json(&gw, "/admin/upstreams").await;
    assert_eq!(ups["a"]["endpoints"][0]["ejections"], 0, "{ups}");
}

/// `access_log.fields` picks and orders a JSON line's fields; `format: combined` writes
/// nginx's combined line (escaping a forged quote); both switch on a hot reload.
#[tokio::test]
async fn access_log_field_list_and_combined_format_switch_on_reload() {
    let a = TestUpstream::start("a").await;
    let with = |access: &str| {
        base(&upstream_yaml("a", &[(&a.addr, 1)]), ALL_TO_A).replace(
            "upstreams:\n",
            &format!("access_log: {access}\nupstreams:\n"),
        )
    };
    let json = with("{ fields: [status, method, query, user_agent] }");
    let gw = TestGateway::start(&json).await;
    let ua = [("user-agent", "probe/1 \"q\"")];
    assert_eq!(get_with(&gw, "/x?k=v", &ua).await.status(), 200);
    let line = eventually_line(&gw, "\"query\":\"k=v\"").await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"].as_object().unwrap().len(), 4, "{line}");
    assert!(
        line.contains(
            "\"fields\":{\"status\":200,\"method\":\"GET\",\"query\":\"k=v\",\"user_agent\":"
        ),
        "the listed fields in their order: {line}"
    );
    assert_eq!(v["fields"]["user_agent"], "probe/1 \"q\"");
    assert_eq!(v["target"], "access");

    let combined = with("{ format: combined }");
    gw.write_config(&combined);
    assert_applied(&gw, &combined).await;
    let headers = [
        ("user-agent", "probe/2 \"q\""),
        ("referer", "http://r.example/"),
    ];
    assert_eq!(get_with(&gw, "/y/z?k=1", &headers).await.status(), 200);
    let line = eventually_line(&gw, "\"GET /y/z?k=1 HTTP/1.1\"").await;
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET /y/z\?k=1 HTTP/1\.1" 200 \d+ "http://r\.example/" "probe/2 \\x22q\\x22"$"#,
    )
    .unwrap();
    assert!(re.is_match(&line), "not nginx's combined format: {line}");
}

/// The first log line containing `needle` (waits up to 5 s for it to be written).
async fn eventually_line(gw: &TestGateway, needle: &str) -> String {
    let mut found = None;
    eventually(std::time::Duration::from_secs(5), async || {
        found = gw
            .logs()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned);
        found.is_some()
    })
    .await;
    found.unwrap_or_else(|| panic!("no log line with {needle}: {}", gw.logs()))
}
