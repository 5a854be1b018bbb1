//! Criterion micro-benchmarks of gatehouse's per-request and per-reload hot paths.
//!
//! Full run (numbers):   `cargo bench --bench hot_paths`
//!   (the `bench` profile inherits `release`, i.e. fat LTO; `--profile ci-release` builds
//!   much faster and is close enough for these)
//! Smoke (CI, no timing): `cargo test --benches` or `cargo bench --bench hot_paths -- --test`
//! One group:            `cargo bench --bench hot_paths -- router/10000`
//!
//! Issue 8's targets: router lookup <= 1 us at 10,000 routes; load + compile of 10,000
//! routes <= 100 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark, like a test

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use std::net::{IpAddr, Ipv4Addr};
use tokio::time::Instant;

use criterion::measurement::WallTime;
use criterion::{criterion_group, BatchSize, BenchmarkGroup, Criterion};
use futures_util::FutureExt;
use gatehouse::config::{self, LoadedConfig};
use gatehouse::resilience::breaker::{Admission, BreakerSettings};
use gatehouse::resilience::Breaker;
use gatehouse::router::{Matcher, RouteRequest, Router};
use gatehouse::state;
use gatehouse::upstream::{Endpoint, Source, Swrr, Upstream};
use gatehouse_filters::rate_limit::local::LocalLimiter;
use gatehouse_filters::rate_limit::{Algorithm, Policy};
use gatehouse_filters::{Filter, FilterConfig, FilterOutcome, FilterRuntime, RequestCx};
use http::{HeaderMap, Method};
use pingora_http::RequestHeader;

/// `cargo test --benches` runs this binary without `--bench` (and `-- --test` passes
/// `--test`): criterion then runs each benchmark once. The setup of the 10,000-route
/// cases dominates such a run in a debug build, so smoke runs use smaller tables.
fn smoke() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

fn route_counts() -> Vec<usize> {
    if smoke() {
        vec![10, 1_000]
    } else {
        vec![10, 1_000, 10_000]
    }
}

/// A config with `n` routes mixing the four kinds the router indexes differently:
/// exact paths, path prefixes, exact hosts and wildcard hosts, plus a catch-all last.
/// Route `i` has kind `i % 4`.
fn config_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 110 + 512);
    s.push_str(
        "listeners: [ { name: public, address: 127.0.0.1:18080 } ]\n\
         admin: { address: 127.0.0.1:19901 }\n\
         upstreams:\n  app: { discovery: { static: [ { address: 127.0.0.1:18081, weight: 1 } ] } }\n\
         routes:\n",
    );
    for i in 0..n.saturating_sub(1) {
        let m = match i % 4 {
            0 => format!("{{ path: /svc{i}/items }}"),
            1 => format!("{{ path_prefix: /api/v{i} }}"),
            2 => format!("{{ hosts: [ h{i}.example.com ], path_prefix: /x }}"),
            _ => format!("{{ hosts: [ \"*.w{i}.example.com\" ], methods: [GET] }}"),
        };
        s.push_str(&format!(
            "  - {{ name: r{i}, match: {m}, upstream: app }}\n"
        ));
    }
    s.push_str("  - { name: fallback, match: { path_prefix: / }, upstream: app }\n");
    s
}

fn load(n: usize) -> LoadedConfig {
    match config::load_str(&config_text(n), None) {
        Ok(l) => l,
        Err(e) => panic!("bench config with {n} routes refused: {e:?}"),
    }
}

fn router_of(loaded: &LoadedConfig) -> Router<usize> {
    let entries = loaded
        .config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| match Matcher::compile(&r.matcher) {
            Ok(m) => (m, i),
            Err(e) => panic!("route {i}: {e}"),
        })
        .collect();
    Router::new(entries)
}

/// The index of the route of kind `kind` closest to the middle of the table.
fn mid(n: usize, kind: usize) -> usize {
    let i = (n.saturating_sub(1) / 2) / 4 * 4 + kind;
    i.min(n.saturating_sub(2))
}

