//! Who the client is: trusted proxies, `X-Forwarded-For` chains with trusted and spoofed
//! hops, `Forwarded`, and PROXY protocol v1/v2, seen from a raw client on a chosen loopback
//! address. Asserts what the upstream receives, which `client_ip` bucket counts, and what
//! the access log says.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{plain_upstream, TestGateway, TestUpstream};

/// The gateway trusts 127.0.0.1 (the "load balancer") and 10.0.0.0/8 (inner proxies);
/// 127.0.0.2 is an untrusted client. A `client_ip` limit of 2 a minute on `/limited`.
fn config(upstream: &str, listener_extra: &str) -> String {
    let app = plain_upstream("app", upstream);
    format!(
        r#"
listeners:
  - name: public
    address: "{{listen}}"
    trusted_proxies: ["127.0.0.1/32", "10.0.0.0/8"]
{listener_extra}
admin: {{ address: "{{admin}}" }}
upstreams:
{app}routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: app
    filters:
      - rate_limit: {{ name: per_client, key: client_ip, limit: 2, window: 1m }}
  - name: app
    match: {{ path_prefix: / }}
    upstream: app
"#
    )
}

/// Sends `prefix` (a PROXY header, or nothing) and then `head` + `Connection: close` from
/// a socket bound to `from`; returns the status (0 when the connection closed without
/// one) and the whole response text.
pub async fn raw(from: &str, port: u16, prefix: &[u8], head: &str) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(b"Connection: close\r\n\r\n");
    // The gateway may close before reading all of it (a refused PROXY header).
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The access-log line of request `id` (waits up to 3 s: it is written after the answer).
pub async fn access_line(gw: &TestGateway, id: &str) -> serde_json::Value {
    for _ in 0..150 {
        for line in gw.logs().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["target"] == "access" && v["fields"]["request_id"] == id {
                return v["fields"].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access log line for {id}:\n{}", gw.logs());
}

fn header<'a>(h: &'a http::HeaderMap, n: &str) -> Vec<&'a str> {
    h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect()
}

/// The upstream's last request named `client` in `X-Real-IP`, and carried `header`
/// (name, value) once.
fn assert_forwarded(app: &TestUpstream, client: &str, (name, value): (&str, &str)) {
    let h = app.last_headers();
    assert_eq!(header(&h, "x-real-ip"), [client]);
    assert_eq!(header(&h, name), [value], "{name}");
}

