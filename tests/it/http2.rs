//! HTTP/2 in clear text (h2c, prior knowledge) on a listener, spoken by a raw `h2` client:
//! requests and answers, the announced limits (concurrent streams, header list size) and
//! their effect, and rapid-reset floods (CVE-2023-44487) cut off.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::http;

use crate::support::*;

/// An HTTP/1.1 upstream that holds each request `delay` before a small answer, counting
/// requests, those in progress and the most in progress at once.
struct CountingUpstream {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lowers the in-progress count when a request ends, answered or dropped.
struct InProgress(Arc<AtomicUsize>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn counting_upstream(delay: Duration) -> CountingUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, now, peak) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, n, p) = (seen.clone(), now.clone(), peak.clone());
    let app = axum::Router::new().fallback(move || {
        let (s, n, p) = (s.clone(), n.clone(), p.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            let current = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(current, Ordering::SeqCst);
            let _in_progress = InProgress(n);
            tokio::time::sleep(delay).await;
            "done"
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    CountingUpstream {
        addr,
        seen,
        now,
        peak,
        task,
    }
}

/// A [`counting_upstream`] answering after `delay_ms`, behind an [`h2c_gateway`] with `h2`.
async fn counted_h2c(delay_ms: u64, h2: &str) -> (CountingUpstream, TestGateway) {
    let up = counting_upstream(Duration::from_millis(delay_ms)).await;
    let gw = h2c_gateway(up.addr, h2).await;
    (up, gw)
}

/// A gateway with h2c on its listener (plus `h2` limits, YAML flow mapping entries) in
/// front of `upstream`.
async fn h2c_gateway(upstream: SocketAddr, h2: &str) -> TestGateway {
    let yaml = config(
        &format!("  app: {{ discovery: {{ static: [ {{ address: \"{upstream}\" }} ] }}, timeouts: {{ read: 30s }} }}\n"),
        "  - { name: all, match: { path_prefix: / }, upstream: app }\n",
    )
    .replacen(
        "address: \"{listen}\" }",
        &format!("address: \"{{listen}}\", http: {{ h2c: true, h2: {{ {h2} }} }} }}"),
        1,
    );
    TestGateway::start(&yaml).await
}

/// An h2 connection by prior knowledge; the connection is driven by its own task.
async fn h2c_connect(port: u16) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://gatehouse.test{path}"))
        .body(())
        .unwrap()
}

async fn body_of(mut body: h2::RecvStream) -> Vec<u8> {
    body_of_ref(&mut body).await
}

/// The body's bytes to its end, leaving the stream readable for its trailers.
async fn body_of_ref(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test]
async fn h2c_requests_are_answered_and_http1_still_works_on_the_port() {
    let app = TestUpstream::start("app").await;
    let gw = h2c_gateway(app.addr, "").await;
    let (client, _conn) = h2c_connect(gw.port).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/hello?x=1"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-upstream"], "app");
    assert!(resp.headers().get("x-request-id").is_some());
    let echo: serde_json::Value = serde_json::from_slice(&body_of(resp.into_body()).await).unwrap();
    assert_eq!(echo["path"], "/hello?x=1");
    assert_eq!(
        echo["headers"]["host"], "gatehouse.test",
        "the :authority reaches an HTTP/1.1 upstream as Host"
    );
    // A second request on the same connection.
    let (resp, _) = client.send_request(get("/"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);

    // HTTP/1.1 clients on the same listener are unaffected.
    assert_eq!(get_h1(&gw, "/plain").await, 200);
}

