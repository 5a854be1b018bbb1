//! Resilience against real misbehaving upstreams: circuit breaker, retries with backoff,
//! budget and deadline, passive outlier ejection, and bulkhead isolation. Hits are
//! counted at the servers, so "nothing was sent upstream" is checked where it happens.
//! Timing bounds are generous: these run in debug builds on two busy cores.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn config(upstreams: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 2 }}\nshutdown: {{ grace_period: 2s }}\naccess_log: {{ enabled: false }}\nupstreams:\n{upstreams}routes:\n{routes}"
    )
}

/// One upstream `name` on `addrs` with extra YAML lines (already indented by 4).
fn upstream(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "  {name}:\n    discovery: {{ static: [ {} ] }}\n{extra}",
        list.join(", ")
    )
}

const ROOT_TO_APP: &str = "  - { name: app, match: { path_prefix: / }, upstream: app }\n";

/// The one-hot breaker state gauge of upstream `app` for `state`.
fn breaker_state(m: &str, state: &str) -> Option<f64> {
    let labels = [("upstream", "app"), ("state", state)];
    metric_value(m, "gatehouse_circuit_breaker_state", &labels)
}

/// How often upstream `app`'s breaker moved to `to`.
fn breaker_transitions(m: &str, to: &str) -> Option<f64> {
    let labels = [("upstream", "app"), ("to", to)];
    metric_value(m, "gatehouse_circuit_breaker_transitions_total", &labels)
}

/// How many retries of upstream `app` had `reason`.
fn retries(m: &str, reason: &str) -> Option<f64> {
    let labels = [("upstream", "app"), ("reason", reason)];
    metric_value(m, "gatehouse_upstream_retries_total", &labels)
}

/// A gateway with the one upstream `app` (see [`upstream`]) taking every path.
async fn gateway_to_app(addrs: &[SocketAddr], extra: &str) -> TestGateway {
    TestGateway::start(&config(&upstream("app", addrs, extra), ROOT_TO_APP)).await
}

/// Two endpoints `a` and `b` of upstream `app`, both answering every request with `mode`,
/// behind a gateway with `extra` under the upstream.
async fn both_failing(mode: Mode, extra: &str) -> ([TestUpstream; 2], TestGateway) {
    let [a, b] = upstreams(["a", "b"]).await;
    a.set_mode(mode);
    b.set_mode(mode);
    let gw = gateway_to_app(&[a.addr, b.addr], extra).await;
    ([a, b], gw)
}

async fn breaker_of(gw: &TestGateway, upstream: &str) -> Value {
    admin_json(gw, "/admin/upstreams").await[upstream]["breaker"].clone()
}

fn error_code(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-gatehouse-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A TCP server that reads each request and closes the connection without answering
/// (a reset before any response), counting requests.
async fn closer() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        h.fetch_add(1, Ordering::SeqCst);
                        return; // drop: the connection closes with no response
                    }
                }
            });
        }
    });
    (addr, hits, task)
}