#[tokio::test]
async fn forwarded_for_chains_from_trusted_and_untrusted_peers() {
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(&app.addr.to_string(), "")).await;

    // Trusted peer, a chain with a spoofed first hop, the client, and a trusted inner hop.
    let (status, _) = raw(
        "127.0.0.1",
        gw.port,
        b"",
        "GET /who HTTP/1.1\r\nHost: api.example\r\nX-Request-Id: trusted-1\r\n\
         X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Forwarded-For: 10.1.1.1\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nX-Real-IP: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let h = app.last_headers();
    assert_eq!(
        header(&h, "x-forwarded-for"),
        ["6.6.6.6, 198.51.100.7, 10.1.1.1, 127.0.0.1"],
        "the chain is kept and the peer appended"
    );
    assert_eq!(header(&h, "x-real-ip"), ["198.51.100.7"]);
    assert_eq!(header(&h, "x-client-ip"), ["198.51.100.7"]);
    assert_eq!(header(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(header(&h, "x-forwarded-host"), ["public.example"]);
    let log = access_line(&gw, "trusted-1").await;
    assert_eq!(log["client_ip"], "198.51.100.7");
    assert_eq!(log["peer_ip"], "127.0.0.1");

    // The same headers from an untrusted peer are the client's own words: replaced.
    let (status, _) = raw(
        "127.0.0.2",
        gw.port,
        b"",
        "GET /who HTTP/1.1\r\nHost: api.example\r\nX-Request-Id: spoofed-1\r\n\
         X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: public.example\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let h = app.last_headers();
    assert_eq!(header(&h, "x-forwarded-for"), ["127.0.0.2"]);
    assert_eq!(header(&h, "x-real-ip"), ["127.0.0.2"]);
    assert_eq!(header(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&h, "x-forwarded-host"), ["api.example"]);
    assert!(header(&h, "forwarded").is_empty());
    let log = access_line(&gw, "spoofed-1").await;
    assert_eq!(log["client_ip"], "127.0.0.2");
    assert_eq!(log["peer_ip"], "127.0.0.2");

    // Every forwarded hop trusted: the leftmost is the client (nginx real_ip_recursive).
    raw(
        "127.0.0.1",
        gw.port,
        b"",
        "GET /who HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.9.9.9, 10.1.1.1\r\n",
    )
    .await;
    assert_eq!(header(&app.last_headers(), "x-real-ip"), ["10.9.9.9"]);

    // RFC 7239 Forwarded, no X-Forwarded-For: kept, the peer appended.
    raw(
        "127.0.0.1",
        gw.port,
        b"",
        "GET /who HTTP/1.1\r\nHost: a\r\n\
         Forwarded: for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.2.2.2\r\n",
    )
    .await;
    assert_forwarded(
        &app,
        "2001:db8:cafe::17",
        ("forwarded", "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.2.2.2, for=127.0.0.1"),
    );
    assert_eq!(
        header(&app.last_headers(), "x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[tokio::test]
async fn client_ip_limits_count_the_resolved_client() {
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(&app.addr.to_string(), "")).await;
    let get = |from: &'static str, xff: &'static str| {
        let port = gw.port;
        async move {
            let xff = if xff.is_empty() {
                String::new()
            } else {
                format!("X-Forwarded-For: {xff}\r\n")
            };
            raw(
                from,
                port,
                b"",
                &format!("GET /limited HTTP/1.1\r\nHost: a\r\n{xff}"),
            )
            .await
            .0
        }
    };
    // Two clients behind the trusted balancer each have their own bucket of 2.
    assert_eq!(get("127.0.0.1", "198.51.100.7").await, 200);
    assert_eq!(get("127.0.0.1", "198.51.100.7").await, 200);
    assert_eq!(get("127.0.0.1", "198.51.100.7").await, 429);
    assert_eq!(get("127.0.0.1", "198.51.100.8").await, 200);
    // A spoofed hop in front of the real client does not move it to a fresh bucket.
    assert_eq!(get("127.0.0.1", "203.0.113.1, 198.51.100.7").await, 429);
    // The balancer itself, without a header, is one more client.
    assert_eq!(get("127.0.0.1", "").await, 200);
    // An untrusted client counts as its own address whatever it claims.
    assert_eq!(get("127.0.0.2", "198.51.100.50").await, 200);
    assert_eq!(get("127.0.0.2", "198.51.100.51").await, 200);
    assert_eq!(get("127.0.0.2", "198.51.100.52").await, 429);
    assert_eq!(app.hits(), 6);
}

#[tokio::test]
async fn without_trusted_proxies_the_peer_is_the_client() {
    let app = TestUpstream::start("app").await;
    let yaml = config(&app.addr.to_string(), "").replace(
        "    trusted_proxies: [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n",
        "",
    );
    assert!(!yaml.contains("trusted_proxies"));
    let gw = TestGateway::start(&yaml).await;
    raw(
        "127.0.0.1",
        gw.port,
        b"",
        "GET /who HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 1.2.3.4\r\n\
         X-Forwarded-Proto: https\r\n",
    )
    .await;
    let h = app.last_headers();
    assert_eq!(header(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&h, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header(&h, "x-forwarded-proto"), ["http"]);
}

/// A PROXY protocol v2 header for TCP over IPv4 or IPv6 (spec section 2.2).
fn proxy_v2(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) =
        (src.parse().unwrap(), dst.parse().unwrap());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (src, dst) {
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_from_trusted_peers_only() {
    let app = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(&app.addr.to_string(), "    proxy_protocol: true\n")).await;
    let port = gw.port;
    let v1 = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 40000 {port}\r\n").into_bytes();
    // From the trusted balancer's address (127.0.0.1).
    let via_balancer = async |prefix: &[u8], head: &str| raw("127.0.0.1", port, prefix, head).await;
    const WHO: &str = "GET /who HTTP/1.1\r\nHost: a\r\n";

    // v1 from the trusted balancer: the header's source is the client.
    let (status, _) = via_balancer(
        &v1("198.51.100.7"),
        "GET /who HTTP/1.1\r\nHost: a\r\nX-Request-Id: pp-v1\r\nX-Forwarded-For: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let h = app.last_headers();
    assert_eq!(header(&h, "x-real-ip"), ["198.51.100.7"]);
    assert_eq!(
        header(&h, "x-forwarded-for"),
        ["198.51.100.7"],
        "the client's own XFF is not believed"
    );
    let log = access_line(&gw, "pp-v1").await;
    assert_eq!(log["client_ip"], "198.51.100.7");
    assert_eq!(log["peer_ip"], "198.51.100.7");

    // v2 over IPv6.
    let (status, _) =
        via_balancer(&proxy_v2("[2001:db8::7]:40000", "[2001:db8::1]:443"), WHO).await;
    assert_eq!(status, 200);
    assert_eq!(header(&app.last_headers(), "x-real-ip"), ["2001:db8::7"]);

    // The header names a trusted inner proxy: its X-Forwarded-For is walked.
    via_balancer(
        &proxy_v2("10.0.0.9:40000", "127.0.0.1:443"),
        "GET /who HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.8\r\n",
    )
    .await;
    assert_forwarded(
        &app,
        "198.51.100.8",
        ("x-forwarded-for", "6.6.6.6, 198.51.100.8, 10.0.0.9"),
    );

    // v2 LOCAL (a balancer's own health check): the connection's address stays.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (status, _) = via_balancer(&local, WHO).await;
    assert_eq!(status, 200);
    assert_eq!(header(&app.last_headers(), "x-real-ip"), ["127.0.0.1"]);

    // The client_ip limit counts the header's source.
    let hits = app.hits();
    for want in [200, 200, 429] {
        let (status, _) =
            via_balancer(&v1("198.51.100.20"), "GET /limited HTTP/1.1\r\nHost: a\r\n").await;
        assert_eq!(status, want);
    }
    let (status, _) =
        via_balancer(&v1("198.51.100.21"), "GET /limited HTTP/1.1\r\nHost: a\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(app.hits(), hits + 3);

    // Refused without a response: a PROXY header from an untrusted peer, a trusted peer
    // without a header, a garbled header.
    let hits = app.hits();
    let (status, text) = raw("127.0.0.2", port, &v1("198.51.100.7"), WHO).await;
    assert_eq!((status, text.as_str()), (0, ""));
    let (status, text) = via_balancer(b"", WHO).await;
    assert_eq!((status, text.as_str()), (0, ""));
    let (status, _) = via_balancer(b"PROXY TCP4 nonsense\r\n", WHO).await;
    assert_eq!(status, 0);
    assert_eq!(
        app.hits(),
        hits,
        "no refused connection reached the upstream"
    );
}
