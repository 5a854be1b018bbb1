//! Rate limits against the real Redis at 127.0.0.1:6379 (unique key prefix per test),
//! a private `redis-server` that is stopped and started again, a port where nothing
//! listens, and a server that accepts and never answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_filters::{build, Filter, FilterConfig, FilterRuntime, RedisSettings};
use gatehouse_testkit::{free_port, PrivateRedis};
use pingora_http::RequestHeader;
use serde_json::json;

use crate::support::{metric, run, Outcome};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn prefix(test: &str) -> String {
    format!(
        "gatehouse:test:{}:{}:{}",
        test,
        std::process::id(),
        rand::random::<u32>()
    )
}

struct Gw {
    registry: prometheus::Registry,
    runtime: Arc<FilterRuntime>,
}

fn gateway(settings: Option<RedisSettings>) -> Gw {
    let registry = prometheus::Registry::new();
    let runtime = Arc::new(FilterRuntime::new(settings, &registry).unwrap());
    Gw { registry, runtime }
}

/// `n` gateways on the shared Redis with one key prefix, and a 2 s Redis timeout (many
/// concurrent calls on a busy machine).
fn gateways_sharing(prefix: &str, n: usize) -> Vec<Gw> {
    (0..n)
        .map(|_| {
            gateway(Some(
                RedisSettings::new(SHARED_REDIS)
                    .with_key_prefix(prefix)
                    .with_timeout(Duration::from_secs(2)),
            ))
        })
        .collect()
}

impl Gw {
    fn filter(&self, cfg: serde_json::Value) -> Arc<dyn Filter> {
        let cfg: FilterConfig = serde_json::from_value(json!({ "rate_limit": cfg })).unwrap();
        build(&cfg, "test_route", &self.runtime).unwrap()
    }

    fn decisions(&self, limit: &str, decision: &str) -> f64 {
        metric(
            &self.registry,
            "gatehouse_ratelimit_decisions_total",
            &[
                ("route", "test_route"),
                ("limit", limit),
                ("decision", decision),
            ],
        )
    }

    fn redis_errors(&self) -> f64 {
        ["connect", "ratelimit", "ping"]
            .iter()
            .map(|op| {
                metric(
                    &self.registry,
                    "gatehouse_redis_errors_total",
                    &[("op", op)],
                )
            })
            .sum()
    }

    fn redis_up(&self) -> f64 {
        metric(&self.registry, "gatehouse_redis_up", &[])
    }
}

fn login_cfg() -> serde_json::Value {
    json!({"name": "login", "key": "body.email", "limit": 5, "window": "15m"})
}

async fn login(f: &dyn Filter, email: &str) -> Outcome {
    let body = serde_json::to_vec(&json!({"email": email, "password": "pw"})).unwrap();
    let req = RequestHeader::build("POST", b"/api/user/login", None).unwrap();
    run(f, req, Some(&body), None).await
}

async fn get(f: &dyn Filter) -> Outcome {
    run(
        f,
        RequestHeader::build("GET", b"/", None).unwrap(),
        None,
        None,
    )
    .await
}

fn header(out: &Outcome, name: &str) -> Option<String> {
    out.header(name).or_else(|| {
        out.response_headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap().to_string())
    })
}

/// Connects to the shared Redis, failing (not skipping) the test when it is down.
async fn shared_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(SHARED_REDIS).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .expect("the shared Redis at 127.0.0.1:6379 must be running (.ci/run starts it)")
}

