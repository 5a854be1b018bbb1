//! HTTP edge conformance on raw sockets: a client that writes exact bytes, and an upstream
//! that records exactly what arrived on each of its connections. Each test asserts the
//! value RFC 9110/9112 (or nginx/Envoy) gives for one class of input: hop-by-hop headers,
//! Host and absolute-form targets, `Expect: 100-continue`, pipelining, pooled connections
//! closed by the upstream, malformed chunked bodies, header limits and slow clients,
//! keep-alive after the gateway's own refusals, and the HTTP version of forwarded
//! responses. Request smuggling has its own suite (`smuggling.rs`); the recording upstream
//! and the raw client are in `support/raw.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::raw::*;
use crate::support::*;

// === gateway configs ===

fn config(upstream: SocketAddr, listener_http: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\"{listener_http} }} ]\n\
         admin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\nshutdown: {{ grace_period: 1s }}\n\
         upstreams:\n  app: {{ discovery: {{ static: [ {{ address: \"{upstream}\" }} ] }} }}\n\
         routes:\n{routes}"
    )
}

const CATCH_ALL: &str = "  - { name: all, upstream: app }\n";

async fn plain_gateway(up: &RecordingUpstream) -> TestGateway {
    TestGateway::start(&config(up.addr, "", CATCH_ALL)).await
}

/// Sends `bytes` on a fresh connection and returns every response.
async fn exchange(gw: &TestGateway, bytes: &[u8]) -> Vec<Resp> {
    let mut c = Raw::connect(gw.port).await;
    c.send(bytes).await;
    c.responses(IDLE).await
}

/// Sends `bytes` on a fresh connection and asserts one answer, a 200; the requests the
/// upstream received so far.
async fn ok_exchange(gw: &TestGateway, up: &RecordingUpstream, bytes: &[u8]) -> Vec<Recorded> {
    let rs = exchange(gw, bytes).await;
    assert_eq!(
        statuses(&rs),
        vec![200],
        "{}",
        String::from_utf8_lossy(bytes)
    );
    up.requests()
}

fn statuses(rs: &[Resp]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

// === 1. hop-by-hop headers named by the client ===

/// The JWT filters' secret, which the gateway reads from `EDGE_JWT_SECRET`.
const SECRET: &str = "edge-test-secret-at-least-32-bytes!!";

/// The gateway before `up` with `routes`, and [`SECRET`] in its environment.
async fn jwt_gateway(up: &RecordingUpstream, routes: &str) -> TestGateway {
    let env = [("EDGE_JWT_SECRET", SECRET)];
    TestGateway::start_with_env(&config(up.addr, "", routes), &env).await
}

#[tokio::test]
async fn client_connection_header_cannot_remove_gateway_headers() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let routes = "  - name: me\n    upstream: app\n    filters:\n      - jwt:\n          issuer: gatehouse\n          audience: gatehouse\n          keys: [ { secret_env: EDGE_JWT_SECRET, algorithms: [HS256] } ]\n          forward_claims: { sub: X-User-Id, role: X-User-Role }\n      - headers: { request: { set: { x-gateway-verified: \"yes\" } } }\n";
    let gw = jwt_gateway(&up, routes).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "u-42", "role": "USER", "iss": "gatehouse", "aud": "gatehouse", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let req = format!(
        "GET /api/me HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\
         Connection: keep-alive, X-User-Id, X-User-Role, X-Gateway-Verified, X-Client-Hop\r\n\
         X-User-Id: forged\r\nX-Client-Hop: 1\r\nX-Kept: 1\r\n\r\n"
    );
    let rs = exchange(&gw, req.as_bytes()).await;
    assert_eq!(statuses(&rs), vec![200], "{}", gw.logs());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.header("x-user-id"), vec!["u-42"], "{}", r.head);
    assert_eq!(r.header("x-user-role"), vec!["USER"], "{}", r.head);
    assert_eq!(r.header("x-gateway-verified"), vec!["yes"], "{}", r.head);
    // What the client nominated and sent itself is hop-by-hop: gone (RFC 9110 §7.6.1).
    assert!(r.header("x-client-hop").is_empty(), "{}", r.head);
    assert!(
        r.header("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-")),
        "{}",
        r.head
    );
    assert_eq!(r.header("x-kept"), vec!["1"]);
}