fn bench_router(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let get = Method::GET;
    for n in route_counts() {
        let loaded = load(n);
        let router = router_of(&loaded);
        assert_eq!(router.len(), n);
        let (e, p, h, w) = (mid(n, 0), mid(n, 1), mid(n, 2), mid(n, 3));
        let cases: Vec<(&str, String, String, Option<usize>)> = vec![
            ("exact", String::new(), format!("/svc{e}/items"), Some(e)),
            (
                "prefix_deep",
                String::new(),
                format!("/api/v{p}/users/42/orders/7"),
                Some(p),
            ),
            (
                "host_exact",
                format!("h{h}.example.com"),
                "/x/y".into(),
                Some(h),
            ),
            (
                "host_wildcard",
                format!("a.b.w{w}.example.com"),
                "/any/path".into(),
                Some(w),
            ),
            (
                "fallback",
                "unknown.example.org".into(),
                "/no/such/route/here".into(),
                Some(n - 1),
            ),
        ];
        let mut g = c.benchmark_group(format!("router/{n}"));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (name, host, path, want) in &cases {
            let req = RouteRequest {
                host,
                path,
                method: &get,
                headers: &headers,
            };
            assert_eq!(router.route(&req).copied(), *want, "{name} with {n} routes");
            g.bench_function(*name, |b| b.iter(|| router.route(black_box(&req)).copied()));
        }
        g.finish();
    }
}

fn bench_config(c: &mut Criterion) {
    let n = if smoke() { 1_000 } else { 10_000 };
    let text = config_text(n);
    let rt = Arc::new(FilterRuntime::default());
    let mut g = c.benchmark_group(format!("config/{n}_routes"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    // YAML parse + validation + the position index (`gatehouse validate`).
    g.bench_function("load", |b| {
        b.iter(|| config::load_str(black_box(&text), None).map(|l| l.config.routes.len()))
    });
    // LoadedConfig -> Snapshot (router, upstreams, filter chains).
    let loaded = load(n);
    g.bench_function("compile", |b| {
        b.iter_batched(
            || loaded.clone(),
            |l| state::compile(l, None, &rt).map(|s| s.router.len()),
            BatchSize::LargeInput,
        )
    });
    // What a reload does: load the text and compile it against the running snapshot.
    let prev = match state::compile(loaded.clone(), None, &rt) {
        Ok(s) => s,
        Err(e) => panic!("compile: {e:?}"),
    };
    g.bench_function("reload", |b| {
        b.iter(|| {
            let l = config::load_str(black_box(&text), None).map_err(|e| format!("{e:?}"))?;
            state::compile(l, Some(&prev), &rt)
                .map(|s| s.router.len())
                .map_err(|e| format!("{e:?}"))
        })
    });
    g.finish();
}

fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let address = format!("127.0.0.1:{}", 20000 + i);
            let addr = match address.parse() {
                Ok(a) => a,
                Err(e) => panic!("{address}: {e}"),
            };
            Arc::new(Endpoint::new(addr, address, *w, Source::Static, true))
        })
        .collect()
}

fn bench_swrr(c: &mut Criterion) {
    let loaded = load(2);
    let ucfg = match loaded.config.upstreams.get("app") {
        Some(u) => u.clone(),
        None => panic!("no upstream app"),
    };
    let mut g = c.benchmark_group("swrr");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for weights in [vec![5u32, 1, 1], vec![1; 16]] {
        let label = format!("{}_endpoints", weights.len());
        // The bare algorithm.
        let eps = Arc::new(endpoints(&weights));
        let mut swrr = Swrr::default();
        g.bench_function(format!("pick/{label}"), |b| {
            b.iter(|| swrr.pick(black_box(&eps), |_| true))
        });
        // What the proxy calls: availability checks, the lock, the Arc clone.
        let up = Upstream::new("app", ucfg.clone(), endpoints(&weights));
        let now = gatehouse::clock::mono_ms();
        g.bench_function(format!("upstream_pick/{label}"), |b| {
            b.iter(|| up.pick(&[], black_box(now)))
        });
    }
    g.finish();
}