#[tokio::test]
async fn login_limit_five_per_fifteen_minutes_per_email() {
    let mut conn = shared_redis().await;
    let p = prefix("login");
    let gw = gateway(Some(RedisSettings::new(SHARED_REDIS).with_key_prefix(&p)));
    let f = gw.filter(login_cfg());
    assert_eq!(f.body_prefix_limit(), Some(64 * 1024));

    for i in 0..5u64 {
        let out = login(f.as_ref(), "alice@example.com").await;
        assert_eq!(out.status(), 0, "login {} should pass", i + 1);
        assert_eq!(header(&out, "ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(
            header(&out, "ratelimit-remaining"),
            Some((4 - i).to_string())
        );
    }
    let out = login(f.as_ref(), "alice@example.com").await;
    assert_eq!(out.status(), 429);
    assert_eq!(
        out.response.as_ref().unwrap().error_code,
        Some("rate_limited")
    );
    let retry: u64 = header(&out, "retry-after").unwrap().parse().unwrap();
    assert!((890..=900).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&out, "ratelimit-remaining").as_deref(), Some("0"));
    let reset: u64 = header(&out, "ratelimit-reset").unwrap().parse().unwrap();
    assert!((890..=900).contains(&reset), "RateLimit-Reset {reset}");

    // Another email has its own budget.
    assert_eq!(login(f.as_ref(), "bob@example.com").await.status(), 0);
    // No email: 400 by default.
    let req = RequestHeader::build("POST", b"/api/user/login", None).unwrap();
    assert_eq!(
        run(f.as_ref(), req, Some(b"{\"password\":\"x\"}"), None)
            .await
            .status(),
        400
    );

    assert_eq!(gw.decisions("login", "allowed"), 6.0);
    assert_eq!(gw.decisions("login", "limited"), 1.0);
    assert_eq!(gw.decisions("login", "key_missing_rejected"), 1.0);
    assert_eq!(gw.redis_up(), 1.0);

    // Keys are namespaced, hashed (no email in clear) and expire.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with(&format!("{p}:test_route:login:")), "{k}");
        assert!(!k.contains("example.com"), "{k}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 900_000, "{k} ttl {ttl}");
    }
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_the_limit() {
    shared_redis().await;
    let p = prefix("shared");
    let a = gateway(Some(RedisSettings::new(SHARED_REDIS).with_key_prefix(&p)));
    let b = gateway(Some(RedisSettings::new(SHARED_REDIS).with_key_prefix(&p)));
    let (fa, fb) = (a.filter(login_cfg()), b.filter(login_cfg()));
    for i in 0..5 {
        let f = if i % 2 == 0 { &fa } else { &fb };
        assert_eq!(login(f.as_ref(), "carol@example.com").await.status(), 0);
    }
    assert_eq!(login(fa.as_ref(), "carol@example.com").await.status(), 429);
    assert_eq!(login(fb.as_ref(), "carol@example.com").await.status(), 429);
    assert_eq!(
        a.decisions("login", "allowed") + b.decisions("login", "allowed"),
        5.0
    );
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    shared_redis().await;
    let p = prefix("concurrent");
    let gws = gateways_sharing(&p, 3);
    let filters: Vec<_> = gws
        .iter()
        .map(|g| g.filter(json!({"key": "header:x-api-key", "limit": 20, "window": "1m"})))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let f = filters[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("x-api-key", "key-1").unwrap();
            run(f.as_ref(), req, None, None).await.status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 0 {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
}

/// The gateway pings Redis from its maintenance thread; a proxy thread must not then send
/// its rate-limit calls through that thread's connection (whose driver runs on the other
/// thread: two cross-thread wake-ups per call) but through one of its own.
#[tokio::test]
async fn each_thread_calls_redis_on_a_connection_of_its_own() {
    shared_redis().await;
    let p = prefix("per_thread");
    let gw = gateway(Some(RedisSettings::new(SHARED_REDIS).with_key_prefix(&p)));
    let maintenance = Arc::clone(&gw.runtime);
    let (tx, rx) = std::sync::mpsc::channel();
    // The maintenance thread's runtime lives on while the test runs, like the gateway's.
    let pinger = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let up = rt.block_on(maintenance.check_redis());
        tx.send(up).unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(3)).await });
    });
    let up = tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(up, Some(true));
    assert_eq!(gw.runtime.redis_connections(), 1, "the ping's connection");
    let f = gw.filter(json!({"name": "api", "key": "client_ip", "limit": 100, "window": "1m", "algorithm": "gcra"}));
    for _ in 0..3 {
        assert_eq!(get(f.as_ref()).await.status(), 0);
    }
    assert_eq!(
        gw.runtime.redis_connections(),
        2,
        "the requests' thread made its own connection and kept using it"
    );
    assert_eq!(gw.decisions("api", "allowed"), 3.0);
    pinger.join().unwrap();
}