// === 2. Host ===

#[tokio::test]
async fn http11_requests_need_exactly_one_valid_host() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = plain_gateway(&up).await;
    for bad in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example.com, b.example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    ] {
        let rs = exchange(&gw, bad.as_bytes()).await;
        assert_eq!(statuses(&rs), vec![400], "{bad:?}");
    }
    assert_eq!(up.total_bytes(), 0, "nothing reached the upstream");
    // HTTP/1.0 has no Host requirement (RFC 9112 §3.2 is for HTTP/1.1).
    let reqs = ok_exchange(&gw, &up, b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(reqs.len(), 1);
}

// === 3. absolute-form targets ===

#[tokio::test]
async fn absolute_form_target_is_routed_on_its_authority_and_sent_in_origin_form() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let routes = "  - name: admin\n    match: { hosts: [admin.example.com] }\n    upstream: app\n    filters:\n      - jwt:\n          issuer: gatehouse\n          audience: gatehouse\n          keys: [ { secret_env: EDGE_JWT_SECRET, algorithms: [HS256] } ]\n  - { name: all, upstream: app }\n";
    let gw = jwt_gateway(&up, routes).await;
    // No Host: the target's authority routes it, to the admin route's JWT check.
    let rs = exchange(&gw, b"GET http://admin.example.com/whoami HTTP/1.1\r\n\r\n").await;
    assert_eq!(statuses(&rs), vec![401]);
    // A Host that differs from the authority is replaced by it (RFC 9112 §3.2.2): routed to
    // the admin route's JWT check, not to the catch-all the Host names.
    let rs = exchange(
        &gw,
        b"GET http://admin.example.com/whoami HTTP/1.1\r\nHost: public.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&rs), vec![401]);
    assert_eq!(up.total_bytes(), 0);
    // On the catch-all host: forwarded in origin form with the authority as Host.
    let reqs = ok_exchange(
        &gw,
        &up,
        b"GET http://www.example.com/whoami?x=1 HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(reqs[0].request_line(), "GET /whoami?x=1 HTTP/1.1");
    assert_eq!(reqs[0].header("host"), vec!["www.example.com"]);
    // With a conflicting Host: the upstream gets the authority as its only Host.
    let reqs = ok_exchange(
        &gw,
        &up,
        b"GET http://a.example.com/x HTTP/1.1\r\nHost: b.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].request_line(), "GET /x HTTP/1.1");
    assert_eq!(reqs[1].header("host"), vec!["a.example.com"]);
}

// === 4. Expect: 100-continue ===

#[tokio::test]
async fn expect_continue_is_answered_before_the_gateway_reads_the_body() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let routes = "  - name: login\n    upstream: app\n    filters:\n      - rate_limit: { name: per_email, key: body.email, limit: 100, window: 1m }\n";
    let gw = TestGateway::start(&config(up.addr, "", routes)).await;
    let body = br#"{"email":"a@example.com"}"#;
    let mut c = Raw::connect(gw.port).await;
    c.send(
        format!(
            "POST /login HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // The client waits for 100 before it sends the body (generous bound: no timing asserted).
    let first = c.expect_response("an interim response").await;
    assert_eq!(first.status, 100);
    c.send(body).await;
    let last = c.expect_response("a final response").await;
    assert_eq!(last.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, body);
    // The expectation was met by the gateway: the upstream is not asked again.
    assert!(reqs[0].header("expect").is_empty(), "{}", reqs[0].head);
}

/// Sends a `POST` with `Expect: 100-continue` and no body yet; returns the first answer.
async fn expect_continue_answer(gw: &TestGateway, path: &str) -> Option<Resp> {
    let mut c = Raw::connect(gw.port).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 25\r\nExpect: 100-continue\r\n\r\n"
    );
    c.send(head.as_bytes()).await;
    c.response(Duration::from_secs(10)).await
}

#[tokio::test]
async fn expect_continue_gets_the_refusal_that_needs_no_body() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let routes = "  - name: login\n    match: { path_prefix: /login }\n    upstream: app\n    filters:\n      - jwt:\n          issuer: gatehouse\n          audience: gatehouse\n          keys: [ { secret_env: EDGE_JWT_SECRET, algorithms: [HS256] } ]\n      - rate_limit: { name: per_email, key: body.email, limit: 100, window: 1m }\n  - name: signup\n    match: { path_prefix: /signup }\n    upstream: app\n    filters:\n      - rate_limit: { name: per_ip, key: client_ip, limit: 1, window: 1m }\n      - rate_limit: { name: per_email, key: body.email, limit: 100, window: 1m }\n";
    let gw = jwt_gateway(&up, routes).await;
    // No token: the jwt filter refuses without the body, so that is the answer, not 100.
    let first = expect_continue_answer(&gw, "/login")
        .await
        .map(|r| r.status);
    assert_eq!(first, Some(401));
    // The client's IP limit (1 a minute): the first gets 100, the second its 429 at once.
    let first = expect_continue_answer(&gw, "/signup")
        .await
        .map(|r| r.status);
    assert_eq!(first, Some(100));
    let second = expect_continue_answer(&gw, "/signup")
        .await
        .map(|r| r.status);
    assert_eq!(second, Some(429));
    assert_eq!(
        up.total_bytes(),
        0,
        "no body was sent, nothing went upstream"
    );
}

// === 5. pipelining ===

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = plain_gateway(&up).await;
    let rs = exchange(
        &gw,
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\nGET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&rs), vec![200, 200, 200]);
    let lines: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.request_line().to_string())
        .collect();
    assert_eq!(
        lines,
        vec![
            "GET /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]
    );
    assert_eq!(rs[2].header("connection").as_deref(), Some("close"));
}

