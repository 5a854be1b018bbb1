//! Raw HTTP/1 on loopback for the edge and smuggling suites: an upstream that records
//! exactly what arrived on each of its connections (answering with a `Content-Length` or a
//! chunked body), and a client that writes exact bytes and parses exact responses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === recording upstream ===

/// How the recording upstream answers each complete request it parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `HTTP/1.1 200` with a 2-byte body; the connection stays open.
    Ok11,
    /// `HTTP/1.0 200` with `Content-Length` and `Connection: keep-alive`.
    Ok10,
    /// `HEAD`: `200` without `Content-Length`, then the connection is closed at once.
    /// Other methods: `Ok11`.
    HeadThenClose,
    /// `Ok11`, then the connection is closed (FIN) [`FIN_DELAY`] after the answer.
    OkThenFin,
    /// `HTTP/1.1 200` with a chunked body (`ok` in one chunk); the connection stays open.
    Chunked11,
}

/// How long [`Answer::OkThenFin`] keeps a connection after its answer.
pub const FIN_DELAY: Duration = Duration::from_millis(200);

/// One request the upstream parsed: its head as text, its decoded body, and the field lines
/// of a chunked body's trailer section (RFC 9112 §7.1.2), in order.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub head: String,
    pub body: Vec<u8>,
    pub trailers: Vec<String>,
}

impl Recorded {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    /// Every value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name).collect()
    }
}

/// The values of header `name` (case-insensitive) in a message head, in order, trimmed.
fn header_values<'a>(head: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// What arrived on one upstream connection.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub bytes: Vec<u8>,
    pub requests: Vec<Recorded>,
    /// Bytes after the last parsed request that do not form (the start of) a request.
    pub garbage: bool,
    /// The gateway closed this connection.
    pub eof: bool,
}

/// A raw HTTP/1.1 server on 127.0.0.1 that stores every byte per connection.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Conn>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let idx = {
                    let mut all = c.lock().unwrap();
                    all.push(Conn::default());
                    all.len() - 1
                };
                tokio::spawn(serve_conn(sock, idx, c.clone(), answer));
            }
        });
        Self { addr, conns, task }
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.conns().into_iter().flat_map(|c| c.requests).collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.conns().iter().map(|c| c.bytes.len()).sum()
    }
}

pub async fn serve_conn(
    mut sock: TcpStream,
    idx: usize,
    conns: Arc<Mutex<Vec<Conn>>>,
    answer: Answer,
) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            conns.lock().unwrap()[idx].eof = true;
            return;
        }
        conns.lock().unwrap()[idx]
            .bytes
            .extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        loop {
            match parse_request(&pending) {
                Parsed::Complete(rec, used) => {
                    pending.drain(..used);
                    let head = rec.head.clone();
                    conns.lock().unwrap()[idx].requests.push(rec);
                    let is_head = head.starts_with("HEAD ");
                    let (resp, close): (&[u8], bool) = match answer {
                        Answer::Ok10 => (
                            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
                            false,
                        ),
                        Answer::HeadThenClose if is_head => (b"HTTP/1.1 200 OK\r\n\r\n", true),
                        _ if is_head => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false),
                        Answer::Chunked11 => (
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                            false,
                        ),
                        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
                    };
                    if sock.write_all(resp).await.is_err() {
                        return;
                    }
                    if close {
                        conns.lock().unwrap()[idx].eof = true;
                        return;
                    }
                    if answer == Answer::OkThenFin {
                        tokio::time::sleep(FIN_DELAY).await;
                        return; // dropping the socket sends FIN
                    }
                }
                Parsed::Partial => break,
                Parsed::Invalid => {
                    conns.lock().unwrap()[idx].garbage = true;
                    break;
                }
            }
        }
    }
}

pub enum Parsed {
    Complete(Recorded, usize),
    Partial,
    Invalid,
}

