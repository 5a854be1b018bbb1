//! WebSocket through the gateway (tokio-tungstenite on both ends): an echo with JWT checked
//! on the upgrade request, tunnel bytes not counted as a request body, a tunnel idle
//! longer than the upstream's read timeout kept until its own `idle_timeout` (vendored
//! pingora patch 13), and why each tunnel ended in the access log.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::*;

const SECRET: &str = "websocket-test-secret-of-32-bytes!!";

/// A WebSocket echo server: each text or binary message comes back; the text `close`
/// makes it close the connection (a Close frame, then the TCP connection).
async fn ws_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str() == "close") {
                        let _ = ws.close(None).await;
                        return;
                    }
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The gateway in front of a [`ws_upstream`] (returned too, to keep it running): `/open/`
/// with a 1 KiB body limit and a 3 s tunnel idle timeout, `/auth/` behind a JWT filter
/// (default idle timeout); the upstream's read timeout is 1 s.
async fn gateway() -> (TestGateway, tokio::task::JoinHandle<()>) {
    let (upstream, task) = ws_upstream().await;
    let ups = upstream_yaml("ws", &[(&upstream, 1)]);
    let routes = "  - name: open\n    match: { path_prefix: /open/ }\n    upstream: ws\n    max_body_bytes: 1k\n    websocket: { idle_timeout: 3s }\n  - name: auth\n    match: { path_prefix: /auth/ }\n    upstream: ws\n    filters:\n      - jwt: { issuer: gatehouse, audience: gatehouse, keys: [ { secret_env: WS_JWT_SECRET, algorithms: [HS256] } ] }\n";
    let env = [("WS_JWT_SECRET", SECRET)];
    (
        TestGateway::start_with_env(&config(&ups, routes), &env).await,
        task,
    )
}

/// Opens a WebSocket to the gateway's `path` with extra request headers.
async fn open(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = format!("ws://127.0.0.1:{}{path}", gw.port)
        .into_client_request()
        .unwrap();
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the handshake answered in time")
    .map(|(ws, _)| ws)
}

/// Opens a WebSocket to the gateway's `path` and checks that it echoes `text`.
async fn open_echoing(gw: &TestGateway, path: &str, text: &str) -> Ws {
    let mut ws = open(gw, path, &[]).await.unwrap();
    assert_eq!(echo(&mut ws, text).await.as_deref(), Some(text), "{path}");
    ws
}

/// Sends `text` and returns the next text message (within 5 s; `None` when the connection
/// ended instead).
async fn echo(ws: &mut Ws, text: &str) -> Option<String> {
    ws.send(Message::text(text)).await.ok()?;
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer or an end in time");
    match next {
        Some(Ok(Message::Text(t))) => Some(t.to_string()),
        _ => None,
    }
}

/// The access-log lines of route `route` whose tunnel ended, as JSON.
fn tunnel_lines(gw: &TestGateway, route: &str) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["target"] == "access"
                && v["fields"]["route"] == route
                && v["fields"]["tunnel_end"].is_string()
        })
        .collect()
}

/// Waits (at most 10 s) until route `route` has `n` finished tunnels and returns them.
async fn tunnels(gw: &TestGateway, route: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), async || {
        tunnel_lines(gw, route).len() >= n
    })
    .await;
    tunnel_lines(gw, route)
}

#[tokio::test]
async fn echo_with_jwt_on_the_upgrade_and_no_body_limit_on_the_tunnel() {
    let (gw, _upstream) = gateway().await;

    match open(&gw, "/auth/chat", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["x-gatehouse-error"], "unauthorized");
        }
        Err(e) => panic!("expected a 401 answer, got {e}"),
        Ok(_) => panic!("the upgrade went through without a token"),
    }
    let token = encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "7", "iss": "gatehouse", "aud": "gatehouse", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let mut ws = open(&gw, "/auth/chat", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(echo(&mut ws, "hello").await.as_deref(), Some("hello"));

    // Three 1000-byte messages on a route whose body limit is 1 KiB: the tunnel is not a
    // request body.
    let mut ws = open(&gw, "/open/big", &[]).await.unwrap();
    let big = "x".repeat(1000);
    for i in 0..3 {
        assert_eq!(
            echo(&mut ws, &big).await.as_deref(),
            Some(big.as_str()),
            "message {i}"
        );
    }
    drop(ws);
    let lines = tunnels(&gw, "open", 1).await;
    assert_eq!(lines.len(), 1, "{}", gw.logs());
    let f = &lines[0]["fields"];
    assert_eq!(
        (f["status"].as_u64(), f["error"].as_str()),
        (Some(101), Some(""))
    );
}

#[tokio::test]
async fn idle_tunnel_outlives_the_read_timeout_until_its_idle_timeout() {
    let (gw, _upstream) = gateway().await;
    let mut ws = open_echoing(&gw, "/open/idle", "one").await;
    // Idle for twice the upstream's read timeout (1 s), within the tunnel's 3 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(echo(&mut ws, "two").await.as_deref(), Some("two"));
    // Then idle past the idle timeout: the gateway closes the tunnel.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the tunnel was still open 10 s after its last message"
    );
    let lines = tunnels(&gw, "open", 1).await;
    let f = &lines[0]["fields"];
    assert_eq!(f["tunnel_end"], "idle_timeout", "{}", gw.logs());
    assert_eq!(f["status"], 101);
    let ms = f["tunnel_ms"].as_f64().unwrap();
    assert!(ms >= 5000.0, "2 s idle, then 3 s of idle timeout: {ms} ms");
}

#[tokio::test]
async fn client_and_upstream_closes_are_logged_as_such() {
    let (gw, _upstream) = gateway().await;

    let ws = open_echoing(&gw, "/open/client", "a").await;
    // The client goes away (its TCP connection closes) without a close handshake.
    drop(ws);
    let lines = tunnels(&gw, "open", 1).await;
    assert_eq!(
        lines[0]["fields"]["tunnel_end"],
        "client_close",
        "{}",
        gw.logs()
    );

    let mut ws = open_echoing(&gw, "/open/upstream", "b").await;
    // The upstream closes: a Close frame reaches the client, then the end.
    assert_eq!(echo(&mut ws, "close").await, None);
    let lines = tunnels(&gw, "open", 2).await;
    assert_eq!(lines.len(), 2, "{}", gw.logs());
    assert_eq!(lines[1]["fields"]["path"], "/open/upstream");
    assert_eq!(
        lines[1]["fields"]["tunnel_end"],
        "upstream_close",
        "{}",
        gw.logs()
    );
}
