//! Deploying: startup that binds every listener or exits with one line, the probe
//! listener apart from the admin API, `gatehouse health`, zero-downtime binary upgrades
//! under continuous traffic, and static checks of the Dockerfile, the systemd unit's
//! companions and the Kubernetes manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    admin_status, client, eventually, fill, free_port, output_of, validate, Mode, TestGateway,
    TestUpstream,
};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the gateway on `yaml` and waits for it to exit (at most 20 s); returns its exit
/// code and stderr.
fn run_until_exit(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gatehouse.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway kept running with a listener it could not bind");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const MINIMAL: &str = "listeners:\n  - { name: public, address: \"{listen}\" }\n\
admin: { address: \"{admin}\" }\n\
upstreams:\n  app: { discovery: { static: [ { address: \"127.0.0.1:9\" } ] } }\n\
routes:\n  - { name: all, match: { path_prefix: / }, upstream: app }\n";

#[test]
fn a_taken_proxy_port_ends_the_process_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, stderr) = run_until_exit(&fill(MINIMAL, port, free_port()));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    let want = format!("error: listener \"public\" cannot bind 127.0.0.1:{port}: address in use");
    assert_eq!(stderr.trim_end(), want, "exactly one line on stderr");
}

#[test]
fn a_taken_admin_port_ends_the_process_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().port();
    let (code, stderr) = run_until_exit(&fill(MINIMAL, free_port(), admin));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    let want = format!("error: listener \"admin\" cannot bind 127.0.0.1:{admin}: address in use");
    assert_eq!(stderr.trim_end(), want);
}

#[test]
fn a_taken_probe_port_ends_the_process_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = taken.local_addr().unwrap().port();
    let yaml = fill(MINIMAL, free_port(), free_port()).replace(
        "admin: { address: \"",
        &format!("admin: {{ probe_address: \"127.0.0.1:{probe}\", address: \""),
    );
    let (code, stderr) = run_until_exit(&yaml);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("error: listener \"probe\" cannot bind 127.0.0.1:{probe}: address in use")
    );
}

/// MINIMAL with a probe listener on `probe`.
fn with_probe(probe: u16) -> String {
    MINIMAL.replace(
        "admin: { address: \"{admin}\" }",
        &format!("admin: {{ address: \"{{admin}}\", probe_address: \"127.0.0.1:{probe}\" }}"),
    )
}

#[tokio::test]
async fn the_probe_listener_serves_probes_and_metrics_but_not_the_admin_api() {
    let probe = free_port();
    let gw = TestGateway::start(&with_probe(probe)).await;
    let at = |p: &str| format!("http://127.0.0.1:{probe}{p}");
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let r = c.get(at(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} on the probe listener");
    }
    let metrics = c.get(at("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("gatehouse_build_info"));
    let ready = crate::support::get_json(&at("/readyz")).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["pid"], gw.pid());
    // Mutating endpoints and the dashboard stay on the admin listener.
    for (method, path) in [
        ("POST", "/admin/reload"),
        ("GET", "/"),
        ("GET", "/admin/config"),
    ] {
        let r = c
            .request(method.parse().unwrap(), at(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "{method} {path} must not exist on the probe listener"
        );
    }
    let reload = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(
        reload.status(),
        200,
        "the admin listener keeps the admin API"
    );
}

#[tokio::test]
async fn readyz_stops_saying_ready_while_draining() {
    let slow = TestUpstream::start("slow").await;
    slow.set_mode(Mode::Sleep(3000));
    let yaml = format!(
        "listeners:\n  - {{ name: public, address: \"{{listen}}\" }}\n\
         admin: {{ address: \"{{admin}}\" }}\nshutdown: {{ grace_period: 20s }}\n\
         upstreams:\n  app: {{ discovery: {{ static: [ {{ address: \"{}\" }} ] }} }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: app }}\n",
        slow.addr
    );
    let mut gw = TestGateway::start(&yaml).await;
    assert_eq!(admin_status(&gw, "/readyz").await, 200);
    let in_flight = tokio::spawn(client().get(gw.url("/slow")).send());
    assert!(eventually(Duration::from_secs(5), async || slow.hits() == 1).await);
    gw.signal(15);
    // While the long request drains, /readyz must not say ready: pingora stops every
    // listener at once, so the admin listener answers 503 "draining" or no longer accepts.
    let admin = gw.admin_url("/readyz");
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(5), async || {
            seen = match client().get(&admin).send().await {
                Ok(r) if r.status() == 200 => None,
                Ok(r) => Some(r.status().as_u16().to_string()),
                Err(_) => Some("refused".to_string()),
            };
            seen.is_some()
        })
        .await,
        "/readyz still says ready while draining"
    );
    assert!(
        !in_flight.is_finished(),
        "checked while the request was in flight"
    );
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200, "the in-flight request completes");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exits once drained");
    assert!(status.success());
}