/// A strict RFC 9112 request parser: CRLF lines, one framing header, chunked per §7.1.
pub fn parse_request(b: &[u8]) -> Parsed {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = &b[..end];
    if head.iter().any(|&c| c == 0 || c >= 0x80) {
        return Parsed::Invalid;
    }
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Parsed::Invalid;
    }
    let (mut cl, mut te) = (Vec::new(), Vec::new());
    for l in lines {
        if l.contains('\r') || l.contains('\n') || l.starts_with(' ') || l.starts_with('\t') {
            return Parsed::Invalid;
        }
        let Some((n, v)) = l.split_once(':') else {
            return Parsed::Invalid;
        };
        if n.is_empty() || n.ends_with(' ') {
            return Parsed::Invalid;
        }
        if n.eq_ignore_ascii_case("content-length") {
            cl.push(v.trim().to_string());
        }
        if n.eq_ignore_ascii_case("transfer-encoding") {
            te.push(v.trim().to_ascii_lowercase());
        }
    }
    let body_start = end + 4;
    let rest = &b[body_start..];
    if !cl.is_empty() && !te.is_empty() || cl.len() > 1 || te.len() > 1 {
        return Parsed::Invalid;
    }
    if let Some(te) = te.first() {
        if te != "chunked" {
            return Parsed::Invalid;
        }
        let mut pos = 0;
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        loop {
            let Some(le) = rest[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Parsed::Partial;
            };
            let size_s = String::from_utf8_lossy(&rest[pos..pos + le]).into_owned();
            let Ok(size) = usize::from_str_radix(size_s.split(';').next().unwrap_or(""), 16) else {
                return Parsed::Invalid;
            };
            pos += le + 2;
            if size == 0 {
                // The trailer section: field lines up to an empty line.
                loop {
                    let Some(le) = rest[pos..].windows(2).position(|w| w == b"\r\n") else {
                        return Parsed::Partial;
                    };
                    let line = String::from_utf8_lossy(&rest[pos..pos + le]).into_owned();
                    pos += le + 2;
                    if line.is_empty() {
                        break;
                    }
                    if !line.contains(':') || line.contains('\r') || line.contains('\n') {
                        return Parsed::Invalid;
                    }
                    trailers.push(line);
                }
                break;
            }
            if rest.len() < pos + size + 2 {
                return Parsed::Partial;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            if &rest[pos + size..pos + size + 2] != b"\r\n" {
                return Parsed::Invalid;
            }
            pos += size + 2;
        }
        return Parsed::Complete(
            Recorded {
                head,
                body,
                trailers,
            },
            body_start + pos,
        );
    }
    let len = match cl.first() {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if v.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => return Parsed::Invalid,
        },
        None => 0,
    };
    if rest.len() < len {
        return Parsed::Partial;
    }
    Parsed::Complete(
        Recorded {
            head,
            body: rest[..len].to_vec(),
            trailers: Vec::new(),
        },
        body_start + len,
    )
}

// === raw client ===

/// One response as the client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub version: String,
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        header_values(&self.head, name).next()
    }
}

/// A raw client connection.
pub struct Raw {
    pub sock: TcpStream,
    pub buf: Vec<u8>,
    pub eof: bool,
}

impl Raw {
    pub async fn connect(port: u16) -> Self {
        let sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Self {
            sock,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The gateway may already have closed (it refused the request): that is an answer.
        let _ = self.sock.write_all(bytes).await;
    }

    /// Reads more bytes; false on EOF, error or `idle` without a byte.
    pub async fn fill(&mut self, idle: Duration) -> bool {
        let mut b = [0u8; 16384];
        match tokio::time::timeout(idle, self.sock.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(_) => false,
        }
    }

    /// The next response (1xx included), or None if the connection ended or stayed quiet
    /// for `idle` first.
    pub async fn response(&mut self, idle: Duration) -> Option<Resp> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((r, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            if self.eof || Instant::now() > deadline || !self.fill(idle).await {
                return None;
            }
        }
    }

    /// The next response, waited for up to a generous 10 s (no timing asserted); panics
    /// saying `what` was expected when none comes.
    pub async fn expect_response(&mut self, what: &str) -> Resp {
        let r = self.response(Duration::from_secs(10)).await;
        r.unwrap_or_else(|| panic!("expected {what}"))
    }

    /// The next response's status, waited for up to a generous 10 s; `None` when none
    /// comes.
    pub async fn next_status(&mut self) -> Option<u16> {
        self.response(Duration::from_secs(10))
            .await
            .map(|r| r.status)
    }

    /// Every response until the connection ends or is quiet for `idle`.
    pub async fn responses(&mut self, idle: Duration) -> Vec<Resp> {
        let mut out = Vec::new();
        for _ in 0..16 {
            match self.response(idle).await {
                Some(r) => out.push(r),
                None => break,
            }
        }
        out
    }

    /// Whether the gateway closed the connection (EOF within `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.eof && Instant::now() < deadline {
            self.fill(Duration::from_millis(200)).await;
        }
        self.eof
    }
}

/// Parses one response: a `Content-Length` or chunked body (decoded), none for
/// 1xx/204/304.
pub fn parse_response(b: &[u8]) -> Option<(Resp, usize)> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&b[..end]).into_owned();
    let line = head.lines().next()?.to_string();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?.to_string();
    let status: u16 = parts.next()?.parse().ok()?;
    let mut r = Resp {
        version,
        status,
        head,
        body: Vec::new(),
    };
    let start = end + 4;
    let bodiless = status < 200 || status == 204 || status == 304;
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked && !bodiless {
        let mut pos = start;
        loop {
            let le = b[pos..].windows(2).position(|w| w == b"\r\n")?;
            let size_s = String::from_utf8_lossy(&b[pos..pos + le]).into_owned();
            let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
            pos += le + 2;
            if size == 0 {
                // No trailers in this suite: the last chunk ends with one more CRLF.
                if b.len() < pos + 2 {
                    return None;
                }
                return Some((r, pos + 2));
            }
            if b.len() < pos + size + 2 {
                return None;
            }
            r.body.extend_from_slice(&b[pos..pos + size]);
            pos += size + 2;
        }
    }
    let len = if bodiless {
        0
    } else {
        r.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    if b.len() < start + len {
        return None;
    }
    r.body = b[start..start + len].to_vec();
    Some((r, start + len))
}

pub const IDLE: Duration = Duration::from_millis(1500);
