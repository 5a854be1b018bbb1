//! Real HTTP upstreams on 127.0.0.1 that echo each request as JSON (with its HTTP
//! version), record what they received, and misbehave on command (a status, a delay, a dropped connection), plus a
//! black hole that accepts connections and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

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
    let version = format!("{:?}", req.version());
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
    let echo = serde_json::json!({"upstream": st.name, "method": method, "path": path, "version": version, "headers": headers, "body_bytes": n});
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
        Self::start_served(name, addr, |listener, app| async move {
            let _ = axum::serve(listener, app).await;
        })
        .await
    }

    /// Starts one on `addr` whose listener and app are served by `serve` (over TLS, say):
    /// the same echo, modes and records as [`TestUpstream::start`].
    pub async fn start_served<F, Fut>(name: &str, addr: &str, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, axum::Router) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
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
        let task = tokio::spawn(serve(listener, app));
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

/// Serves a tonic router (HTTP/2 only, as gRPC servers are) on a fresh loopback port;
/// returns its address and the serving task.
pub async fn grpc_server(
    router: tonic::transport::server::Router,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        router.serve_with_incoming(incoming).await.unwrap();
    });
    (addr, task)
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

/// Reads from `sock` until a request head's blank line (the body, if any, is left unread).
/// `None`: the socket closed or failed first, or 64 KiB came without the blank line.
pub async fn read_request_head(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= 65536 {
            return None;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// A hand-written HTTP/1.1 server on 127.0.0.1, for answers a framework would not send as
/// they are (chunked trailers, exact header bytes): on each connection it reads the request
/// head, writes what `answer` returns at that moment, and closes the connection.
pub async fn raw_upstream(
    answer: impl Fn() -> String + Send + Sync + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                if read_request_head(&mut sock).await.is_none() {
                    return;
                }
                let _ = sock.write_all(answer().as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, task)
}
