//! Overload (issue 18): about four times a listener's connection cap in idle sockets,
//! slowloris headers and fast connect-request-close clients, against the real gateway
//! binary with a small `max_connections` and `header_read_timeout`. A keep-alive client
//! keeps being served, the excess is shed (refused at once or cut at the header deadline),
//! and the gateway's RSS and open file descriptors stay bounded and come back afterwards.
//! Prints one `OVERLOAD` summary line.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The listener's connection cap.
const CAP: usize = 64;
/// The listener's `header_read_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Sockets that connect and never send a byte, each reopened when the gateway closes it.
const IDLE: usize = 192;
/// Sockets that send a header one line every 200 ms, reopened when closed.
const SLOWLORIS: usize = 64;
/// Clients that open a connection per request as fast as they can.
const FAST: usize = 4;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(8);
/// What a socket may live beyond the header deadline before the gateway closes it: the
/// timer's granularity and a debug build on two cores busy with this very test.
const SHED_MARGIN: Duration = Duration::from_millis(1500);
/// The normal client's p99 bound under attack (a debug build; it is about 5 ms idle).
const NORMAL_P99: Duration = Duration::from_millis(250);

/// Resident set size (kB) and open file descriptors of process `pid`, from /proc.
fn rss_kb_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// How each attacking connection ended.
#[derive(Default)]
struct Shed {
    /// Lifetimes (connect to the gateway's close) of sockets closed without a byte sent
    /// back: refused at the cap (at once) or cut at the header deadline.
    lifetimes: Mutex<Vec<Duration>>,
    /// Sockets still open when the attack ended although older than the header deadline
    /// plus the margin (the gateway failed to cut them).
    survived: AtomicUsize,
    /// Sockets still open when the attack ended, younger than that (not due yet).
    open_at_end: AtomicUsize,
    /// Connects that failed outright (the kernel's accept queue full).
    connect_failed: AtomicUsize,
    /// Fast clients' answers: 200s, and connections closed without an answer.
    fast_ok: AtomicUsize,
    fast_refused: AtomicUsize,
    /// Bytes a slow or idle socket got back (must be none: no response to half a header).
    answered: AtomicUsize,
}

impl Shed {
    /// Counts a socket still open at the end of the attack, `age` after its connect.
    fn open_at_end(&self, age: Duration) {
        let counter = if age > HEADER_TIMEOUT + SHED_MARGIN {
            &self.survived
        } else {
            &self.open_at_end
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits for the gateway to close `s` (EOF or reset), at most until `stop` plus a grace;
/// returns whether it did, and counts any bytes it sent.
async fn until_closed(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    stop: &AtomicBool,
    shed: &Shed,
) -> bool {
    let mut b = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => {
                shed.answered.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) if stop.load(Ordering::Relaxed) => return false,
            Err(_) => {}
        }
    }
}

/// An attacker's connection (at most 2 s to connect); `None`, counted and after a pause,
/// when the connect failed or timed out.
async fn connect(port: u16, shed: &Shed) -> Option<TcpStream> {
    let connect = TcpStream::connect(("127.0.0.1", port));
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            shed.connect_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// One idle attacker: connect, send nothing, wait to be closed, again.
async fn idle_attacker(port: u16, stop: Arc<AtomicBool>, shed: Arc<Shed>) {
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let Some(mut s) = connect(port, &shed).await else {
            continue;
        };
        if until_closed(&mut s, &stop, &shed).await {
            let lived = t.elapsed();
            shed.lifetimes.lock().unwrap().push(lived);
            // Refused at the cap: come back a little later (bounds this test's own CPU,
            // which it shares with the gateway and the tests running beside it).
            if lived < Duration::from_millis(500) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            shed.open_at_end(t.elapsed());
        }
    }
}

/// One slowloris attacker: a header line every 200 ms, never the blank line.
async fn slow_attacker(port: u16, stop: Arc<AtomicBool>, shed: Arc<Shed>) {
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let Some(s) = connect(port, &shed).await else {
            continue;
        };
        let (mut r, mut w) = s.into_split();
        let writer = async {
            if w.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.is_err() {
                return;
            }
            for i in 0..1000 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stop.load(Ordering::Relaxed)
                    || w.write_all(format!("X-S{i}: 1\r\n").as_bytes())
                        .await
                        .is_err()
                {
                    return;
                }
            }
        };
        let reader = until_closed(&mut r, &stop, &shed);
        // The reader decides: the writer stops at a write error or at the stop.
        let closed = tokio::select! {
            closed = reader => closed,
            () = writer => false,
        };
        if closed {
            let lived = t.elapsed();
            shed.lifetimes.lock().unwrap().push(lived);
            if lived < Duration::from_millis(500) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else if !stop.load(Ordering::Relaxed) {
            // The writer failed first: the gateway closed it (a reset seen on write).
            shed.lifetimes.lock().unwrap().push(t.elapsed());
        } else {
            shed.open_at_end(t.elapsed());
        }
    }
}