fn filter_of(yaml: &str, rt: &Arc<FilterRuntime>) -> Arc<dyn Filter> {
    // Through a JSON value, as the gateway's loader reads a route's `filters:` list
    // (serde_yaml wants `!tag` syntax for a bare enum).
    let value: serde_json::Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => panic!("filter config {yaml}: {e}"),
    };
    let cfg: FilterConfig = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => panic!("filter config {yaml}: {e}"),
    };
    match gatehouse_filters::build(&cfg, "bench", rt) {
        Ok(f) => f,
        Err(e) => panic!("filter {yaml}: {e}"),
    }
}

/// Runs a request filter the way the proxy does; the filters benched here never wait
/// (static keys, in-process counters), so the future is ready at once.
fn run_filter(f: &dyn Filter, req: &mut RequestHeader) -> bool {
    let mut cx = RequestCx {
        route: "bench",
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        request_id: "bench-request-id",
        body_prefix: None,
        body: None,
        claims: None,
        response_headers: Vec::new(),
        state: &Default::default(),
    };
    matches!(
        f.on_request(req, &mut cx).now_or_never(),
        Some(Ok(FilterOutcome::Continue))
    )
}

/// Benches the whole filter as a request pays it (for a JWT: header lookup, parse,
/// signature, claims), on a copy of `req`, after checking that `req` is admitted.
fn bench_filter(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    f: &dyn Filter,
    req: &RequestHeader,
) {
    assert!(
        run_filter(f, &mut req.clone()),
        "{name}: a valid request was refused"
    );
    g.bench_function(name, |b| {
        b.iter_batched_ref(|| req.clone(), |r| run_filter(f, r), BatchSize::SmallInput)
    });
}