#[tokio::test]
async fn gcra_in_redis_allows_the_burst_then_the_rate() {
    shared_redis().await;
    let p = prefix("gcra");
    let gw = gateway(Some(RedisSettings::new(SHARED_REDIS).with_key_prefix(&p)));
    // 2 per second (one per 500ms), bursts of 3.
    let f = gw.filter(json!({"name": "api", "key": "client_ip", "limit": 2, "window": "1s", "algorithm": "gcra", "burst": 3}));
    for _ in 0..3 {
        assert_eq!(get(f.as_ref()).await.status(), 0);
    }
    let out = get(f.as_ref()).await;
    assert_eq!(out.status(), 429);
    assert_eq!(header(&out, "retry-after").as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(f.as_ref()).await.status(), 0);
    assert_eq!(get(f.as_ref()).await.status(), 429);
}

#[tokio::test]
async fn without_redis_the_limit_is_in_process() {
    let gw = gateway(None);
    let f = gw.filter(login_cfg());
    for _ in 0..5 {
        assert_eq!(login(f.as_ref(), "dave@example.com").await.status(), 0);
    }
    assert_eq!(login(f.as_ref(), "dave@example.com").await.status(), 429);
    // A rebuilt filter (config reload) keeps the counters of the runtime.
    let again = gw.filter(login_cfg());
    assert_eq!(
        login(again.as_ref(), "dave@example.com").await.status(),
        429
    );
    // Skip policy for a missing key.
    let skip = gw.filter(json!({"name": "s", "key": "claim:sub", "limit": 1, "window": "1m", "on_missing_key": "skip"}));
    assert_eq!(get(skip.as_ref()).await.status(), 0);
    assert_eq!(get(skip.as_ref()).await.status(), 0);
    assert_eq!(gw.decisions("s", "key_missing_skipped"), 2.0);
    // Claim keys: one budget per subject.
    let claims = Some(Arc::new(json!({"sub": "u1"})));
    let out = run(
        skip.as_ref(),
        RequestHeader::build("GET", b"/", None).unwrap(),
        None,
        claims.clone(),
    )
    .await;
    assert_eq!(out.status(), 0);
    let out = run(
        skip.as_ref(),
        RequestHeader::build("GET", b"/", None).unwrap(),
        None,
        claims,
    )
    .await;
    assert_eq!(out.status(), 429);
}

/// Each failure policy against a dead Redis, each request within the timeout, and at
/// most one Redis attempt per breaker window.
async fn check_policies(url: &str, timeout: Duration) {
    let settings = RedisSettings::new(url)
        .with_timeout(timeout)
        .with_breaker_open_for(Duration::from_secs(30));
    let gw = gateway(Some(settings));
    let open = gw.filter(json!({"name": "open", "key": "client_ip", "limit": 1, "window": "1m", "on_redis_error": "fail_open"}));
    let closed = gw.filter(json!({"name": "closed", "key": "client_ip", "limit": 1, "window": "1m", "on_redis_error": "fail_closed"}));
    let local = gw.filter(json!({"name": "local", "key": "client_ip", "limit": 2, "window": "1m", "on_redis_error": "local"}));

    let started = Instant::now();
    let out = get(open.as_ref()).await;
    let first = started.elapsed();
    assert_eq!(out.status(), 0, "fail_open lets the request through");
    assert!(
        first < timeout + Duration::from_secs(1),
        "first call bounded by the timeout: {first:?}"
    );
    assert_eq!(gw.redis_errors(), 1.0);
    assert_eq!(gw.redis_up(), 0.0);

    // The breaker is open: the next requests do not touch Redis at all.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(open.as_ref()).await.status(), 0);
        let out = get(closed.as_ref()).await;
        assert_eq!(out.status(), 503);
        assert_eq!(
            out.response.as_ref().unwrap().error_code,
            Some("rate_limiter_unavailable")
        );
        assert_eq!(header(&out, "retry-after").as_deref(), Some("1"));
    }
    let outs = [
        get(local.as_ref()).await,
        get(local.as_ref()).await,
        get(local.as_ref()).await,
    ];
    assert_eq!(
        outs.iter().map(Outcome::status).collect::<Vec<_>>(),
        [0, 0, 429],
        "local keeps the same limit in memory"
    );
    let rest = started.elapsed();
    // Generous (busy CI cores), yet far below one timeout per request (23 x timeout).
    assert!(
        rest < timeout * 23 / 2,
        "23 requests while the breaker is open took {rest:?}"
    );
    assert_eq!(
        gw.redis_errors(),
        1.0,
        "one Redis failure per breaker window"
    );
    assert_eq!(gw.decisions("open", "fail_open"), 11.0);
    assert_eq!(gw.decisions("closed", "fail_closed"), 10.0);
    assert_eq!(gw.decisions("local", "local_allowed"), 2.0);
    assert_eq!(gw.decisions("local", "local_limited"), 1.0);
}

