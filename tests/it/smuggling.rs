//! Request smuggling: every vector class of the HTTP-at-the-edge issue, and the standard
//! classes beyond it (TE/CL obfuscations, chunk-size tricks, line-ending and request-line
//! oddities, HTTP/0.9, pipelining after a body, `Expect: 100-continue` with the body sent at
//! once), sent on raw sockets through the gateway to a recording upstream. Each must be
//! refused (400, nothing upstream) or forwarded as well-formed requests, one per answer the
//! client gets, never hiding a second request inside a body. The suite runs twice: against
//! an upstream that answers with `Content-Length` and one that answers chunked, since a
//! desynchronised response framing is the other half of an attack.

use std::time::Duration;

use crate::support::raw::*;
use crate::support::*;

/// The request an attacker wants the upstream to see on its own.
const S: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";

/// How long a vector's connection may stay quiet before all answers are in.
const VECTOR_IDLE: Duration = Duration::from_millis(1000);

/// The vector classes: the 22 of the HTTP-at-the-edge issue first, then the others.
fn vectors() -> Vec<(&'static str, String)> {
    let n = S.len();
    vec![
        // --- the HTTP-at-the-edge issue's 22 ---
        ("cl+te", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}")),
        ("te+cl", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{S}")),
        ("cl duplicate differing", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{S}")),
        ("cl list differing", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, {n}\r\n\r\n{S}")),
        ("cl plus sign", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +{n}\r\n\r\n{S}")),
        ("cl hex", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x{n:x}\r\n\r\n{S}")),
        ("cl space before colon", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length : {n}\r\n\r\n{S}")),
        ("te xchunked", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{S}")),
        ("te space before colon", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{S}")),
        ("te chunked, identity", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{S}")),
        ("te duplicate", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{S}")),
        ("te vertical tab", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{S}")),
        ("te obs-fold", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{S}")),
        ("chunk size overflow", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000000000000026\r\n{S}\r\n0\r\n\r\n")),
        ("chunk size 0x prefix", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x26\r\n{S}\r\n0\r\n\r\n")),
        ("bare cr in header", format!("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n{S}")),
        ("nul in header", format!("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n{S}")),
        ("bare lf line endings", format!("GET / HTTP/1.1\nHost: h\nX-A: 1\n\n{S}")),
        ("obs-fold header", format!("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n{S}")),
        ("http/1.0 + te", format!("POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}")),
        ("upgrade without 101 then pipelined", format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{S}")),
        ("space in request line", format!("GET / HTTP/1.1 x\r\nHost: h\r\n\r\n{S}")),
        // --- further standard classes ---
        ("te tab before value", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n{S}")),
        ("te tab before colon", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n{S}")),
        ("te duplicate chunked", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}")),
        ("te identity + cl", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nContent-Length: {n}\r\n\r\n{S}")),
        ("te upper case CHUNKED + cl", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{S}")),
        ("cl leading zeros", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 000{n}\r\n\r\n{S}")),
        ("cl negative", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n{S}")),
        ("cl duplicate identical", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{S}")),
        ("cl overflow", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n{S}")),
        ("cl on get with body", format!("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{S}")),
        ("chunk extension", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=\"x\"\r\nab\r\n0\r\n\r\n{S}")),
        ("chunk extension with bare lf", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;x\nab\r\n0\r\n\r\n{S}")),
        ("chunk size negative", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{S}\r\n0\r\n\r\n")),
        ("chunk size leading space", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 0\r\n\r\n{S}")),
        ("chunk size bare lf", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\n\n{S}")),
        ("chunk data longer than size", format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n{S}")),
        ("header name with space", format!("GET / HTTP/1.1\r\nHost: h\r\nX A: b\r\n\r\n{S}")),
        ("absolute-form with another host", format!("GET http://other.example/ HTTP/1.1\r\nHost: h\r\n\r\n{S}")),
        ("request line double space", format!("GET  / HTTP/1.1\r\nHost: h\r\n\r\n{S}")),
        ("request target with spaces", format!("GET /a b c HTTP/1.1\r\nHost: h\r\n\r\n{S}")),
        ("http/0.9", format!("GET /\r\n\r\n{S}")),
        ("pipelined after a body", format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello{S}")),
        ("expect 100-continue with the body at once", format!("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n{S}")),
        ("expect 100-continue + te + cl", format!("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}")),
    ]
}

/// What became of one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// 400 (or the connection closed) with nothing upstream.
    Refused,
    /// Forwarded: as many well-formed requests as the client got answers.
    Forwarded(usize),
}

/// Sends one vector and checks it was refused, or forwarded as well-formed requests (the
/// recording upstream's parser is strict RFC 9112), one per answer, and that `/smuggled`
/// reached the upstream only as a request the client itself got an answer for.
async fn fate(gw: &TestGateway, up: &RecordingUpstream, name: &str, v: &[u8]) -> Fate {
    let before_conns = up.conns().len();
    let before_reqs = up.requests().len();
    let mut c = Raw::connect(gw.port).await;
    c.send(v).await;
    let rs = c.responses(VECTOR_IDLE).await;
    // Let the upstream side settle before reading what it got.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let conns = up.conns();
    let new_reqs: Vec<Recorded> = up.requests()[before_reqs..].to_vec();
    let sts: Vec<u16> = rs.iter().map(|r| r.status).collect();
    let finals: Vec<u16> = sts.iter().copied().filter(|s| *s >= 200).collect();
    eprintln!(
        "smuggling vector {name:?}: answers {sts:?}, upstream requests {:?}",
        new_reqs
            .iter()
            .map(|r| r.request_line())
            .collect::<Vec<_>>()
    );
    // Pooled connections are reused across vectors: check every one.
    let _ = before_conns;
    for c in &conns {
        assert!(
            !c.garbage,
            "{name}: upstream received bytes that are no request: {:?}",
            String::from_utf8_lossy(&c.bytes)
        );
    }
    for r in &new_reqs {
        let line = r.request_line();
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(
            parts.len() == 3 && parts[1].starts_with('/') && parts[2] == "HTTP/1.1",
            "{name}: malformed request line forwarded: {line:?}"
        );
    }
    if finals.first().is_none_or(|s| *s == 400) {
        // Refused (or closed without an answer): nothing may have gone upstream.
        assert!(
            new_reqs.is_empty(),
            "{name}: refused ({sts:?}) yet forwarded {new_reqs:?}"
        );
        return Fate::Refused;
    }
    let answered = finals.iter().filter(|s| **s != 400).count();
    assert!(
        new_reqs.len() <= answered,
        "{name}: upstream got {} requests for answers {sts:?}: {new_reqs:?}",
        new_reqs.len()
    );
    // `/smuggled` may only arrive as its own request when the client got its answer, as
    // the second of two.
    if answered < 2 {
        assert!(
            new_reqs
                .iter()
                .all(|r| !r.request_line().contains("/smuggled")),
            "{name}: /smuggled reached the upstream: {new_reqs:?}"
        );
    }
    Fate::Forwarded(new_reqs.len())
}

/// Every request to the recording upstream at `up`.
fn config(up: std::net::SocketAddr) -> String {
    AppConfig::new(&[up])
        .top("runtime: { threads: 1 }\nshutdown: { grace_period: 1s }")
        .to_string()
}

async fn run_suite(answer: Answer) {
    let up = RecordingUpstream::start(answer).await;
    let gw = TestGateway::start(&config(up.addr)).await;
    let vs = vectors();
    let mut refused = 0;
    let mut forwarded = 0;
    for (name, v) in &vs {
        match fate(&gw, &up, name, v.as_bytes()).await {
            Fate::Refused => refused += 1,
            Fate::Forwarded(_) => forwarded += 1,
        }
    }
    eprintln!(
        "smuggling against a {answer:?} upstream: {} vectors, {refused} refused, {forwarded} forwarded as well-formed requests, 0 smuggled",
        vs.len()
    );
    assert!(up.conns().iter().all(|c| !c.garbage));
    assert_eq!(refused + forwarded, vs.len());
}

#[tokio::test]
async fn smuggling_vectors_against_a_content_length_upstream() {
    run_suite(Answer::Ok11).await;
}

#[tokio::test]
async fn smuggling_vectors_against_a_chunked_upstream() {
    run_suite(Answer::Chunked11).await;
}

/// Whitespace or a control byte inside the request-target is an invalid request-line (RFC
/// 9112 §3.2): refused with the gateway's 400, never "autocorrected" and forwarded (pingora
/// percent-encoded it: `GET /a b c` went upstream as `/a%20b%20c`, `GET  /` as `%20/`;
/// vendor patch 8).
#[tokio::test]
async fn whitespace_in_the_request_target_is_refused_not_escaped() {
    let up = RecordingUpstream::start(Answer::Ok11).await;
    let gw = TestGateway::start(&config(up.addr)).await;
    for bad in [
        &b"GET /a b c HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a?q=x y HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let mut c = Raw::connect(gw.port).await;
        c.send(bad).await;
        let rs = c.responses(VECTOR_IDLE).await;
        let text = String::from_utf8_lossy(bad);
        assert_eq!(rs.len(), 1, "{text:?}: {rs:?}");
        assert_eq!(rs[0].status, 400, "{text:?}");
        assert!(
            rs[0].header("x-gatehouse-error").is_some(),
            "{text:?}: {rs:?}"
        );
    }
    // A percent-encoded space is a valid target and goes upstream as it came.
    let mut c = Raw::connect(gw.port).await;
    c.send(b"GET /a%20b HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let rs = c.responses(VECTOR_IDLE).await;
    assert_eq!(rs.first().map(|r| r.status), Some(200), "{rs:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let lines: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.request_line().to_string())
        .collect();
    assert_eq!(lines, vec!["GET /a%20b HTTP/1.1".to_string()]);
}