fn key_path(name: &str) -> String {
    format!("{}/benches/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_key(name: &str) -> Vec<u8> {
    match std::fs::read(key_path(name)) {
        Ok(b) => b,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn bench_jwt(c: &mut Criterion) {
    use jsonwebtoken::{encode, Algorithm as Alg, EncodingKey, Header};
    let rt = Arc::new(FilterRuntime::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": "bench", "aud": "bench", "sub": "user-42", "role": "USER",
        "iat": now, "nbf": now, "exp": now + 86_400,
    });
    let secret = "bench-secret-bench-secret-bench-secret!";
    let cases: Vec<(&str, String, EncodingKey, Alg)> = vec![
        (
            "HS256",
            format!("jwt: {{ issuer: bench, audience: bench, keys: [ {{ secret: \"{secret}\", algorithms: [HS256] }} ] }}"),
            EncodingKey::from_secret(secret.as_bytes()),
            Alg::HS256,
        ),
        (
            "RS256",
            format!("jwt: {{ issuer: bench, audience: bench, keys: [ {{ pem_file: \"{}\", algorithms: [RS256] }} ] }}", key_path("rsa_public.pem")),
            EncodingKey::from_rsa_pem(&read_key("rsa_private.pem")).unwrap_or_else(|e| panic!("rsa key: {e}")),
            Alg::RS256,
        ),
        (
            "ES256",
            format!("jwt: {{ issuer: bench, audience: bench, keys: [ {{ pem_file: \"{}\", algorithms: [ES256] }} ] }}", key_path("ec256_public.pem")),
            EncodingKey::from_ec_pem(&read_key("ec256_private.pem")).unwrap_or_else(|e| panic!("ec key: {e}")),
            Alg::ES256,
        ),
    ];
    let mut g = c.benchmark_group("jwt_verify");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, yaml, key, alg) in cases {
        let filter = filter_of(&yaml, &rt);
        let token =
            encode(&Header::new(alg), &claims, &key).unwrap_or_else(|e| panic!("sign {name}: {e}"));
        let mut req =
            RequestHeader::build("GET", b"/api/users/42", None).unwrap_or_else(|e| panic!("{e}"));
        req.insert_header("authorization", format!("Bearer {token}"))
            .unwrap_or_else(|e| panic!("{e}"));
        bench_filter(&mut g, name, filter.as_ref(), &req);
    }
    g.finish();
}

fn bench_rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_local");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let gcra = Policy {
        algorithm: Algorithm::Gcra,
        limit: 1_000_000_000,
        window: Duration::from_secs(60),
        burst: 1_000_000_000,
    };
    // The sliding window keeps one timestamp per admitted request (an exact log): a
    // short window keeps the log, and the bench's memory, bounded.
    let sliding = Policy {
        algorithm: Algorithm::SlidingWindow,
        limit: 1_000_000_000,
        window: Duration::from_millis(100),
        burst: 1_000_000_000,
    };
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    for (name, policy) in [("gcra", gcra), ("sliding_window", sliding)] {
        let lim = LocalLimiter::default();
        assert!(lim.check("127.0.0.1", &policy, Instant::now()).allowed);
        g.bench_function(format!("{name}/one_key"), |b| {
            b.iter(|| {
                lim.check(black_box("127.0.0.1"), &policy, Instant::now())
                    .allowed
            })
        });
        let lim = LocalLimiter::default();
        let mut i = 0usize;
        g.bench_function(format!("{name}/10k_keys"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                lim.check(black_box(&keys[i]), &policy, Instant::now())
                    .allowed
            })
        });
    }
    // The whole filter as a route runs it: key from the client address, decision,
    // RateLimit-* response headers.
    let rt = Arc::new(FilterRuntime::default());
    for alg in ["gcra", "sliding_window"] {
        let window = if alg == "gcra" { "1m" } else { "100ms" };
        let f = filter_of(&format!("rate_limit: {{ name: per_client, key: client_ip, limit: 1000000000, window: {window}, algorithm: {alg} }}"), &rt);
        let req = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        bench_filter(&mut g, &format!("filter_client_ip/{alg}"), f.as_ref(), &req);
    }
    g.finish();
}

fn bench_breaker(c: &mut Criterion) {
    let settings = BreakerSettings {
        failure_rate: 0.5,
        min_requests: 20,
        window: Duration::from_secs(30),
        consecutive_failures: None,
        open_for: Duration::from_secs(15),
        max_open_for: Duration::from_secs(300),
        half_open_probes: 3,
    };
    let mut g = c.benchmark_group("breaker");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // The CLOSED fast path every proxied request takes: admit, then record a success.
    // The clock advances 1 ms per call so that the rolling window's buckets rotate as
    // in real traffic (with a frozen clock every call lands in one bucket, whose 20-bit
    // counters saturate after ~10^6 calls).
    let closed = Breaker::new(settings.clone());
    let start = gatehouse::clock::mono_ms();
    let mut now = start;
    g.bench_function("admit_record_closed", |b| {
        b.iter(|| {
            now += 1;
            match closed.admit(black_box(now)).0 {
                Admission::Admit(t) => closed.record(t, false, now).is_some(),
                Admission::Reject { .. } => panic!("a closed breaker rejected"),
            }
        })
    });
    // One failure in ten: stays closed (50 % opens it), and counts failures too.
    let mixed = Breaker::new(settings.clone());
    let mut now = start;
    let mut i = 0u8;
    g.bench_function("admit_record_10pct_failures", |b| {
        b.iter(|| {
            i = if i == 9 { 0 } else { i + 1 };
            now += 1;
            match mixed.admit(black_box(now)).0 {
                Admission::Admit(t) => mixed.record(t, i == 0, now).is_some(),
                Admission::Reject { .. } => panic!("10 % failures opened the breaker"),
            }
        })
    });
    let now = start;
    // An OPEN breaker: the fail-fast answer.
    let open = Breaker::new(settings);
    for _ in 0..100 {
        if let Admission::Admit(t) = open.admit(now).0 {
            open.record(t, true, now);
        }
    }
    assert!(
        matches!(open.admit(now).0, Admission::Reject { .. }),
        "breaker did not open"
    );
    g.bench_function("reject_open", |b| {
        b.iter(|| matches!(open.admit(black_box(now)).0, Admission::Reject { .. }))
    });
    g.finish();
}

