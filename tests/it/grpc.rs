//! gRPC through the gateway: a `tonic` client speaks h2c to the gateway, which speaks h2c
//! to a `tonic` server; unary and server-streaming calls, trailers and `grpc-status`
//! intact, and the gateway's own failures answered as gRPC statuses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::support::*;

/// The one message of the test service (hand-written prost: no protoc).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// Text echoed back.
    #[prost(string, tag = "1")]
    pub text: String,
    /// How many messages a stream sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// `test.Echo`: `Unary` echoes, `Fail` answers the status named by its text, `Slow` sleeps
/// `count` ms then echoes, `Stream` sends `count` messages then ends with OK, or with
/// `DATA_LOSS` and a trailer `x-detail` when the text is `fail`.
#[derive(Clone, Default)]
struct Echo {
    hits: Arc<AtomicUsize>,
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

/// One method of [`Echo`] as the tower service tonic's `Grpc` drives.
#[derive(Clone, Copy)]
struct Method(&'static str);

impl UnaryService<Msg> for Method {
    type Response = Msg;
    type Future = BoxFut<Result<Response<Msg>, Status>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let m = req.into_inner();
            match name {
                "Fail" => {
                    let mut md = MetadataMap::new();
                    md.insert("x-detail", "from-upstream".parse().unwrap());
                    Err(Status::with_metadata(
                        Code::from(m.count as i32),
                        m.text,
                        md,
                    ))
                }
                "Slow" => {
                    tokio::time::sleep(Duration::from_millis(m.count as u64)).await;
                    Ok(Response::new(Msg {
                        text: format!("slow {}", m.text),
                        count: m.count,
                    }))
                }
                _ => Ok(Response::new(Msg {
                    text: format!("echo {}", m.text),
                    count: m.count,
                })),
            }
        })
    }
}

type MsgStream = Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

/// `Stream`: `count` messages, then OK or (text `fail`) `DATA_LOSS` in the trailers.
#[derive(Clone, Copy)]
struct Streamer;