#[tokio::test]
async fn breaker_opens_then_sends_nothing_upstream_survives_a_reload_and_recovers() {
    let app = TestUpstream::start("app").await;
    app.set_mode(Mode::Status(500));
    let cb = "    circuit_breaker: { failure_rate: 0.5, min_requests: 5, window: 10s, open_for: 4s, half_open_probes: 2 }\n";
    let yaml = config(&upstream("app", &[app.addr], cb), ROOT_TO_APP);
    let gw = TestGateway::start(&yaml).await;

    // The one-hot gauge exists before any traffic.
    let m = gw.metrics().await;
    assert_eq!(breaker_state(&m, "closed"), Some(1.0));
    assert_eq!(breaker_state(&m, "open"), Some(0.0));

    for _ in 0..5 {
        assert_eq!(get(&gw, "/x").await.status(), 500);
    }
    assert_eq!(app.hits(), 5);
    for _ in 0..20 {
        let r = get(&gw, "/x").await;
        assert_eq!(r.status(), 503);
        assert_eq!(error_code(&r), "circuit_open");
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=4).contains(&retry_after), "Retry-After {retry_after}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "circuit_open");
        assert!(v["message"].as_str().unwrap().contains("\"app\""), "{v}");
    }
    assert_eq!(app.hits(), 5, "an open breaker sends nothing upstream");

    let m = gw.metrics().await;
    assert_eq!(breaker_state(&m, "open"), Some(1.0));
    assert_eq!(breaker_state(&m, "closed"), Some(0.0));
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_circuit_breaker_rejections_total",
            &[("upstream", "app")]
        ),
        Some(20.0)
    );
    assert_eq!(breaker_transitions(&m, "open"), Some(1.0));
    let b = breaker_of(&gw, "app").await;
    assert_eq!(b["state"], "OPEN");
    assert_eq!(b["enabled"], true);
    let status = admin_json(&gw, "/admin/status").await;
    assert_eq!(status["upstreams"][0]["breaker"]["state"], "OPEN");
    assert_ne!(status["status"], "HEALTHY");
    assert_eq!(
        gw.logs().matches("circuit breaker state change").count(),
        1,
        "the trip is logged once"
    );

    // A reload that changes the upstream (a timeout) keeps the open breaker.
    let hash = gw.config_hash().await;
    let cb2 = format!("    timeouts: {{ read: 5s }}\n{cb}");
    gw.write_config(&config(&upstream("app", &[app.addr], &cb2), ROOT_TO_APP));
    assert_reloaded_from(&gw, &hash, Duration::from_secs(10)).await;
    let r = get(&gw, "/x").await;
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (503, "circuit_open")
    );
    assert_eq!(app.hits(), 5);

    // The upstream recovers; after open_for (4s), two probes close the breaker.
    app.set_mode(Mode::Echo);
    let mut refused = 0;
    let recovered = eventually(Duration::from_secs(8), async || {
        let r = get(&gw, "/x").await;
        if r.status() == 503 {
            assert_eq!(error_code(&r), "circuit_open");
            refused += 1;
        }
        r.status() == 200
    })
    .await;
    assert!(recovered && refused > 0, "{}", gw.logs());
    assert_eq!(breaker_of(&gw, "app").await["state"], "HALF_OPEN");
    assert_eq!(get(&gw, "/x").await.status(), 200);
    assert_eq!(breaker_of(&gw, "app").await["state"], "CLOSED");
    for _ in 0..5 {
        assert_eq!(get(&gw, "/x").await.status(), 200);
    }
    assert_eq!(app.hits(), 12);
    let m = gw.metrics().await;
    for to in ["half_open", "closed"] {
        assert_eq!(breaker_transitions(&m, to), Some(1.0), "{to}");
    }
    assert_eq!(breaker_state(&m, "closed"), Some(1.0));
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker_for_twice_as_long() {
    let app = TestUpstream::start("app").await;
    app.set_mode(Mode::Status(502));
    let cb = "    circuit_breaker: { failure_rate: 0.5, min_requests: 3, open_for: 1s, max_open_for: 10s, half_open_probes: 1 }\n";
    let gw = gateway_to_app(&[app.addr], cb).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/").await.status(), 502);
    }
    assert_eq!(breaker_of(&gw, "app").await["open_for_ms"], 1000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe goes through, fails, and re-opens it for 2s.
    assert_eq!(get(&gw, "/").await.status(), 502);
    let retripped = Instant::now();
    assert_eq!(app.hits(), 4);
    let b = breaker_of(&gw, "app").await;
    assert_eq!(
        (b["state"].as_str(), b["open_for_ms"].as_u64()),
        (Some("OPEN"), Some(2000))
    );
    // 1.3s later the first open time would be over; the doubled one is not.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = get(&gw, "/").await;
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (503, "circuit_open")
    );
    assert_eq!(app.hits(), 4);
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(retripped.elapsed())).await;
    assert_eq!(
        get(&gw, "/").await.status(),
        502,
        "a probe goes through after 2s"
    );
    assert_eq!(app.hits(), 5);
    assert_eq!(breaker_of(&gw, "app").await["open_for_ms"], 4000);
}