#[tokio::test]
async fn nothing_listening_follows_each_failure_policy() {
    let port = free_port();
    check_policies(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_millis(50),
    )
    .await;
}

#[tokio::test]
async fn black_holed_redis_costs_one_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    check_policies(&format!("redis://127.0.0.1:{port}"), timeout).await;
    // The first call really waited for the timeout (the server never answers).
    assert!(started.elapsed() >= timeout);
    hold.abort();
}

#[tokio::test]
async fn redis_stopped_then_back_resumes_global_limiting() {
    let port = free_port();
    let mut redis = PrivateRedis::start_on(port);
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let p = prefix("restart");
    let settings = || {
        RedisSettings::new(&url)
            .with_key_prefix(&p)
            .with_timeout(Duration::from_millis(100))
            .with_breaker_open_for(Duration::from_millis(300))
    };
    let (a, b) = (gateway(Some(settings())), gateway(Some(settings())));
    let cfg = json!({"name": "api", "key": "header:x-api-key", "limit": 3, "window": "1m", "on_redis_error": "local"});
    let (fa, fb) = (a.filter(cfg.clone()), b.filter(cfg));
    let call = |f: Arc<dyn Filter>, key: &'static str| async move {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-api-key", key).unwrap();
        run(f.as_ref(), req, None, None).await.status()
    };
    assert_eq!(a.runtime.check_redis().await, Some(true));
    assert_eq!(a.redis_up(), 1.0);

    // Global: 3 across both gateways.
    assert_eq!(call(fa.clone(), "k1").await, 0);
    assert_eq!(call(fb.clone(), "k1").await, 0);
    assert_eq!(call(fa.clone(), "k1").await, 0);
    assert_eq!(call(fb.clone(), "k1").await, 429);

    // Scripts are called by SHA; after SCRIPT FLUSH (or a Redis restart) the NOSCRIPT
    // reply makes the client load them again, and the counts are still shared.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(call(fa.clone(), "k1").await, 429);
    assert_eq!(call(fb.clone(), "k4").await, 0);
    assert_eq!(a.redis_errors(), 0.0);
    drop(conn);

    // Redis stops: each gateway limits locally (3 each), within the timeout.
    redis.stop();
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(call(fa.clone(), "k2").await, 0);
        assert_eq!(call(fb.clone(), "k2").await, 0);
    }
    assert_eq!(call(fa.clone(), "k2").await, 429);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(a.decisions("api", "local_allowed") >= 3.0);
    assert_eq!(a.redis_up(), 0.0);
    assert_eq!(a.runtime.check_redis().await, Some(false));

    // Redis is back (empty: it saved nothing). After the breaker window both
    // gateways reconnect by themselves and the limit is global again.
    let _redis = PrivateRedis::start_on(port);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.runtime.check_redis().await != Some(true) || b.runtime.check_redis().await != Some(true)
    {
        assert!(Instant::now() < deadline, "did not reconnect");
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    let allowed_before = a.decisions("api", "allowed") + b.decisions("api", "allowed");
    assert_eq!(call(fa.clone(), "k3").await, 0);
    assert_eq!(call(fb.clone(), "k3").await, 0);
    assert_eq!(call(fb.clone(), "k3").await, 0);
    assert_eq!(call(fa.clone(), "k3").await, 429);
    assert_eq!(call(fb.clone(), "k3").await, 429);
    assert_eq!(
        a.decisions("api", "allowed") + b.decisions("api", "allowed"),
        allowed_before + 3.0
    );
    assert_eq!(a.redis_up(), 1.0);
}