// === 6. pooled connections the upstream closed ===

/// A connection whose FIN arrived before it was handed out is never reused (the residual
/// race of a FIN still in flight is bounded, see the assertion).
#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_is_never_reused() {
    let up = RecordingUpstream::start(Answer::HeadThenClose).await;
    // Two proxy threads share one upstream pool, as in the issue's reproduction.
    let yaml = config(up.addr, "", CATCH_ALL).replace("threads: 1", "threads: 2");
    let gw = TestGateway::start(&yaml).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let port = gw.port;
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut c = Raw::connect(port).await;
            for i in 0..250 {
                c.send(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n").await;
                let h = c.next_status().await;
                c.send(
                    format!("POST /p{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
                        .as_bytes(),
                )
                .await;
                let p = c.next_status().await;
                if h != Some(200) || p != Some(200) {
                    failed.push((i, h, p));
                    c = Raw::connect(port).await;
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    let logs = gw.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| !l.contains("\"status\":200"))
        .collect();
    // Without the kernel check of a pooled connection (vendor patch 2) most runs lose 4 or
    // more POSTs of 1000 here (measured on 2 cores; 6-60 when the patch was written); with it, about one run in twenty loses one POST: the upstream's FIN landed
    // in the microseconds between the gateway pooling the connection and another request
    // taking it (the upstream closed without `Connection: close`). That POST may have been
    // read, so it is not retried (RFC 9110 §9.2.2; nginx and Go's client do the same).
    assert!(
        failed.len() <= 2 && failed.iter().all(|&(_, h, p)| h == Some(200) && p == Some(502)),
        "of 1000 HEAD+POST pairs, failed (pair, HEAD status, POST status): {failed:?}; log lines other than 200s: {errors:#?}"
    );
    let posts = up
        .requests()
        .iter()
        .filter(|r| r.head.starts_with("POST"))
        .count();
    assert_eq!(
        posts,
        1000 - failed.len(),
        "each answered POST reached the upstream once"
    );
}

#[tokio::test]
async fn pooled_connection_the_upstream_closed_later_is_not_reused_for_a_post() {
    let up = RecordingUpstream::start(Answer::OkThenFin).await;
    let gw = plain_gateway(&up).await;
    let mut c = Raw::connect(gw.port).await;
    c.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let first = c.next_status().await;
    assert_eq!(first, Some(200));
    // Well after the upstream's FIN, a POST (never retried on a closed connection).
    tokio::time::sleep(FIN_DELAY * 5).await;
    c.send(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let second = c.next_status().await;
    assert_eq!(second, Some(200), "{}", gw.logs());
    let conns = up.conns();
    assert_eq!(conns.len(), 2, "the POST went on a new upstream connection");
    assert_eq!(conns[0].requests.len(), 1);
    assert_eq!(conns[1].requests[0].request_line(), "POST /b HTTP/1.1");
}

// === 7. malformed chunked bodies ===

const OVERFLOW_CHUNK: &[u8] =
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n";
const UNTERMINATED_CHUNK: &[u8] =
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n";

#[tokio::test]
async fn malformed_chunked_body_closes_the_upstream_connection_that_carried_it() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = plain_gateway(&up).await;
    for (i, bad) in [OVERFLOW_CHUNK, UNTERMINATED_CHUNK].into_iter().enumerate() {
        let rs = exchange(&gw, bad).await;
        assert!(rs.iter().all(|r| r.status == 400), "{:?}", statuses(&rs));
        let rs = exchange(
            &gw,
            b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&rs), vec![200]);
        // The upstream connection that got the head and part of the body is closed by the
        // gateway and never carries another request.
        let carried: Vec<Conn> = up
            .conns()
            .into_iter()
            .filter(|c| find(&c.bytes, b"POST /c").is_some())
            .collect();
        assert_eq!(
            carried.len(),
            i + 1,
            "case {i}: the streamed request reached no upstream connection"
        );
        for c in &carried {
            let after_bad = &c.bytes[find(&c.bytes, b"POST /c").unwrap_or(0)..];
            assert!(
                find(after_bad, b"GET /after").is_none(),
                "case {i}: reused after a half-sent body"
            );
        }
        assert!(
            eventually(Duration::from_secs(10), async || up
                .conns()
                .iter()
                .filter(|c| find(&c.bytes, b"POST /c").is_some())
                .all(|c| c.eof))
            .await,
            "case {i}: a connection with a half-sent body was left open"
        );
        assert!(up
            .requests()
            .iter()
            .any(|r| r.request_line() == "GET /after HTTP/1.1"));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn request_buffering_refuses_malformed_bodies_before_any_byte_goes_upstream() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let routes = "  - { name: buffered, upstream: app, request_buffering: { max_bytes: 1024 } }\n";
    let gw = TestGateway::start(&config(up.addr, "", routes)).await;
    for bad in [OVERFLOW_CHUNK, UNTERMINATED_CHUNK] {
        let rs = exchange(&gw, bad).await;
        assert_eq!(statuses(&rs), vec![400]);
    }
    let big = format!(
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    let rs = exchange(&gw, big.as_bytes()).await;
    assert_eq!(statuses(&rs), vec![413]);
    assert_eq!(up.total_bytes(), 0, "nothing reached the upstream");
    let rs = exchange(
        &gw,
        b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&rs), vec![200]);
    assert_eq!(up.requests()[0].body, b"hello");
}

// === 8. limits ===

#[tokio::test]
async fn header_limits_answer_431_and_414() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let http = ", http: { max_request_header_bytes: 4096, max_header_line_bytes: 1024, max_headers: 20, max_uri_bytes: 512 }";
    let gw = TestGateway::start(&config(up.addr, http, CATCH_ALL)).await;
    let total = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        (0..8)
            .map(|i| format!("X-H{i}: {}\r\n", "a".repeat(900)))
            .collect::<String>()
    );
    let line = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\n\r\n",
        "a".repeat(1100)
    );
    let count = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        (0..25)
            .map(|i| format!("X-H{i}: 1\r\n"))
            .collect::<String>()
    );
    let uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(600));
    assert_eq!(statuses(&exchange(&gw, total.as_bytes()).await), vec![431]);
    assert_eq!(statuses(&exchange(&gw, line.as_bytes()).await), vec![431]);
    assert_eq!(statuses(&exchange(&gw, count.as_bytes()).await), vec![431]);
    assert_eq!(statuses(&exchange(&gw, uri.as_bytes()).await), vec![414]);
    assert_eq!(up.total_bytes(), 0);
    let ok = exchange(&gw, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(statuses(&ok), vec![200]);
}

