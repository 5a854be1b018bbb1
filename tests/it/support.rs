#![allow(dead_code)]
//! Test support: free ports, real upstream HTTP servers that misbehave on command, and
//! the real gateway binary started from a YAML string.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// A port that was free a moment ago and that no other test of this process got.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no free port found");
}

/// What a test upstream does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a JSON echo of the request.
    Echo,
    /// This status with a JSON body.
    Status(u16),
    /// Sleeps this many ms, then echoes.
    Sleep(u64),
    /// Closes the connection without answering.
    Drop,
}

/// Shared state of a test upstream.
pub struct UpstreamState {
    /// Requests received.
    pub hits: AtomicUsize,
    /// Current behaviour.
    pub mode: Mutex<Mode>,
    /// Behaviour of `/health`.
    pub health: Mutex<u16>,
    /// Name echoed in responses (`x-upstream` header and body).
    pub name: String,
    /// Largest request body seen, and total body bytes.
    pub body_bytes: AtomicU64,
    /// Recorded request headers of the last request.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Recorded path (with query) of the last request.
    pub last_path: Mutex<String>,
}

/// A real HTTP/1.1 upstream on 127.0.0.1.
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(st): State<Arc<UpstreamState>>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if req.uri().path() == "/metrics" {
        let body = format!(
            "gatehouse_service_db_pool_connections{{service=\"{0}\",state=\"in_use\"}} 3\n\
             gatehouse_service_db_pool_connections{{service=\"{0}\",state=\"idle\"}} 5\n\
             gatehouse_service_db_pool_connections{{service=\"{0}\",state=\"max\"}} 10\n",
            st.name
        );
        return (StatusCode::OK, body).into_response();
    }
    if req.uri().path() == "/health" {
        let code = *st.health.lock().unwrap();
        return (StatusCode::from_u16(code).unwrap(), "health").into_response();
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    *st.last_path.lock().unwrap() = path.clone();
    *st.last_headers.lock().unwrap() = Some(req.headers().clone());
    let method = req.method().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let mode = *st.mode.lock().unwrap();
    // Stream the body in, counting bytes, without keeping it.
    let mut body = req.into_body().into_data_stream();
    let mut n = 0u64;
    use futures_util::StreamExt;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => break,
        }
    }
    st.body_bytes.fetch_add(n, Ordering::SeqCst);
    let echo = serde_json::json!({"upstream": st.name, "method": method, "path": path, "headers": headers, "body_bytes": n});
    let ok = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-upstream", st.name.as_str())
            .body(Body::from(echo.to_string()))
            .unwrap()
    };
    match mode {
        Mode::Echo => ok(StatusCode::OK),
        Mode::Status(s) => ok(StatusCode::from_u16(s).unwrap()),
        Mode::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ok(StatusCode::OK)
        }
        Mode::Drop => {
            // Returning an error from a body stream makes hyper abort the connection.
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("drop"))
            });
            Response::builder()
                .status(200)
                .header("content-length", "100")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

impl TestUpstream {
    /// Starts an echo upstream named `name`.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0").await
    }

    /// Starts one on a given address (to bring a "dead" one back on its old port).
    pub async fn start_on(name: &str, addr: &str) -> Self {
        let state = Arc::new(UpstreamState {
            hits: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Echo),
            health: Mutex::new(200),
            name: name.to_string(),
            body_bytes: AtomicU64::new(0),
            last_headers: Mutex::new(None),
            last_path: Mutex::new(String::new()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// Sets the behaviour.
    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Sets the status `/health` answers with.
    pub fn set_health(&self, status: u16) {
        *self.state.health.lock().unwrap() = status;
    }

    /// Requests received (excluding /health).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Headers of the last request.
    pub fn last_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }

    /// Path and query of the last request.
    pub fn last_path(&self) -> String {
        self.state.last_path.lock().unwrap().clone()
    }
}

/// A TCP listener that accepts connections and never answers (a black hole).
pub async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// The real gateway binary, started from YAML.
pub struct TestGateway {
    /// Proxy port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// The config file it watches.
    pub config_path: PathBuf,
    /// Its stdout/stderr log file.
    pub log_path: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills `{listen}` and `{admin}` in a YAML template.
pub fn fill(template: &str, port: u16, admin_port: u16) -> String {
    template
        .replace("{listen}", &format!("127.0.0.1:{port}"))
        .replace("{admin}", &format!("127.0.0.1:{admin_port}"))
}

impl TestGateway {
    /// Starts the gateway with `yaml` (with `{listen}` and `{admin}` placeholders) and
    /// waits until /readyz answers. Panics with the log when it does not start.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_env(yaml, &[]).await
    }

    /// Same, with extra environment variables.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let config_path = dir.path().join("gatehouse.yaml");
        std::fs::write(&config_path, fill(yaml, port, admin_port)).unwrap();
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env("GATEHOUSE_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut gw = TestGateway {
            port,
            admin_port,
            config_path,
            log_path,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    // The proxy listener starts beside the admin one; wait for it too.
                    if tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                        .await
                        .is_ok()
                    {
                        return gw;
                    }
                }
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", gw.logs());
            }
            if Instant::now() > deadline {
                panic!("gateway did not become ready:\n{}", gw.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// URL on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes a new config (placeholders filled with this gateway's ports).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, fill(yaml, self.port, self.admin_port)).unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the gateway.
    pub fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill is a plain syscall wrapper.
        let rc = unsafe_free_kill(self.child.id() as i32, sig);
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The current config hash the gateway reports.
    pub async fn config_hash(&self) -> String {
        let v: serde_json::Value = client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["config_hash"].as_str().unwrap_or_default().to_string()
    }

    /// Scrapes /metrics until `ready(text)` holds (requests are counted in the logging
    /// phase, just after the client got its answer), at most 3 s; returns the last scrape.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = self.metrics().await;
            if ready(&text) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// `kill(2)` through the `kill` command, so the test crate needs no unsafe code.
fn unsafe_free_kill(pid: i32, sig: i32) -> i32 {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    if status.success() {
        0
    } else {
        1
    }
}

/// GETs a JSON document from the gateway's admin listener.
pub async fn admin_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    client()
        .get(gw.admin_url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A shared HTTP client without proxies.
pub fn client() -> reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    })
    .clone()
}

/// The value of one sample line of a metric with all the given labels, if present.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