#[tokio::test]
async fn active_health_check_failures_open_the_breaker() {
    let app = TestUpstream::start("app").await;
    // The endpoint itself stays "healthy" (threshold 1000): only the breaker reacts.
    let extra = "    health_check: { path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1000 }\n    circuit_breaker: { failure_rate: 0.5, min_requests: 3, window: 2s, open_for: 30s }\n";
    let gw = gateway_to_app(&[app.addr], extra).await;
    assert_eq!(get(&gw, "/").await.status(), 200);
    assert_eq!(app.hits(), 1);
    app.set_health(503);
    assert!(
        eventually(Duration::from_secs(10), async || breaker_of(&gw, "app")
            .await["state"]
            == "OPEN")
        .await,
        "breaker did not open: {}",
        breaker_of(&gw, "app").await
    );
    let r = get(&gw, "/").await;
    assert_eq!(
        (r.status().as_u16(), error_code(&r).as_str()),
        (503, "circuit_open")
    );
    assert_eq!(app.hits(), 1);
    assert!(
        gw.logs().contains("health check"),
        "the transition names its cause"
    );
    let events = admin_json(&gw, "/admin/status").await["events"].to_string();
    assert!(events.contains("app breaker CLOSED -> OPEN"), "{events}");
}

#[tokio::test]
async fn retries_go_to_another_endpoint_and_only_for_allowed_methods() {
    let (bad, bad_hits, _t) = closer().await;
    let good = TestUpstream::start("good").await;
    // Outlier detection (on by default) would eject the bad endpoint: this is about retries.
    let retry = "    retry: { attempts: 2, on: [reset], backoff: { base: 1ms, max: 2ms } }\n    outlier_detection: null\n";
    let gw = gateway_to_app(&[bad, good.addr], retry).await;

    for _ in 0..10 {
        let r = get(&gw, "/").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "good");
    }
    let first_bad = bad_hits.load(Ordering::SeqCst);
    assert!(
        first_bad >= 4,
        "round-robin sent some first tries to the bad endpoint: {first_bad}"
    );
    assert_eq!(
        good.hits(),
        10,
        "every try on the bad one was retried on the other"
    );

    // POST is not idempotent: a reset is passed on, never retried.
    let mut resets = 0;
    for _ in 0..10 {
        let r = client().post(gw.url("/")).body("x").send().await.unwrap();
        if r.status() == 502 {
            assert_eq!(error_code(&r), "upstream_reset");
            resets += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    let post_bad = bad_hits.load(Ordering::SeqCst) - first_bad;
    assert!(resets >= 4, "{resets}");
    assert_eq!(post_bad, resets, "each POST tried once");
    assert_eq!(good.hits(), 10 + 10 - resets);

    // With an Idempotency-Key it may be retried.
    for i in 0..10 {
        let r = client()
            .post(gw.url("/"))
            .header("idempotency-key", format!("k{i}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    let retried = retries(&m, "reset").unwrap();
    assert_eq!(retried as usize, bad_hits.load(Ordering::SeqCst) - resets);
}

#[tokio::test]
async fn connect_errors_are_retried_for_any_method() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let good = TestUpstream::start("good").await;
    let retry = "    timeouts: { connect: 300ms }\n    retry: { attempts: 2, backoff: { base: 1ms, max: 2ms } }\n";
    let gw = gateway_to_app(&[dead, good.addr], retry).await;
    for _ in 0..6 {
        assert_eq!(post(&gw, "/", "x").await.status(), 200);
        assert_eq!(get(&gw, "/").await.status(), 200);
    }
    assert_eq!(good.hits(), 12);
    let m = gw.metrics().await;
    assert!(retries(&m, "connect_error").unwrap() >= 5.0);
}

#[tokio::test]
async fn status_retries_replay_the_body_but_not_beyond_the_retry_buffer() {
    let bad = TestUpstream::start("bad").await;
    bad.set_mode(Mode::Status(503));
    let good = TestUpstream::start("good").await;
    let retry = "    retry: { attempts: 2, on: [503], backoff: { base: 1ms, max: 2ms } }\n";
    let gw = gateway_to_app(&[bad.addr, good.addr], retry).await;

    for _ in 0..10 {
        let r = get(&gw, "/").await;
        assert_eq!(
            r.status(),
            200,
            "a 503 is retried on the other endpoint before anything goes downstream"
        );
        assert_eq!(r.headers()["x-upstream"], "good");
    }
    assert!(bad.hits() >= 4);
    assert_eq!(good.hits(), 10);

    // Non-idempotent without a key: the 503 is the upstream's answer, passed on.
    let (b0, g0) = (bad.hits(), good.hits());
    let mut passed_on = 0;
    for _ in 0..10 {
        let r = post(&gw, "/", "hello").await;
        if r.status() == 503 {
            assert_eq!(r.headers()["x-upstream"], "bad");
            assert_eq!(error_code(&r), "");
            passed_on += 1;
        }
    }
    assert_eq!(
        (bad.hits() - b0, good.hits() - g0),
        (passed_on, 10 - passed_on)
    );

    // With a key the body is replayed in full to the second endpoint.
    for i in 0..10 {
        let r = client()
            .post(gw.url("/"))
            .header("idempotency-key", format!("k{i}"))
            .body(vec![b'b'; 5000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["body_bytes"], 5000);
    }

    // A body beyond pingora's 64 KiB retry buffer cannot be replayed: no retry.
    let (b0, g0) = (bad.hits(), good.hits());
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = client()
            .post(gw.url("/"))
            .header("idempotency-key", format!("big{i}"))
            .body(vec![b'b'; 200 * 1024])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        bad.hits() - b0 + good.hits() - g0,
        4,
        "each big request tried once: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        bad.hits() - b0
    );
}

#[tokio::test]
async fn retry_budget_caps_retries_under_a_total_outage() {
    let retry = "    retry: { attempts: 3, on: [503], backoff: { base: 1ms, max: 2ms }, budget: 0.2, min_retries_per_second: 1 }\n";
    let ([a, b], gw) = both_failing(Mode::Status(503), retry).await;
    let requests = 100;
    let started = Instant::now();
    for _ in 0..requests {
        assert_eq!(get(&gw, "/").await.status(), 503);
    }
    // The budget's window is 10s; the bound below holds for a run shorter than that.
    let secs = started.elapsed().as_secs_f64();
    assert!(secs < 10.0, "took {secs}s");
    let upstream_requests = a.hits() + b.hits();
    let bound = (requests as f64 * 1.2 + 10.0) as usize; // 20% + 1/s over the 10s window
    println!("budget: {requests} requests -> {upstream_requests} upstream requests (bound {bound}, without a budget {})", requests * 3);
    assert!(upstream_requests <= bound, "{upstream_requests} > {bound}");
    assert!(
        upstream_requests >= requests + 20,
        "the budget did allow retries: {upstream_requests}"
    );
    let m = gw.metrics().await;
    let exhausted = metric_value(
        &m,
        "gatehouse_upstream_retry_budget_exhausted_total",
        &[("upstream", "app")],
    )
    .unwrap();
    assert!(exhausted >= 50.0, "{exhausted}");
    let retried = retries(&m, "status").unwrap();
    assert_eq!(retried as usize, upstream_requests - requests);
}

#[tokio::test]
async fn backoff_spaces_tries_within_bounds() {
    let ups = upstreams(["a", "b", "c"]).await;
    for u in &ups {
        u.set_mode(Mode::Status(503));
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let retry = "    retry: { attempts: 3, on: [503], backoff: { base: 100ms, max: 300ms } }\n";
    let gw = gateway_to_app(&addrs, retry).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(get(&gw, "/").await.status(), 503);
        took.push(t.elapsed());
    }
    println!(
        "backoff: 3 tries took {:?}",
        took.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    assert_eq!(
        ups.iter().map(|u| u.hits()).sum::<usize>(),
        15,
        "3 tries each, on 3 endpoints"
    );
    for u in &ups {
        assert_eq!(u.hits(), 5, "each try went to a different endpoint");
    }
    // Two waits: [100, 200] then [100, 300] ms.
    for d in &took {
        assert!(*d >= Duration::from_millis(200), "{d:?}");
        assert!(*d < Duration::from_millis(500 + 700), "{d:?}");
    }
}

#[tokio::test]
async fn total_deadline_bounds_tries_and_backoff() {
    let extra = "    timeouts: { connect: 500ms, read: 1s, total: 1500ms }\n    retry: { attempts: 3, on: [timeout], backoff: { base: 50ms, max: 100ms } }\n";
    let ([a, b], gw) = both_failing(Mode::Sleep(3000), extra).await;
    let t = Instant::now();
    let r = get(&gw, "/").await;
    let took = t.elapsed();
    println!("deadline: answered {} after {took:?}", r.status());
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(&r), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2400),
        "{took:?}"
    );
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 1),
        "the first try timed out after 1s; the retry got what was left"
    );
    // The upstream learns how much time is left.
    let first: u64 = a.last_headers()["x-gatehouse-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let second: u64 = b.last_headers()["x-gatehouse-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (first, second) = (first.max(second), first.min(second));
    assert!(first <= 1500 && first > 1000, "{first}");
    assert!(second < 500, "{second}");
}

#[tokio::test]
async fn passive_ejection_of_a_failing_endpoint_and_its_return() {
    let [a, b] = upstreams(["a", "b"]).await;
    a.set_mode(Mode::Status(500));
    let od = "    outlier_detection: { consecutive_failures: 3, base_ejection_time: 3s, max_ejection_time: 10s, max_ejection_percent: 50 }\n";
    let gw = gateway_to_app(&[a.addr, b.addr], od).await;
    for _ in 0..20 {
        get(&gw, "/").await;
    }
    assert_eq!(a.hits(), 3, "ejected after 3 consecutive failures");
    assert_eq!(b.hits(), 17);
    let ups = admin_json(&gw, "/admin/upstreams").await;
    let eps = ups["app"]["endpoints"].as_array().unwrap().clone();
    let ep = |addr: SocketAddr| {
        eps.iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            ep(a.addr)["ejected"].as_bool(),
            ep(a.addr)["ejections"].as_u64()
        ),
        (Some(true), Some(1))
    );
    assert_eq!(ep(b.addr)["ejected"], false);
    let m = gw.metrics().await;
    let a_label = a.addr.to_string();
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_health_transitions_total",
            &[("endpoint", &a_label), ("to", "unhealthy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "gatehouse_upstream_endpoint_healthy",
            &[("endpoint", &a_label)]
        ),
        Some(0.0)
    );

    // Never more than half the cluster: b failing too stays in rotation.
    b.set_mode(Mode::Status(500));
    for _ in 0..6 {
        assert_eq!(get(&gw, "/").await.status(), 500);
    }
    assert_eq!(b.hits(), 23);
    let ups = admin_json(&gw, "/admin/upstreams").await;
    assert!(ups["app"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["address"] == b.addr.to_string() && e["ejected"] == false));
    b.set_mode(Mode::Echo);
    a.set_mode(Mode::Echo);

    // After the ejection time it takes traffic again, and the return is announced.
    assert!(
        eventually(Duration::from_secs(8), async || {
            let m = gw.metrics().await;
            metric_value(
                &m,
                "gatehouse_upstream_health_transitions_total",
                &[("endpoint", &a_label), ("to", "healthy")],
            ) == Some(1.0)
        })
        .await,
        "{}",
        gw.logs()
    );
    let before = a.hits();
    for _ in 0..6 {
        assert_eq!(get(&gw, "/").await.status(), 200);
    }
    assert!(a.hits() >= before + 2, "a is back in rotation");
}