#[tokio::test]
async fn default_limits_refuse_a_64k_header() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = plain_gateway(&up).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        (0..16)
            .map(|i| format!("X-H{i}: {}\r\n", "a".repeat(4090)))
            .collect::<String>()
    );
    assert_eq!(statuses(&exchange(&gw, big.as_bytes()).await), vec![431]);
    let one = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(65536)
    );
    assert_eq!(statuses(&exchange(&gw, one.as_bytes()).await), vec![431]);
    assert_eq!(up.total_bytes(), 0);
}

/// A header section over four times the default 4 KiB read buffer (`runtime.downstream_read_buffer`)
/// but inside the 32 KiB limit is read in several reads, sent at once or a few bytes at a
/// time, and reaches the upstream whole.
#[tokio::test]
async fn a_header_larger_than_the_read_buffer_reaches_the_upstream_whole() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = plain_gateway(&up).await;
    let fields: Vec<String> = (0..4).map(|i| format!("{i}").repeat(4500)).collect();
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\n{}\r\n",
        fields
            .iter()
            .enumerate()
            .map(|(i, v)| format!("X-Big-{i}: {v}\r\n"))
            .collect::<String>()
    );
    assert!(head.len() > 4 * 4096);
    assert_eq!(statuses(&exchange(&gw, head.as_bytes()).await), vec![200]);
    let mut c = Raw::connect(gw.port).await;
    for part in head.as_bytes().chunks(1500) {
        c.send(part).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(statuses(&c.responses(IDLE).await), vec![200]);
    let got = up.requests();
    assert_eq!(got.len(), 2);
    for r in &got {
        for (i, v) in fields.iter().enumerate() {
            assert_eq!(r.header(&format!("x-big-{i}")), vec![v.clone()]);
        }
    }
}

