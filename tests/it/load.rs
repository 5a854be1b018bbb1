//! The load test: traffic on keep-alive and fresh connections while the config reloads 50+
//! times; nothing is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// Counts of one load run.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    ok: AtomicU64,
    bad_status: AtomicU64,
    conn_errors: AtomicU64,
    dyn_sent: AtomicU64,
}

impl Load {
    /// Counts (and prints) an answer that is not the expected 200 from the right upstream.
    fn bad_status(&self, who: &str, r: &reqwest::Response) -> u64 {
        let code = r.headers().get("x-gatehouse-error");
        eprintln!("{who}: status {} {code:?}", r.status());
        self.bad_status.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts (and prints) a request that got no answer.
    fn conn_error(&self, who: &str, e: &reqwest::Error) -> u64 {
        eprintln!("{who}: connection error {e:?}");
        self.conn_errors.fetch_add(1, Ordering::Relaxed)
    }
}

/// A load client of its own (its own pool, at most `max_idle` idle connections per
/// host), without proxies, 10 s timeout.
fn load_client(max_idle: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(max_idle)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn load_while_reloading_50_times_drops_nothing() {
    const MIN_RELOADS: usize = 50;
    const MAX_RELOADS: usize = 70;
    const MIN_LOAD: Duration = Duration::from_secs(20);
    const HARD_CAP: Duration = Duration::from_secs(75);

    let stable = upstreams(["s0", "s1"]).await;
    let extra = upstreams(["e0", "e1", "e2"]).await;
    let dynamic = upstreams(["d0", "d1", "d2"]).await;

    // Version i of the config: the stable route (always), a changing subset of extra
    // endpoints behind it, and a changing set of dynamic routes/upstreams.
    let version = |i: usize| -> (String, Vec<usize>) {
        let mut eps: Vec<std::net::SocketAddr> = stable.iter().map(|u| u.addr).collect();
        for (k, e) in extra.iter().enumerate() {
            if (i >> k) & 1 == 1 {
                eps.push(e.addr);
            }
        }
        let mut ups = static_upstream(
            "stable",
            &eps,
            "    health_check: { path: /health, interval: 500ms, timeout: 300ms }\n",
        );
        let mut routes = route("stable", "/stable", "stable");
        let live: Vec<usize> = (0..dynamic.len())
            .filter(|k| !(i + k).is_multiple_of(3))
            .collect();
        for &k in &live {
            ups += &static_upstream(&format!("dyn{k}"), &[dynamic[k].addr], "");
            routes += &route(&format!("dyn{k}"), &format!("/dyn/{k}"), &format!("dyn{k}"));
        }
        // A comment that changes every time, so every version has its own hash.
        (format!("# version {i}\n") + &config(&ups, &routes), live)
    };

    let (v0, live0) = version(0);
    let gw = Arc::new(TestGateway::start(&v0).await);
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Dynamic routes that exist now; the reloader takes the write lock (waiting for
    // requests in flight on them) before removing one.
    let live = Arc::new(tokio::sync::RwLock::new(live0));

    let mut tasks = Vec::new();
    for c in 0..4 {
        let (gw, load, stop) = (gw.clone(), load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = load_client(4);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                load.sent.fetch_add(1, Ordering::Relaxed);
                match http.get(gw.url(&format!("/stable/c{c}/{n}"))).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => load.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("stable body error: {e}");
                            load.conn_errors.fetch_add(1, Ordering::Relaxed)
                        }
                    },
                    Ok(r) => load.bad_status("stable", &r),
                    Err(e) => load.conn_error("stable", &e),
                };
            }
        }));
    }
    for c in 0..2 {
        let (gw, load, stop, live) = (gw.clone(), load.clone(), stop.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            let http = load_client(usize::MAX);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let routes = live.read().await;
                let Some(&k) = routes.get(n % routes.len().max(1)) else {
                    drop(routes);
                    tokio::task::yield_now().await;
                    continue;
                };
                load.sent.fetch_add(1, Ordering::Relaxed);
                load.dyn_sent.fetch_add(1, Ordering::Relaxed);
                match http.get(gw.url(&format!("/dyn/{k}/c{c}"))).send().await {
                    Ok(r)
                        if r.status() == 200
                            && r.headers()
                                .get("x-upstream")
                                .is_some_and(|v| v == format!("d{k}").as_str()) =>
                    {
                        let _ = r.bytes().await;
                        load.ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(r) => load.bad_status(&format!("dyn{k}"), &r),
                    Err(e) => load.conn_error(&format!("dyn{k}"), &e),
                };
                drop(routes);
            }
        }));
    }

    // The reloader: file writes (in place and rename-over), every 10th by SIGHUP right
    // after the write, every 7th by the admin endpoint right after the write.
    let started = Instant::now();
    let reloads_before = metric(
        &gw,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    )
    .await;
    let mut applied = 0usize;
    let (mut by_signal, mut by_admin) = (0usize, 0usize);
    let mut i = 0usize;
    while (applied < MIN_RELOADS || started.elapsed() < MIN_LOAD)
        && applied < MAX_RELOADS
        && started.elapsed() < HARD_CAP
    {
        i += 1;
        let (next, next_live) = version(i);
        // Stop using routes about to disappear (waits for their requests in flight).
        {
            let mut l = live.write().await;
            l.retain(|k| next_live.contains(k));
        }
        let text = fill(&next, gw.port, gw.admin_port);
        if i.is_multiple_of(2) {
            std::fs::write(&gw.config_path, &text).unwrap();
        } else {
            rename_over(&gw.config_path, &text);
        }
        if i.is_multiple_of(10) {
            gw.signal(1);
            by_signal += 1;
        } else if i.is_multiple_of(7) {
            let r = admin_reload(&gw).await;
            assert_eq!(r.status, 200, "{}", r.body);
            by_admin += 1;
        }
        assert!(
            wait_applied(&gw, &next, Duration::from_secs(10)).await,
            "version {i} not applied:\n{}",
            gw.logs()
        );
        applied += 1;
        // Routes that now exist may be used.
        *live.write().await = next_live;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while started.elapsed() < MIN_LOAD {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let m = gw.metrics().await;
    let reloads = metric_value(
        &m,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    )
    .unwrap_or(0.0)
        - reloads_before;
    let refused = metric_value(
        &m,
        "gatehouse_config_reloads_total",
        &[("result", "failure")],
    )
    .unwrap_or(0.0);
    let (sent, ok, bad, conn) = (
        load.sent.load(Ordering::Relaxed),
        load.ok.load(Ordering::Relaxed),
        load.bad_status.load(Ordering::Relaxed),
        load.conn_errors.load(Ordering::Relaxed),
    );
    let extra_hits: Vec<usize> = extra.iter().map(|u| u.hits()).collect();
    println!(
        "LOAD TEST: {sent} requests in {:.1}s ({} on dynamic routes), {ok} ok, {bad} bad status, {conn} connection errors; \
         {applied} config versions applied ({by_signal} by SIGHUP, {by_admin} by POST /admin/reload, the rest by the file watcher), \
         {reloads} successful reloads counted, {refused} refused; extra endpoint hits {extra_hits:?}",
        elapsed.as_secs_f64(),
        load.dyn_sent.load(Ordering::Relaxed),
    );
    assert!(applied >= MIN_RELOADS, "only {applied} reloads");
    assert!(reloads >= MIN_RELOADS as f64);
    assert_eq!(refused, 0.0, "{}", gw.logs());
    assert_eq!((bad, conn), (0, 0), "failed requests during reloads");
    assert_eq!(ok, sent);
    assert!(sent > 1000, "too little load: {sent}");
    assert!(load.dyn_sent.load(Ordering::Relaxed) > 100);
    assert!(
        extra_hits.iter().all(|h| *h > 0),
        "every extra endpoint took traffic while present"
    );
    // In-flight accounting survived every swap: nothing is left counted.
    let idle = async || {
        let ups = admin_json(&gw, "/admin/upstreams").await;
        ups.as_object().unwrap().values().all(|u| {
            u["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["inflight"] == 0)
        })
    };
    assert!(eventually(Duration::from_secs(5), idle).await);
    // A request leaves the gauge in its logging phase, just after its last byte reached the
    // client: under load the last one may still be there for a moment.
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &gw,
            "gatehouse_inflight_requests",
            &[]
        )
        .await
            == 0.0)
        .await,
        "in-flight gauge back to 0"
    );
}
