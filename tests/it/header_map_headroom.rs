//! Vendored pingora patch 16: a parsed HTTP/1 header's maps have room for the fields a
//! proxy adds, so adding the forwarding headers and the request id does not grow them.

use pingora_core::protocols::http::v1::client::HttpSession as ClientSession;
use pingora_core::protocols::http::v1::server::HttpSession as ServerSession;
use pingora_core::protocols::l4::stream::Stream;
use pingora_http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fields the gateway adds to a plain route's request: `X-Request-Id`, `X-Forwarded-For`,
/// `X-Real-IP`, `X-Client-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
/// `X-Request-Timestamp` (see `proxy::headers::set_forwarding`).
const ADDED: usize = 7;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

#[tokio::test]
async fn a_parsed_request_takes_the_proxys_headers_without_growing() {
    let (mut client, server) = pair().await;
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: gw.example\r\nUser-Agent: t\r\n\r\n")
        .await
        .unwrap();
    let mut session = ServerSession::new(Box::new(Stream::from(server)));
    session.read_request().await.unwrap().expect("a request");
    let req = session.req_header();
    assert_eq!(req.headers.len(), 2);
    assert!(
        req.headers.capacity() >= 2 + ADDED,
        "capacity {} for 2 parsed fields: the map would grow while the proxy adds {ADDED}",
        req.headers.capacity()
    );
}

#[tokio::test]
async fn a_parsed_response_takes_the_proxys_headers_without_growing() {
    let (client, mut server) = pair().await;
    let mut session = ClientSession::new(Box::new(Stream::from(client)));
    let req = RequestHeader::build("GET", b"/", None).unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    let mut buf = [0u8; 512];
    let _ = server.read(&mut buf).await.unwrap();
    server
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: u\r\n\r\n")
        .await
        .unwrap();
    session.read_response().await.unwrap();
    let resp = session.resp_header().expect("a response");
    assert_eq!(resp.headers.len(), 2);
    // The response gets `X-Request-Id` and, on a rate-limited route, three `RateLimit-*`.
    assert!(
        resp.headers.capacity() >= 2 + 4,
        "capacity {} for 2 parsed fields",
        resp.headers.capacity()
    );
}