/// A recording upstream behind a gateway that waits 1 s for a request header.
async fn header_deadline_gateway() -> (RecordingUpstream, TestGateway) {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let http = ", http: { header_read_timeout: 1s }";
    let gw = TestGateway::start(&config(up.addr, http, CATCH_ALL)).await;
    (up, gw)
}

#[tokio::test]
async fn slow_header_is_cut_and_others_are_served() {
    let (up, gw) = header_deadline_gateway().await;
    let mut slow = Raw::connect(gw.port).await;
    slow.send(b"GET / HTTP/1.1\r\nHost: h\r\n").await;
    let mut sent = 0;
    // One header line per 300 ms: every read is quick, the header never ends.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.send(format!("X-S{sent}: 1\r\n").as_bytes()).await;
        sent += 1;
        if slow.closed_within(Duration::from_millis(1)).await {
            break;
        }
    }
    assert!(
        slow.closed_within(Duration::from_secs(10)).await,
        "slow client still connected after {sent} lines"
    );
    assert!(slow.buf.is_empty() || !String::from_utf8_lossy(&slow.buf).contains(" 200 "));
    let reqs = ok_exchange(&gw, &up, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(reqs.len(), 1);
}

#[tokio::test]
async fn idle_fresh_connection_is_closed_at_the_header_deadline() {
    let (_up, gw) = header_deadline_gateway().await;
    // A socket that never sends a byte: once held for pingora's 60 s keep-alive read.
    let mut idle = Raw::connect(gw.port).await;
    let t = Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(10)).await,
        "an idle fresh connection still open after 10 s"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert!(idle.buf.is_empty(), "closed without a response");
    // A keep-alive connection waiting for its second request is not cut by the deadline.
    let mut kept = Raw::connect(gw.port).await;
    kept.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(kept.next_status().await, Some(200));
    assert!(!kept.closed_within(Duration::from_millis(2500)).await);
    kept.send(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(kept.next_status().await, Some(200));
    assert!(
        !gw.logs().contains("ERROR"),
        "an idle socket is no error:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn connection_cap_refuses_beyond_the_limit_and_frees_slots() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let http = ", http: { max_connections: 3 }";
    let gw = TestGateway::start(&config(up.addr, http, CATCH_ALL)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(gw.port).await;
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(c.next_status().await, Some(200));
        held.push(c);
    }
    let mut extra = Raw::connect(gw.port).await;
    extra.send(b"GET /extra HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(extra.response(Duration::from_secs(5)).await.is_none());
    assert!(extra.closed_within(Duration::from_secs(10)).await);
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(10), async || {
            exchange(&gw, b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .first()
                .map(|r| r.status)
                == Some(200)
        })
        .await
    );
    assert!(up
        .requests()
        .iter()
        .all(|r| !r.request_line().contains("/extra")));
}

// === 9. keep-alive after the gateway's own refusals ===

#[tokio::test]
async fn gateway_refusal_keeps_the_client_connection() {
    // Nothing listens there: the health check keeps the endpoint unhealthy.
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "listeners: [ {{ name: public, address: \"{{listen}}\" }} ]\nadmin: {{ address: \"{{admin}}\" }}\nruntime: {{ threads: 1 }}\n\
         upstreams:\n  down:\n    discovery: {{ static: [ {{ address: \"{}\" }} ] }}\n    health_check: {{ path: /health, interval: 60s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1, initial_state: unhealthy }}\n\
         routes:\n  - {{ name: down, upstream: down }}\n",
        dead
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = Raw::connect(gw.port).await;
    for i in 0..3 {
        c.send(format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await;
        let r = c.expect_response("a response on the same connection").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.header("x-gatehouse-error").as_deref(),
            Some("no_healthy_endpoint")
        );
        assert_eq!(
            r.header("connection").as_deref(),
            Some("keep-alive"),
            "{}",
            r.head
        );
    }
    // A POST whose body was sent is refused the same way, and the connection stays usable.
    c.send(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /after HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let rs = c.responses(IDLE).await;
    assert_eq!(statuses(&rs), vec![503, 503]);
}

// === 10. HTTP version of forwarded responses ===

#[tokio::test]
async fn forwarded_responses_carry_the_gateways_http_version() {
    let up = RecordingUpstream::start(Answer::Ok10).await;
    let gw = plain_gateway(&up).await;
    let mut c = Raw::connect(gw.port).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c.expect_response("response on the same connection").await;
        assert_eq!(
            (r.version.as_str(), r.status),
            ("HTTP/1.1", 200),
            "{}",
            r.head
        );
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
        assert_eq!(r.body, b"ok");
    }
    // An HTTP/1.0 client without keep-alive gets HTTP/1.1 (RFC 9110 §6.2) and a close.
    let rs = exchange(&gw, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n").await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].version, "HTTP/1.1");
    assert_eq!(rs[0].header("connection").as_deref(), Some("close"));
}