async fn get_h1(gw: &TestGateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn concurrent_streams_beyond_the_limit_wait_and_oversized_header_lists_get_431() {
    let (up, gw) = counted_h2c(300, "max_concurrent_streams: 3, max_header_list_size: 4KiB").await;
    let (client, _conn) = h2c_connect(gw.port).await;
    let client = client.ready().await.unwrap();
    // Ten requests at once on one connection: the client may open three streams at a
    // time (SETTINGS_MAX_CONCURRENT_STREAMS, RFC 9113 §5.1.2), so the upstream never has more than three in progress,
    // and all ten are answered.
    // A stream opened before the client has read the gateway's SETTINGS may be refused
    // with REFUSED_STREAM (RFC 9113 §8.7: never processed, safe to retry); the client
    // retries it, as HTTP/2 clients do.
    let refused = Arc::new(AtomicUsize::new(0));
    let calls = (0..10).map(|i| {
        let (c, refused) = (client.clone(), refused.clone());
        async move {
            for _ in 0..5 {
                let mut c = c.clone().ready().await.unwrap();
                let (resp, _) = c.send_request(get(&format!("/n/{i}")), true).unwrap();
                match resp.await {
                    Ok(r) => return r.status().as_u16(),
                    Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("stream {i} failed: {e}"),
                }
            }
            panic!("stream {i} refused 5 times");
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, vec![200; 10]);
    assert!(
        refused.load(Ordering::SeqCst) <= 7,
        "only streams beyond the limit are refused"
    );
    assert_eq!(up.seen.load(Ordering::SeqCst), 10);
    assert!(
        up.peak.load(Ordering::SeqCst) <= 3,
        "at most 3 in progress, saw {}",
        up.peak.load(Ordering::SeqCst)
    );

    // A header list over 4 KiB is answered 431 by the HTTP/2 layer; the connection lives on.
    let mut c = client.clone().ready().await.unwrap();
    let big = http::Request::builder()
        .uri("http://gatehouse.test/big")
        .header("x-big", "b".repeat(8 * 1024))
        .body(())
        .unwrap();
    let (resp, _) = c.send_request(big, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 431);
    assert_eq!(up.seen.load(Ordering::SeqCst), 10, "never forwarded");
    let mut c = c.ready().await.unwrap();
    let (resp, _) = c.send_request(get("/after"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}

/// Opens streams and resets each at once (CANCEL), at most `max` streams or 10 s, until
/// the gateway ends the connection; `pace` waits between a stream's HEADERS and its
/// RST_STREAM, so that the gateway may take the request up before the reset arrives.
/// Returns the streams opened.
async fn reset_flood(port: u16, max: usize, pace: Option<Duration>) -> usize {
    let (client, conn) = h2c_connect(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = client;
    let mut opened = 0;
    while opened < max && Instant::now() < deadline && !conn.is_finished() {
        let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(2), client.ready()).await
        else {
            break;
        };
        client = ready;
        let Ok((resp, mut stream)) = client.send_request(get(&format!("/flood/{opened}")), false)
        else {
            break;
        };
        opened += 1;
        match pace {
            Some(p) => tokio::time::sleep(p).await,
            // Let the connection task write the HEADERS (a stream reset before its HEADERS
            // left is never sent at all).
            None => tokio::task::yield_now().await,
        }
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
        tokio::task::yield_now().await;
    }
    // The connection is over: its driver ends (GOAWAY or closed socket) soon after.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the gateway kept the connection after {opened} streams"
    );
    opened
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off_and_reaches_the_upstream_a_bounded_number_of_times() {
    let (up, gw) = counted_h2c(
        3000,
        "max_concurrent_streams: 50, max_pending_reset_streams: 10",
    )
    .await;

    // HEADERS and RST_STREAM back to back, as fast as the client can.
    let opened = reset_flood(gw.port, 10_000, None).await;
    let seen = up.seen.load(Ordering::SeqCst);
    assert!(
        opened < 2_000,
        "cut off after {opened} of 10000 streams ({seen} reached the upstream)"
    );
    assert!(seen <= 50 + 10, "the upstream saw {seen} of {opened}");
    assert!(up.now.load(Ordering::SeqCst) <= seen);

    // The gateway still serves a well-behaved client.
    let (client, _conn) = h2c_connect(gw.port).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/ok"), true).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered")
        .unwrap()
        .status();
    assert_eq!(status, 200, "{}", gw.logs());
}

const PREMATURE_CLOSES: &str = "gatehouse_http2_premature_reset_closes_total";

#[tokio::test]
async fn a_paced_reset_flood_is_cut_off_by_the_premature_reset_rule() {
    // Each request is held 3 s upstream, so a stream reset 2 ms after its HEADERS was taken
    // up by the gateway (it counts against no pending-accept bound) and reset early.
    let up = counting_upstream(Duration::from_secs(3)).await;
    // The defaults: 500 streams, 1 s; max_pending_reset_streams never fires at this pace.
    let gw = h2c_gateway(up.addr, "").await;
    let labels = [("listener", "public")];

    // Well-behaved traffic on one connection first: 60 complete streams count nothing.
    let (client, _conn) = h2c_connect(gw.port).await;
    let mut client = client;
    let mut answers = Vec::new();
    for i in 0..60 {
        client = client.ready().await.unwrap();
        answers.push(
            client
                .send_request(get(&format!("/ok/{i}")), true)
                .unwrap()
                .0,
        );
    }
    for a in answers {
        assert_eq!(a.await.unwrap().status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, PREMATURE_CLOSES, &labels), Some(0.0));

    let opened = reset_flood(gw.port, 5_000, Some(Duration::from_millis(2))).await;
    // 250 premature resets close the connection (half of 500); the gateway learns of each
    // one when its stream ends, so a few dozen more streams may get in.
    assert!(
        (250..=600).contains(&opened),
        "the connection ended after {opened} streams; upstream saw {}",
        up.seen.load(Ordering::SeqCst)
    );
    let m = gw.metrics_at(PREMATURE_CLOSES, &labels, 1.0).await;
    assert_eq!(
        metric_value(&m, PREMATURE_CLOSES, &labels),
        Some(1.0),
        "{}",
        gw.logs()
    );
    assert!(
        gw.logs().contains("reset by the client early"),
        "{}",
        gw.logs()
    );

    // The client that was not flooding keeps its connection.
    client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/still"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}

/// An h2c upstream (a raw `h2` server) that reads each request to its end and answers 200
/// with the request's body and trailer fields as text (`name: value` lines after the body).
async fn trailer_echo_h2c() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut text = body_of_ref(&mut body).await;
                        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
                        let mut lines: Vec<String> = trailers
                            .iter()
                            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                            .collect();
                        lines.sort_unstable();
                        text.extend_from_slice(format!("\n{}", lines.join("\n")).as_bytes());
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut send) = respond.send_response(resp, false) {
                            let _ = send.send_data(Bytes::from(text), true);
                        }
                    });
                }
            });
        }
    });
    (addr, task)
}