/// One fast client: a fresh connection per request, `Connection: close`.
async fn fast_client(port: u16, stop: Arc<AtomicBool>, shed: Arc<Shed>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            shed.connect_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s
            .write_all(b"GET /fast HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        if buf.starts_with(b"HTTP/1.1 200") {
            shed.fast_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            shed.fast_refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn four_times_the_connection_cap_sheds_the_excess_and_serves_a_keep_alive_client() {
    let app = TestUpstream::start("app").await;
    let yaml = format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\", http: {{ max_connections: {CAP}, header_read_timeout: {}ms }} }} ]\n\
         admin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 2 }}\naccess_log: {{ enabled: false }}\n\
         upstreams:\n  app: {{ discovery: {{ static: [ {{ address: \"{}\" }} ] }} }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}\n",
        HEADER_TIMEOUT.as_millis(),
        app.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let pid = gw.pid();

    // The normal client: one keep-alive connection, opened before the attack.
    let normal = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut idle_lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let r = normal.get(gw.url("/normal")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        idle_lat.push(t.elapsed());
    }
    idle_lat.sort();
    let (rss0, fds0) = rss_kb_and_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(Shed::default());
    let mut tasks = Vec::new();
    for _ in 0..IDLE {
        tasks.push(tokio::spawn(idle_attacker(
            gw.port,
            stop.clone(),
            shed.clone(),
        )));
    }
    for _ in 0..SLOWLORIS {
        tasks.push(tokio::spawn(slow_attacker(
            gw.port,
            stop.clone(),
            shed.clone(),
        )));
    }
    for _ in 0..FAST {
        tasks.push(tokio::spawn(fast_client(
            gw.port,
            stop.clone(),
            shed.clone(),
        )));
    }
    // The gateway's footprint, sampled beside the attack.
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut rss, mut fds) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let (r, f) = rss_kb_and_fds(pid);
                (rss, fds) = (rss.max(r), fds.max(f));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (rss, fds)
        })
    };

    // The normal client under attack: one request every 20 ms on its kept connection.
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut failures = Vec::new();
    while started.elapsed() < ATTACK {
        let t = Instant::now();
        match normal.get(gw.url("/normal")).send().await {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
            Ok(r) => failures.push(format!("status {}", r.status())),
            Err(e) => failures.push(format!("{e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (rss_max, fds_max) = sampler.await.unwrap();

    // After: every attacking socket is gone; what the gateway holds comes back.
    let settled = Instant::now();
    let mut after = rss_kb_and_fds(pid);
    // Beyond the baseline only the upstream keep-alive pool may have grown: at most one
    // connection per client served at once (the fast ones and the normal one).
    let fds_after_bound = fds0 + FAST + 1;
    while after.1 > fds_after_bound && settled.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_kb_and_fds(pid);
    }
    let r = normal.get(gw.url("/normal")).send().await.unwrap();
    assert_eq!(r.status(), 200, "served after the attack");

    lat.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mut lifetimes = shed.lifetimes.lock().unwrap().clone();
    lifetimes.sort();
    let at_cap: Vec<Duration> = lifetimes
        .iter()
        .copied()
        .filter(|d| *d < HEADER_TIMEOUT / 2)
        .collect();
    let cut: Vec<Duration> = lifetimes
        .iter()
        .copied()
        .filter(|d| *d >= HEADER_TIMEOUT / 2)
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "OVERLOAD: cap {CAP}, header timeout {}ms; {IDLE} idle + {SLOWLORIS} slowloris + {FAST} fast clients for {}s; \
         keep-alive client: {} requests, {} failed, p50 {:.1}ms p99 {:.1}ms max {:.1}ms (idle gateway: p50 {:.1}ms p99 {:.1}ms); \
         attacking sockets closed: {} refused at the cap (p50 {:.1}ms p99 {:.1}ms after connect), {} cut at the deadline (p50 {:.0}ms max {:.0}ms), {} survived past the deadline, {} younger ones open at the end, {} connects failed, {} bytes answered to them; \
         fast clients: {} answered 200, {} refused; \
         gateway RSS {} kB before, {} kB max during, {} kB after; fds {fds0} before, {fds_max} max during, {} after",
        HEADER_TIMEOUT.as_millis(),
        ATTACK.as_secs(),
        lat.len() + failures.len(),
        failures.len(),
        ms(p(&lat, 0.5)),
        ms(p(&lat, 0.99)),
        ms(*lat.last().unwrap()),
        ms(p(&idle_lat, 0.5)),
        ms(p(&idle_lat, 0.99)),
        at_cap.len(),
        ms(at_cap.get(at_cap.len() / 2).copied().unwrap_or_default()),
        ms(if at_cap.is_empty() { Duration::ZERO } else { p(&at_cap, 0.99) }),
        cut.len(),
        ms(cut.get(cut.len() / 2).copied().unwrap_or_default()),
        ms(cut.last().copied().unwrap_or_default()),
        shed.survived.load(Ordering::Relaxed),
        shed.open_at_end.load(Ordering::Relaxed),
        shed.connect_failed.load(Ordering::Relaxed),
        shed.answered.load(Ordering::Relaxed),
        shed.fast_ok.load(Ordering::Relaxed),
        shed.fast_refused.load(Ordering::Relaxed),
        rss0,
        rss_max,
        after.0,
        after.1,
    );

    assert!(
        failures.is_empty(),
        "the keep-alive client failed: {failures:?}"
    );
    assert!(lat.len() > 100, "too few normal requests: {}", lat.len());
    assert!(
        p(&lat, 0.99) <= NORMAL_P99,
        "keep-alive client p99 {:.1}ms under attack",
        ms(p(&lat, 0.99))
    );
    // Shed quickly: no attacking socket outlived the header deadline by more than the
    // margin, none survived the attack, and half a header got no answer.
    let longest = lifetimes.last().copied().unwrap_or_default();
    assert!(
        longest <= HEADER_TIMEOUT + SHED_MARGIN,
        "a socket held {longest:?}"
    );
    assert_eq!(shed.survived.load(Ordering::Relaxed), 0);
    // Cutting a stalled or idle client is routine, not an error to page on (vendor patch 9):
    // the attack writes no ERROR line.
    let logs = gw.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "{} ERROR lines, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(shed.answered.load(Ordering::Relaxed), 0);
    assert!(
        at_cap.len() > IDLE && cut.len() > CAP,
        "the attack reached the cap and the deadline: {} refused, {} cut",
        at_cap.len(),
        cut.len()
    );
    // Bounded by the cap, not by the attack: the cap's connections, the upstream pool, and
    // the refused sockets between their accept and their close, which on a machine busy
    // with the whole suite were up to about as many again (fds 185 with 39 before).
    assert!(
        fds_max <= fds0 + 3 * CAP,
        "fds {fds0} before, {fds_max} during"
    );
    assert!(
        after.1 <= fds_after_bound,
        "fds {fds0} before, {} after",
        after.1
    );
    assert!(
        rss_max <= rss0 + 64 * 1024,
        "RSS {rss0} kB before, {rss_max} kB during"
    );
}