/// The header limits (`max_headers`, `max_header_line_bytes`, `max_request_header_bytes`,
/// `max_uri_bytes`) and the Host rules, checked on every parsed request: what
/// `edge::check_request` costs on wrk's request, on a browser's and on one at the
/// default 100-field limit. Each request is asserted to pass before it is timed.
fn bench_edge(c: &mut Criterion) {
    use gatehouse::proxy::edge::{check_request, EdgeLimits};
    let limits = EdgeLimits::default();
    let build = |fields: &[(&str, String)]| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?page=2", None).unwrap();
        for (n, v) in fields {
            req.append_header(n.to_string(), v.as_str()).unwrap();
        }
        assert!(check_request(&req, &limits).is_ok(), "{fields:?}");
        req
    };
    let wrk = build(&[("host", "127.0.0.1:8080".into())]);
    let browser = build(&[
        ("host", "shop.example.com".into()),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0".into(),
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
        ),
        ("accept-language", "en-US,en;q=0.5".into()),
        ("accept-encoding", "gzip, deflate, br, zstd".into()),
        ("referer", "https://shop.example.com/".into()),
        ("cookie", format!("session={}; theme=dark", "a".repeat(64))),
        ("upgrade-insecure-requests", "1".into()),
        ("sec-fetch-dest", "document".into()),
        ("sec-fetch-mode", "navigate".into()),
        ("sec-fetch-site", "same-origin".into()),
        ("priority", "u=0, i".into()),
    ]);
    let names: Vec<String> = (1..limits.max_headers)
        .map(|i| format!("x-field-{i}"))
        .collect();
    let mut full: Vec<(&str, String)> = vec![("host", "shop.example.com".into())];
    full.extend(names.iter().map(|n| (n.as_str(), "v".repeat(20))));
    let at_limit = build(&full);
    let mut g = c.benchmark_group("edge_check_request");
    for (name, req) in [
        ("wrk_1_field", &wrk),
        ("browser_12_fields", &browser),
        ("100_fields", &at_limit),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| check_request(black_box(req), &limits).is_ok())
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_router,
    bench_config,
    bench_swrr,
    bench_jwt,
    bench_rate_limit,
    bench_breaker,
    bench_edge
);

/// `cargo test --all-targets -- --test-threads=N` hands libtest's flags to every target;
/// criterion's parser refuses `--test-threads` (exit 2). Drop it (and its value) and run
/// this binary again with the rest, so the smoke run works beside the unit tests.
fn without_libtest_flags() -> Option<Vec<std::ffi::OsString>> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut kept = Vec::with_capacity(args.len());
    let mut it = args.iter();
    let mut dropped = false;
    while let Some(a) = it.next() {
        let text = a.to_string_lossy();
        if text == "--test-threads" {
            it.next();
            dropped = true;
        } else if text.starts_with("--test-threads=") {
            dropped = true;
        } else {
            kept.push(a.clone());
        }
    }
    dropped.then_some(kept)
}

fn main() {
    if let Some(args) = without_libtest_flags() {
        let status = std::env::current_exe()
            .and_then(|exe| std::process::Command::new(exe).args(args).status());
        match status {
            Ok(s) => std::process::exit(s.code().unwrap_or(1)),
            Err(e) => panic!("re-running the bench without --test-threads: {e}"),
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