/// Sends `POST path` with body `hello` and the trailers `x-checksum: abc`, `x-drop-me: 1`
/// and `content-length: 99` on an h2c connection; returns the status and answer body.
async fn post_with_trailers(port: u16, path: &str) -> (u16, String) {
    let (client, _conn) = h2c_connect(port).await;
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://gatehouse.test{path}"))
        .body(())
        .unwrap();
    let (resp, mut stream) = client.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    let mut t = http::HeaderMap::new();
    t.insert("x-checksum", "abc".parse().unwrap());
    t.insert("x-drop-me", "1".parse().unwrap());
    t.insert("content-length", "99".parse().unwrap());
    stream.send_trailers(t).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered")
        .unwrap();
    let status = resp.status().as_u16();
    let body = body_of(resp.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn request_trailers_of_an_h2_client_reach_h2c_and_http1_upstreams() {
    use crate::support::raw::{Answer, RecordingUpstream};
    let (h2_up, _task) = trailer_echo_h2c().await;
    let h1_up = RecordingUpstream::start(Answer::Ok11).await;
    let yaml = config(
        &format!(
            "  grpcish: {{ protocol: h2c, discovery: {{ static: [ {{ address: \"{h2_up}\" }} ] }} }}\n{}",
            plain_upstream("h1", h1_up.addr)
        ),
        "  - { name: h2, match: { path_prefix: /h2 }, upstream: grpcish }\n  - { name: h1, match: { path_prefix: /h1 }, upstream: h1 }\n",
    )
    .replacen(
        "address: \"{listen}\" }",
        "address: \"{listen}\", http: { h2c: true } }",
        1,
    );
    let gw = TestGateway::start(&yaml).await;

    // To an h2c upstream: a HEADERS frame after the DATA, framing fields removed.
    let (status, body) = post_with_trailers(gw.port, "/h2").await;
    assert_eq!(status, 200, "{}", gw.logs());
    assert_eq!(body, "hello\nx-checksum: abc\nx-drop-me: 1");

    // To an HTTP/1.1 upstream: a chunked body whose trailer section carries them.
    let (status, _) = post_with_trailers(gw.port, "/h1").await;
    assert_eq!(status, 200, "{}", gw.logs());
    let reqs = h1_up.requests();
    assert_eq!(reqs.len(), 1, "{:?}", h1_up.conns());
    assert_eq!(reqs[0].body, b"hello");
    assert_eq!(reqs[0].header("transfer-encoding"), ["chunked"]);
    assert_eq!(reqs[0].trailers, ["x-checksum: abc", "x-drop-me: 1"]);
}