#[tokio::test]
async fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut gw =
        TestGateway::start_with_env(MINIMAL, &[("NOTIFY_SOCKET", path.to_str().unwrap())]).await;
    assert_eq!(next(), format!("MAINPID={}\nREADY=1\n", gw.pid()));
    gw.signal(1);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1\n");
    gw.signal(15);
    assert_eq!(next(), "STOPPING=1\n");
    assert!(gw.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[tokio::test]
async fn health_command_exits_0_only_on_a_2xx_answer() {
    let probe = free_port();
    let _gw = TestGateway::start(&with_probe(probe)).await;
    let health = |url: String| {
        let (code, _, stderr) = output_of(Command::new(BIN).args(["health", "--url"]).arg(&url));
        (code, stderr)
    };
    assert_eq!(
        health(format!("http://127.0.0.1:{probe}/readyz")).0,
        Some(0)
    );
    let (code, err) = health(format!("http://127.0.0.1:{probe}/nope"));
    assert_eq!(code, Some(1));
    assert!(err.contains("answered 404"), "{err}");
    let closed = free_port();
    let (code, err) = health(format!("http://127.0.0.1:{closed}/readyz"));
    assert_eq!(code, Some(1));
    assert!(err.contains("refused"), "{err}");
}

// === zero-downtime binary upgrade ===

/// What the traffic saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    /// Requests re-sent on a fresh connection because a reused keep-alive connection
    /// closed before any byte of the answer (RFC 9112 §9.3.1 lets a client retry an
    /// idempotent request then); each is also counted in `sent` only once.
    keepalive_retries: AtomicU64,
    /// Requests re-sent because a fresh connection closed before any byte of the answer.
    fresh_retries: AtomicU64,
    reconnects: AtomicU64,
    /// What went wrong, for the report (first few).
    reasons: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut r = self.reasons.lock().unwrap();
        if r.len() < 10 {
            r.push(why);
        }
    }
}

/// Writes `request` and reads its response (see [`read_response`]).
async fn exchange(s: &mut TcpStream, request: &[u8]) -> std::io::Result<Option<(u16, bool)>> {
    s.write_all(request).await?;
    read_response(s).await
}

/// Reads one HTTP/1.1 response with a Content-Length body; `Ok(None)` when the peer
/// closed before the first byte. Returns the status and whether the server asked to close.
async fn read_response(s: &mut TcpStream) -> std::io::Result<Option<(u16, bool)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::other("closed inside the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    let mut have = buf.len() - head_end;
    while have < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed inside the body"));
        }
        have += n;
    }
    Ok(Some((status, close)))
}

const REQUEST: &[u8] = b"GET /fast HTTP/1.1\r\nHost: gw\r\n\r\n";

/// One keep-alive client: requests back to back on one connection, a new connection when
/// the server asks to close.
async fn keepalive_worker(port: u16, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut conn: Option<TcpStream> = None;
    for _ in 0..200_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        t.sent.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0;
        loop {
            let reused = conn.is_some();
            let mut s = match conn.take() {
                Some(s) => s,
                None => match TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => {
                        t.reconnects.fetch_add(1, Ordering::Relaxed);
                        s
                    }
                    Err(_) => {
                        t.refused.fetch_add(1, Ordering::Relaxed);
                        t.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
            };
            match exchange(&mut s, REQUEST).await {
                Ok(Some((200, close))) => {
                    t.ok.fetch_add(1, Ordering::Relaxed);
                    if !close {
                        conn = Some(s);
                    }
                    break;
                }
                // A reused connection closed (or reset) before any byte of the answer:
                // the server closed it while idle. Retry once on a fresh connection.
                Ok(None) | Err(_) if reused && attempt == 0 => {
                    t.keepalive_retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                }
                other => {
                    t.fail(format!("keep-alive (reused: {reused}): {other:?}"));
                    break;
                }
            }
        }
    }
}