/// Number of script calls a Redis has run (EVALSHA + EVAL), from INFO commandstats.
async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Sends `n` concurrent requests with the same key through `f`; returns the statuses
/// and the `RateLimit-Remaining` of each admitted one.
async fn burst(f: &Arc<dyn Filter>, n: usize) -> (Vec<u16>, Vec<u64>) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let f = Arc::clone(f);
            tokio::spawn(async move {
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.insert_header("x-api-key", "hot").unwrap();
                let out = run(f.as_ref(), req, None, None).await;
                let remaining = header(&out, "ratelimit-remaining").map(|v| v.parse().unwrap());
                (out.status(), remaining)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for t in tasks {
        let (status, rem) = t.await.unwrap();
        statuses.push(status);
        if status == 0 {
            remaining.push(rem.unwrap());
        }
    }
    remaining.sort_unstable();
    (statuses, remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_counted_in_batches_and_stays_exact() {
    let private = PrivateRedis::start();
    let url = private.url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let gw = gateway(Some(
        RedisSettings::new(&url).with_timeout(Duration::from_secs(2)),
    ));

    // Sliding window: 300 at once against a limit of 100.
    let f = gw.filter(json!({"name": "sw", "key": "header:x-api-key", "limit": 100, "window": "1m", "on_redis_error": "fail_closed"}));
    let before = script_calls(&mut conn).await;
    let (statuses, remaining) = burst(&f, 300).await;
    let calls = script_calls(&mut conn).await - before;
    assert_eq!(statuses.iter().filter(|s| **s == 0).count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 200);
    // Each admitted request saw its own place in the count.
    assert_eq!(remaining, (0..100).collect::<Vec<u64>>());
    assert!(
        calls < 300 / 4,
        "300 requests of one key made {calls} script calls"
    );
    let stored: u64 = redis::cmd("EVAL")
        .arg("local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('ZCARD', k) end return n")
        .arg(0)
        .arg("gatehouse:rl:test_route:sw:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 100, "one sorted-set member per admitted request");
    assert_eq!(gw.decisions("sw", "allowed"), 100.0);
    assert_eq!(gw.decisions("sw", "limited"), 200.0);

    // GCRA: a burst of 10, then nothing for an hour.
    let g = gw.filter(json!({"name": "gcra", "key": "header:x-api-key", "limit": 1, "window": "1h", "algorithm": "gcra", "burst": 10, "on_redis_error": "fail_closed"}));
    let (statuses, remaining) = burst(&g, 60).await;
    assert_eq!(statuses.iter().filter(|s| **s == 0).count(), 10);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 50);
    assert_eq!(remaining, (0..10).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_cancelled_request_still_get_decisions() {
    shared_redis().await;
    let p = prefix("cancel");
    let gw = gateway(Some(
        RedisSettings::new(SHARED_REDIS)
            .with_key_prefix(&p)
            .with_timeout(Duration::from_secs(2)),
    ));
    let f = gw.filter(json!({"name": "c", "key": "header:x-api-key", "limit": 1000, "window": "1m", "on_redis_error": "fail_closed"}));
    for round in 0..20 {
        // The first request leads the key's call and is dropped (the client went away)
        // while the others wait behind it.
        let lead = {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.insert_header("x-api-key", "hot").unwrap();
                run(f.as_ref(), req, None, None).await.status()
            })
        };
        let followers = tokio::spawn({
            let f = Arc::clone(&f);
            async move { burst(&f, 20).await }
        });
        tokio::task::yield_now().await;
        lead.abort();
        let started = Instant::now();
        let (statuses, _) = followers.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == 0),
            "round {round}: {statuses:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "round {round}");
    }
}

/// One case of the Redis property: `callers` tasks over `gateways` gateways sharing one
/// key prefix, each sending `each` requests with the given pauses; returns the client-side
/// (sent, answered) span of every admitted request, and the statuses.
async fn redis_case(
    cfg: serde_json::Value,
    gateways: usize,
    callers: usize,
    pauses: Vec<u64>,
) -> (Vec<(Instant, Instant)>, Vec<u16>) {
    let p = prefix("prop");
    let gws = gateways_sharing(&p, gateways);
    let filters: Vec<_> = gws.iter().map(|g| g.filter(cfg.clone())).collect();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let f = Arc::clone(&filters[c % filters.len()]);
            let pauses = pauses.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for (i, pause) in pauses.iter().enumerate() {
                    // Callers start out of step: each skips a different first pause.
                    if i > 0 || c % 2 == 1 {
                        tokio::time::sleep(Duration::from_millis(*pause)).await;
                    }
                    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                    req.insert_header("x-api-key", "one-key").unwrap();
                    let sent = Instant::now();
                    let status = run(f.as_ref(), req, None, None).await.status();
                    out.push((sent, Instant::now(), status));
                }
                out
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut statuses = Vec::new();
    for t in tasks {
        for (sent, answered, status) in t.await.unwrap() {
            statuses.push(status);
            if status == 0 {
                admitted.push((sent, answered));
            }
        }
    }
    (admitted, statuses)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]

    /// Concurrent callers on several gateways sharing one Redis: in every stretch of time
    /// the admitted requests respect the limit. Redis's clock decides, so a request counts
    /// somewhere between its sending and its answer: a set of admitted requests whose
    /// sending-to-answer spans all fit in a window certainly shared one window.
    #[test]
    fn redis_never_admits_more_than_the_limit_in_any_window(
        gcra in proptest::bool::ANY,
        limit in 1u64..6,
        burst in 1u64..6,
        window_ms in 150u64..400,
        gateways in 1usize..4,
        callers in 2usize..6,
        pauses in proptest::collection::vec(0u64..80, 4..10),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = if gcra {
            json!({"name": "p", "key": "header:x-api-key", "limit": limit, "window": format!("{window_ms}ms"),
                   "algorithm": "gcra", "burst": burst, "on_redis_error": "fail_closed"})
        } else {
            json!({"name": "p", "key": "header:x-api-key", "limit": limit, "window": format!("{window_ms}ms"),
                   "on_redis_error": "fail_closed"})
        };
        let (mut admitted, statuses) = rt.block_on(async {
            shared_redis().await;
            redis_case(cfg, gateways, callers, pauses).await
        });
        proptest::prop_assert!(statuses.iter().all(|s| *s == 0 || *s == 429), "{:?}", statuses);
        proptest::prop_assert!(!admitted.is_empty());
        admitted.sort();
        let window = Duration::from_millis(window_ms);
        let interval = window.as_secs_f64() / limit as f64;
        for (i, (first_sent, _)) in admitted.iter().enumerate() {
            for (_, last_answer) in &admitted[i..] {
                let span = last_answer.saturating_duration_since(*first_sent);
                // Every admitted request sent at or after `first_sent` and answered by
                // `last_answer` was counted inside [first_sent, last_answer].
                let n = admitted[i..]
                    .iter()
                    .filter(|(_, a)| a <= last_answer)
                    .count() as u64;
                if gcra {
                    let most = burst + (span.as_secs_f64() / interval + 1e-6).floor() as u64;
                    proptest::prop_assert!(n <= most, "{} admitted in {:?} (gcra {}/{:?}, burst {})", n, span, limit, window, burst);
                } else if span + Duration::from_millis(2) < window {
                    proptest::prop_assert!(n <= limit, "{} admitted in {:?} (limit {} per {:?})", n, span, limit, window);
                }
            }
        }
    }
}