#[tokio::test]
async fn bulkhead_keeps_a_hanging_upstream_from_starving_the_others() {
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Sleep(15_000));
    let fast = TestUpstream::start("fast").await;
    let ups = upstream("slow", &[slow.addr], "    timeouts: { read: 20s }\n    max_concurrent: 4\n    max_queue: 4\n    max_wait: 200ms\n")
        + &upstream("fast", &[fast.addr], "");
    let routes = "  - { name: slow, match: { path_prefix: /slow }, upstream: slow }\n  - { name: fast, match: { path_prefix: /fast }, upstream: fast }\n";
    let gw = TestGateway::start(&config(&ups, routes)).await;

    async fn latencies(gw: &TestGateway, n: usize) -> Vec<Duration> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = client().get(gw.url("/fast")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            out.push(t.elapsed());
        }
        out.sort();
        out
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let baseline = latencies(&gw, 30).await;

    // 30 requests pile onto the hanging upstream.
    let url = gw.url("/slow");
    let hanging: Vec<_> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client().get(url).send().await;
                (
                    r.map(|r| (r.status().as_u16(), error_code(&r))).ok(),
                    t.elapsed(),
                )
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), async || slow.hits() == 4).await,
        "slow hits {}",
        slow.hits()
    );

    let during = latencies(&gw, 50).await;
    let (b50, bmax) = (
        ms(baseline[baseline.len() / 2]),
        ms(*baseline.last().unwrap()),
    );
    let (d50, d95, dmax) = (
        ms(during[during.len() / 2]),
        ms(during[during.len() * 95 / 100]),
        ms(*during.last().unwrap()),
    );
    println!("bulkhead isolation: upstream B latency before: p50 {b50:.1}ms max {bmax:.1}ms; with A hanging at its limit: p50 {d50:.1}ms p95 {d95:.1}ms max {dmax:.1}ms");
    assert!(
        d50 < 100.0 && dmax < 1000.0,
        "B slowed down: p50 {d50:.1}ms max {dmax:.1}ms"
    );

    // The excess on A was refused quickly with 503 bulkhead_full; only 4 reached it.
    // The 4 admitted ones hang; the others must have finished long before this deadline.
    let mut refused = Vec::new();
    let mut pending = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in hanging {
        // `timeout` polls the task first, so a finished one is collected even past the deadline.
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), h).await {
            Ok(Ok((Some((503, code)), took))) => refused.push((code, took)),
            Ok(other) => panic!("unexpected result {other:?}"),
            Err(_) => pending += 1,
        }
    }
    let refused_ms: Vec<u128> = refused.iter().map(|(_, t)| t.as_millis()).collect();
    println!(
        "bulkhead: {} of 30 refused (ms: {refused_ms:?}), {} still held by the hanging upstream",
        refused.len(),
        pending
    );
    assert_eq!(refused.len(), 26);
    assert!(refused.iter().all(|(code, _)| code == "bulkhead_full"));
    assert!(
        refused
            .iter()
            .all(|(_, t)| *t < Duration::from_millis(2000)),
        "{refused_ms:?}"
    );
    assert_eq!(slow.hits(), 4);
    let m = gw.metrics().await;
    let slow_upstream = [("upstream", "slow")];
    let rejected = metric_value(&m, "gatehouse_bulkhead_rejections_total", &slow_upstream);
    assert_eq!(rejected, Some(26.0));
}