impl ServerStreamingService<Msg> for Streamer {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let mut items: Vec<Result<Msg, Status>> = (0..m.count)
                .map(|i| {
                    Ok(Msg {
                        text: format!("{} #{i}", m.text),
                        count: i,
                    })
                })
                .collect();
            if m.text == "fail" {
                let mut md = MetadataMap::new();
                md.insert("x-detail", "after-messages".parse().unwrap());
                items.push(Err(Status::with_metadata(
                    Code::DataLoss,
                    "stream broke",
                    md,
                )));
            }
            let s: MsgStream = Box::pin(futures_util::stream::iter(items));
            Ok(Response::new(s))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.hits.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Method("Unary"), req).await,
                "/test.Echo/Fail" => grpc.unary(Method("Fail"), req).await,
                "/test.Echo/Slow" => grpc.unary(Method("Slow"), req).await,
                "/test.Echo/Stream" => grpc.server_streaming(Streamer, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server (HTTP/2 only, as gRPC servers are) on a fresh loopback port.
struct GrpcUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn grpc_upstream() -> GrpcUpstream {
    let echo = Echo::default();
    let hits = echo.hits.clone();
    let (addr, task) = grpc_server(tonic::transport::Server::builder().add_service(echo)).await;
    GrpcUpstream { addr, hits, task }
}

/// A gRPC client over h2c to the gateway.
type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn client(gw: &TestGateway) -> Client {
    let ch = tonic::transport::Endpoint::from_shared(gw.url(""))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(ch)
}

async fn unary(
    c: &mut Client,
    path: &'static str,
    req: Request<Msg>,
) -> Result<Response<Msg>, Status> {
    c.ready().await.unwrap();
    c.unary(req, PathAndQuery::from_static(path), ProstCodec::default())
        .await
}

/// `/test.Echo/Stream` called with `req`: the stream of its answers.
async fn open_stream(c: &mut Client, req: Request<Msg>) -> tonic::Streaming<Msg> {
    c.ready().await.unwrap();
    let path = PathAndQuery::from_static("/test.Echo/Stream");
    let r = c.server_streaming(req, path, ProstCodec::<Msg, Msg>::default());
    r.await.unwrap().into_inner()
}

fn msg(text: &str, count: u32) -> Request<Msg> {
    Request::new(Msg {
        text: text.into(),
        count,
    })
}

/// The gateway's listener with h2c on, and `upstreams`/`routes` as given.
fn h2c_config(upstreams: &str, routes: &str) -> String {
    config(upstreams, routes).replacen(
        "address: \"{listen}\" }",
        "address: \"{listen}\", http: { h2c: true } }",
        1,
    )
}

fn grpc_upstream_yaml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  {name}: {{ protocol: h2c, discovery: {{ static: [ {{ address: \"{addr}\" }} ] }}{extra} }}\n")
}

#[tokio::test]
async fn unary_and_streaming_calls_pass_with_their_trailers() {
    let up = grpc_upstream().await;
    let gw = TestGateway::start(&h2c_config(
        &grpc_upstream_yaml("echo", up.addr, ""),
        "  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }\n",
    ))
    .await;
    let mut c = client(&gw).await;

    let r = unary(&mut c, "/test.Echo/Unary", msg("hi", 7))
        .await
        .unwrap_or_else(|s| panic!("unary failed: {s:?}\n{}", gw.logs()));
    assert_eq!(r.get_ref().text, "echo hi");
    assert_eq!(r.get_ref().count, 7);
    assert!(
        r.metadata().get("x-gatehouse-error").is_none(),
        "{:?}",
        r.metadata()
    );

    // The upstream's own error status, message and metadata pass unchanged.
    let s = unary(
        &mut c,
        "/test.Echo/Fail",
        msg("no such account", Code::NotFound as u32),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert_eq!(s.message(), "no such account");
    assert_eq!(s.metadata().get("x-detail").unwrap(), "from-upstream");
    assert!(s.metadata().get("x-gatehouse-error").is_none(), "{s:?}");

    // Server streaming: every message, then the status in the trailers after the data.
    let mut stream = open_stream(&mut c, msg("tick", 5)).await;
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.text);
    }
    assert_eq!(
        got,
        (0..5).map(|i| format!("tick #{i}")).collect::<Vec<_>>()
    );
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert!(trailers.get("grpc-status").is_none_or(|v| v == "0"));

    let mut stream = open_stream(&mut c, msg("fail", 3)).await;
    let mut n = 0;
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("the stream ended without its error status"),
            Err(s) => break s,
        }
    };
    assert_eq!(n, 3, "the messages before the error arrive");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(err.message(), "stream broke");
    assert_eq!(err.metadata().get("x-detail").unwrap(), "after-messages");
    assert_eq!(up.hits.load(Ordering::SeqCst), 4);
}

const SECRET: &str = "grpc-test-secret-at-least-32-bytes!!";

fn bearer(role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims =
        serde_json::json!({"sub": "7", "role": role, "iss": "gh", "aud": "gh", "exp": exp});
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

fn with_auth(mut r: Request<Msg>, value: &str) -> Request<Msg> {
    r.metadata_mut()
        .insert("authorization", value.parse().unwrap());
    r
}

/// Asserts a gateway-made gRPC failure: the status code, the gateway's error code in
/// `x-gatehouse-error` and a request id beside it.
fn assert_gateway_status(
    gw: &TestGateway,
    r: Result<Response<Msg>, Status>,
    code: Code,
    error: &str,
) {
    let s = r.expect_err("a gateway-made failure");
    assert_eq!(s.code(), code, "{s:?}\n{}", gw.logs());
    assert_eq!(
        s.metadata()
            .get("x-gatehouse-error")
            .map(|v| v.to_str().unwrap()),
        Some(error),
        "{s:?}"
    );
    assert!(s.metadata().get("x-request-id").is_some(), "{s:?}");
    assert!(!s.message().is_empty(), "{s:?}");
}

#[tokio::test]
async fn gateway_failures_reach_grpc_clients_as_grpc_statuses() {
    let up = grpc_upstream().await;
    let closed = free_port();
    let jwt = "jwt: { issuer: gh, audience: gh, keys: [ { secret_env: GRPC_JWT_SECRET, algorithms: [HS256] } ]";
    let upstreams = [
        grpc_upstream_yaml("echo", up.addr, ""),
        grpc_upstream_yaml("slow", up.addr, ", timeouts: { read: 300ms }"),
        format!("  dead: {{ protocol: h2c, discovery: {{ static: [ {{ address: \"127.0.0.1:{closed}\" }} ] }} }}\n"),
    ]
    .concat();
    let routes = format!(
        "  - {{ name: echo, match: {{ path_prefix: /test.Echo/ }}, upstream: echo }}\n\
         \x20 - {{ name: slow, match: {{ path: /slow.Echo/Slow }}, rewrite_path: /test.Echo/Slow, upstream: slow }}\n\
         \x20 - {{ name: dead, match: {{ path_prefix: /dead.Echo/ }}, upstream: dead }}\n\
         \x20 - {{ name: small, match: {{ path: /small.Echo/Unary }}, rewrite_path: /test.Echo/Unary, upstream: echo, max_body_bytes: 64 }}\n\
         \x20 - name: limited\n    match: {{ path: /limited.Echo/Unary }}\n    rewrite_path: /test.Echo/Unary\n    upstream: echo\n    filters:\n      - rate_limit: {{ name: grpc, key: client_ip, limit: 2, window: 1m }}\n\
         \x20 - name: secure\n    match: {{ path: /secure.Echo/Unary }}\n    rewrite_path: /test.Echo/Unary\n    upstream: echo\n    filters:\n      - {jwt} }}\n\
         \x20 - name: admin\n    match: {{ path: /admin.Echo/Unary }}\n    rewrite_path: /test.Echo/Unary\n    upstream: echo\n    filters:\n      - {jwt}, require: {{ role: ADMIN }} }}\n"
    );
    let gw = TestGateway::start_with_env(
        &h2c_config(&upstreams, &routes),
        &[("GRPC_JWT_SECRET", SECRET)],
    )
    .await;
    let mut c = client(&gw).await;

    // Routing per /package.Service/Method: an unknown service has no route.
    let r = unary(&mut c, "/other.Service/Method", msg("x", 0)).await;
    assert_gateway_status(&gw, r, Code::Unimplemented, "no_route");
    // The upstream refuses connections: unavailable.
    let r = unary(&mut c, "/dead.Echo/Unary", msg("x", 0)).await;
    assert_gateway_status(&gw, r, Code::Unavailable, "upstream_connect_failed");
    // The upstream does not answer within the read timeout: deadline exceeded.
    let r = unary(&mut c, "/slow.Echo/Slow", msg("x", 3000)).await;
    assert_gateway_status(&gw, r, Code::DeadlineExceeded, "upstream_timeout");
    // A message over the route's body limit.
    let r = unary(&mut c, "/small.Echo/Unary", msg(&"x".repeat(1000), 0)).await;
    assert_gateway_status(&gw, r, Code::ResourceExhausted, "body_too_large");
    // Rate limits count gRPC calls: two pass, the third is refused.
    for _ in 0..2 {
        let r = unary(&mut c, "/limited.Echo/Unary", msg("x", 0)).await;
        assert_eq!(r.unwrap().get_ref().text, "echo x");
    }
    let r = unary(&mut c, "/limited.Echo/Unary", msg("x", 0)).await;
    assert_gateway_status(&gw, r, Code::ResourceExhausted, "rate_limited");
    // JWT on gRPC metadata: none is unauthenticated, a wrong role is denied, a good one passes.
    let r = unary(&mut c, "/secure.Echo/Unary", msg("x", 0)).await;
    assert_gateway_status(&gw, r, Code::Unauthenticated, "unauthorized");
    let ok = unary(
        &mut c,
        "/secure.Echo/Unary",
        with_auth(msg("ok", 0), &bearer("USER")),
    )
    .await;
    assert_eq!(ok.unwrap().get_ref().text, "echo ok");
    let user = with_auth(msg("x", 0), &bearer("USER"));
    let r = unary(&mut c, "/admin.Echo/Unary", user).await;
    assert_gateway_status(&gw, r, Code::PermissionDenied, "forbidden");

    // The metrics count each by the status it stands for, as for any other request.
    let m = gw.metrics().await;
    for (route, class) in [
        ("slow", "5xx"),
        ("dead", "5xx"),
        ("limited", "4xx"),
        ("secure", "4xx"),
        ("admin", "4xx"),
    ] {
        assert!(
            m.lines().any(|l| l.starts_with("gatehouse_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status_class=\"{class}\""))
                && l.contains("source=\"gateway\"")),
            "{route} {class} counted:\n{}",
            m.lines()
                .filter(|l| l.starts_with("gatehouse_requests_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