/// One client that opens a new connection for every request.
async fn fresh_worker(port: u16, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    for _ in 0..200_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        t.sent.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..2 {
            let mut s = match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => s,
                Err(_) => {
                    t.refused.fetch_add(1, Ordering::Relaxed);
                    t.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            let req = b"GET /fast HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
            match exchange(&mut s, req).await {
                Ok(Some((200, _))) => {
                    t.ok.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Closed before any byte of the answer: the old process stopped before
                // this connection's request arrived. RFC 9112 §9.3.1 lets a client
                // retransmit an idempotent request then; counted and reported.
                Ok(None) if attempt == 0 => {
                    t.fresh_retries.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    t.fail(format!("fresh connection: {other:?}"));
                    break;
                }
            }
        }
    }
}

/// Whether a process is gone (or a zombie nobody reaps yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Kills every pid it holds when dropped, so a failing test leaves no gateway behind.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            if !gone(*pid) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// The pid that answers /readyz with 200 on `admin` (None while none does).
async fn ready_pid(admin: u16) -> Option<u64> {
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json::<serde_json::Value>().await.ok()?["pid"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_binary_upgrades_under_traffic_lose_nothing() {
    let fast = TestUpstream::start("fast").await;
    let slow = TestUpstream::start("slow").await;
    const SLOW_MS: u64 = 4000;
    slow.set_mode(Mode::Sleep(SLOW_MS));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let sock = dir.path().join("upgrade.sock");
    let cfg = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:{port}\" }}\n\
             admin: {{ address: \"127.0.0.1:{admin}\" }}\n\
             shutdown: {{ grace_period: 30s, upgrade_socket: \"{}\" }}\n\
             upstreams:\n  fast: {{ discovery: {{ static: [ {{ address: \"{}\" }} ] }} }}\n\
             \x20 slow: {{ discovery: {{ static: [ {{ address: \"{}\" }} ] }}, timeouts: {{ read: 20s, total: 30s }} }}\n\
             routes:\n  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}\n\
             \x20 - {{ name: fast, match: {{ path_prefix: / }}, upstream: fast }}\n",
            sock.display(),
            fast.addr,
            slow.addr
        ),
    )
    .unwrap();
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = |upgrade: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.arg("-c")
            .arg(&cfg)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log.try_clone().unwrap()))
            .spawn()
            .unwrap()
    };
    let mut first = start(false);
    let mut reaper = Reaper(vec![first.id()]);
    assert!(
        eventually(Duration::from_secs(20), async || ready_pid(admin).await
            == Some(first.id() as u64))
        .await,
        "the first gateway did not become ready:\n{}",
        logs()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for i in 0..8 {
        let (stop, t) = (stop.clone(), tally.clone());
        workers.push(if i % 2 == 0 {
            tokio::spawn(keepalive_worker(port, stop, t))
        } else {
            tokio::spawn(fresh_worker(port, stop, t))
        });
    }

    let mut current = first.id();
    let mut longest = Duration::ZERO;
    let mut slow_done = 0;
    let mut others = Vec::new();
    for round in 0..3 {
        // Long requests in flight on the running process when the upgrade starts.
        let before = slow.hits();
        let long: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = client()
                        .get(format!("http://127.0.0.1:{port}/slow"))
                        .send()
                        .await;
                    (r.map(|r| r.status().as_u16()), t0.elapsed())
                })
            })
            .collect();
        assert!(
            eventually(Duration::from_secs(10), async || slow.hits() >= before + 3).await,
            "the long requests did not reach the upstream"
        );
        // Round 1 takes the manual path (`run --upgrade`, then SIGQUIT); the others
        // SIGUSR2, which does both from inside the running process.
        if round == 1 {
            let _ = std::fs::remove_file(&sock);
            let next = start(true);
            reaper.0.push(next.id());
            assert!(
                eventually(Duration::from_secs(20), async || sock.exists()).await,
                "the new process never waited on the upgrade socket:\n{}",
                logs()
            );
            let ok = Command::new("kill")
                .args(["-QUIT", &current.to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            others.push(next);
        } else {
            let ok = Command::new("kill")
                .args(["-USR2", &current.to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let old = current;
        let mut new = None;
        assert!(
            eventually(Duration::from_secs(30), async || {
                new = ready_pid(admin).await.filter(|p| *p != old as u64);
                new.is_some()
            })
            .await,
            "no new process became ready in upgrade {round}:\n{}",
            logs()
        );
        current = new.unwrap() as u32;
        reaper.0.push(current);
        for l in long {
            let (status, took) = l.await.unwrap();
            assert_eq!(
                status.ok(),
                Some(200),
                "a long request in flight across upgrade {round}"
            );
            longest = longest.max(took);
            slow_done += 1;
        }
        assert!(
            eventually(Duration::from_secs(40), async || gone(old)).await,
            "the old process {old} did not exit after draining:\n{}",
            logs()
        );
    }
    // Traffic on the last process for a moment, then stop and count.
    let settle = tally.ok.load(Ordering::Relaxed) + 200;
    assert!(
        eventually(Duration::from_secs(20), async || tally
            .ok
            .load(Ordering::Relaxed)
            >= settle)
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &current.to_string()])
        .status();
    assert!(eventually(Duration::from_secs(20), async || gone(current)).await);
    assert!(
        first.wait().unwrap().success(),
        "the first process exits 0 after its upgrade"
    );
    for mut o in others {
        let _ = o.wait();
    }

    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let report = format!(
        "upgrades: 3, requests sent: {}, ok: {}, failed: {}, refused connections: {}, \
         keep-alive retries: {}, fresh-connection retries: {}, keep-alive connections opened: {}, long requests completed across an upgrade: {slow_done}, \
         longest: {:.2} s, failures: {:?}",
        get(&tally.sent),
        get(&tally.ok),
        get(&tally.failed),
        get(&tally.refused),
        get(&tally.keepalive_retries),
        get(&tally.fresh_retries),
        get(&tally.reconnects),
        longest.as_secs_f64(),
        tally.reasons.lock().unwrap()
    );
    println!("{report}");
    assert_eq!(get(&tally.failed), 0, "{report}\n{}", logs());
    assert_eq!(get(&tally.refused), 0, "{report}");
    assert_eq!(get(&tally.sent), get(&tally.ok), "{report}");
    assert!(
        get(&tally.sent) > 1000,
        "traffic ran through the upgrades: {report}"
    );
    assert_eq!(slow_done, 9);
    assert!(longest >= Duration::from_millis(SLOW_MS), "{report}");
}

// === static checks of the container, the unit's companions and the manifests ===

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

fn json_args(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|_| panic!("not exec form: {s}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

#[test]
fn dockerfile_works_as_written() {
    let ins = dockerfile();
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    let build = &ins[froms[0]..froms[1]];
    let runtime = &ins[froms[1]..];

    // Every COPY from the build context names a file or directory that exists.
    let mut copied_to = std::collections::HashMap::new();
    for (op, rest) in &ins {
        if op != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for src in sources {
            assert!(repo(src).exists(), "COPY source {src} does not exist");
            copied_to.insert(dest.to_string(), src.to_string());
        }
    }

    // The runtime stage copies the binary the build stage installs.
    let bin = "/usr/local/bin/gatehouse";
    assert!(runtime
        .iter()
        .any(|(op, r)| op == "COPY" && r == &format!("--from=build {bin} {bin}")));
    assert!(build
        .iter()
        .any(|(op, r)| op == "RUN" && r.contains(&format!("cp target/release/gatehouse {bin}"))));
    let entry = runtime.iter().find(|(op, _)| op == "ENTRYPOINT").unwrap();
    assert_eq!(json_args(&entry.1), vec![bin.to_string()]);

    // A non-root user.
    let user = &runtime
        .iter()
        .rfind(|(op, _)| op == "USER")
        .expect("a USER")
        .1;
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as {user}"
    );

    // The CMD's config is the file the image copies, and it validates.
    let cmd = json_args(&runtime.iter().find(|(op, _)| op == "CMD").unwrap().1);
    assert_eq!(cmd[..2], ["run".to_string(), "-c".to_string()]);
    let source = copied_to
        .get(&cmd[2])
        .unwrap_or_else(|| panic!("nothing is copied to {}", cmd[2]));
    let out = validate(&repo(source));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(repo(source)).unwrap();

    // EXPOSE matches the listeners reachable from outside: every 0.0.0.0 address of the
    // default config (proxy and probe), and nothing on loopback.
    let exposed: std::collections::BTreeSet<u16> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, r)| {
            r.split_whitespace()
                .map(|p| p.parse::<u16>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let public: std::collections::BTreeSet<u16> = config
        .split(['{', '}', ',', '\n'])
        .filter_map(|f| {
            f.trim()
                .strip_prefix("address:")
                .or(f.trim().strip_prefix("probe_address:"))
        })
        .map(str::trim)
        .filter(|a| a.trim_matches('"').starts_with("0.0.0.0:"))
        .map(port_of)
        .collect();
    assert!(
        public.len() >= 2,
        "the proxy and the probe listener listen on 0.0.0.0: {public:?}"
    );
    assert_eq!(exposed, public);
    assert!(
        config.contains("address: 127.0.0.1:9901"),
        "the admin API stays on loopback"
    );

    // The health check runs the gateway's own probe against the probe listener.
    let hc = &runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .unwrap()
        .1;
    let hc_cmd = json_args(hc.split_once("CMD ").unwrap().1.trim());
    assert_eq!(
        hc_cmd[..3],
        [bin.to_string(), "health".into(), "--url".into()]
    );
    let probe_port = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("probe_address:"))
        .map(port_of)
        .unwrap();
    assert_eq!(hc_cmd[3], format!("http://127.0.0.1:{probe_port}/readyz"));
    let help = Command::new(BIN)
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "the image's binary has the health command"
    );

    // The runtime libraries the binary links are in the runtime image: debian-slim
    // brings glibc (libc, libm) and libgcc_s; anything else must be installed there.
    let ldd = Command::new("ldd").arg(BIN).output().unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout);
    let installed = runtime
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for lib in libs.lines().filter_map(|l| l.split_whitespace().next()) {
        let base = [
            "linux-vdso",
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "ld-linux",
            "/lib64/ld-linux",
        ];
        if base.iter().any(|b| lib.starts_with(b)) {
            continue;
        }
        let pkg = match lib {
            l if l.starts_with("libssl") || l.starts_with("libcrypto") => "libssl3",
            other => panic!("the binary links {other}, which the runtime stage does not install"),
        };
        assert!(
            installed.contains(pkg),
            "{lib} needs {pkg} in the runtime stage"
        );
    }
}

#[test]
fn the_kubernetes_configmap_config_validates_and_probes_use_the_probe_listener() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/gatehouse.yaml")).unwrap();
    let start = text.find("  gatehouse.yaml: |\n").unwrap() + "  gatehouse.yaml: |\n".len();
    let block: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gatehouse.yaml");
    std::fs::write(&cfg, &block).unwrap();
    let out = validate(&cfg);
    assert!(
        out.status.success(),
        "{}\n{block}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe_port = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("probe_address:"))
        .map(port_of)
        .unwrap();
    assert!(text.contains(&format!("{{ name: probe, containerPort: {probe_port} }}")));
    assert!(text.contains("httpGet: { path: /readyz, port: probe }"));
    assert!(text.contains("httpGet: { path: /healthz, port: probe }"));
}

#[test]
fn the_systemd_unit_runs_what_exists() {
    let unit = std::fs::read_to_string(repo("deploy/gatehouse.service")).unwrap();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("Type"), Some("notify"));
    assert_eq!(
        get("NotifyAccess"),
        Some("all"),
        "the upgraded process sends MAINPID"
    );
    assert_eq!(get("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    for key in [
        "LimitNOFILE",
        "AmbientCapabilities",
        "NoNewPrivileges",
        "ProtectSystem",
        "ReadWritePaths",
    ] {
        assert!(get(key).is_some(), "{key} is set");
    }
    // The commands it runs exist in the binary: validate and run -c.
    let pre = get("ExecStartPre").unwrap();
    assert!(pre.starts_with("/usr/local/bin/gatehouse validate -c "));
    let out = validate(&repo("config/gatehouse.yaml"));
    assert!(out.status.success());
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--upgrade"));
}
