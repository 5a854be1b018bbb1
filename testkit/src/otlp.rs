//! An OTLP trace receiver inside the test: OTLP/HTTP (`POST /v1/traces`, protobuf) or
//! OTLP/gRPC on a loopback port, decoding each export with `opentelemetry-proto` into
//! spans a test can assert on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// `Span.kind` of OTLP (`SPAN_KIND_SERVER`).
pub const KIND_SERVER: i32 = 2;
/// `Span.kind` of OTLP (`SPAN_KIND_CLIENT`).
pub const KIND_CLIENT: i32 = 3;
/// `Status.code` of OTLP (`STATUS_CODE_ERROR`).
pub const STATUS_ERROR: i32 = 2;

/// One received span, its ids in lowercase hex as in `traceparent`.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// Span name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or "" for a root span.
    pub parent_span_id: String,
    /// OTLP span kind ([`KIND_SERVER`], [`KIND_CLIENT`], 1 internal).
    pub kind: i32,
    /// OTLP status code (0 unset, 1 ok, [`STATUS_ERROR`]).
    pub status: i32,
    /// Attributes, each value as text (`200`, `true`, `GET`).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Spans = Arc<Mutex<(Vec<ReceivedSpan>, usize)>>;

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    got: Spans,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn record(got: &Spans, req: ExportTraceServiceRequest) {
    let mut spans = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            spans.push(ReceivedSpan {
                service: service.clone(),
                name: s.name,
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent_span_id: hex(&s.parent_span_id),
                kind: s.kind,
                status: s.status.map_or(0, |st| st.code),
                attributes: s
                    .attributes
                    .into_iter()
                    .map(|kv| {
                        (
                            kv.key,
                            text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                        )
                    })
                    .collect(),
            });
        }
    }
    let mut g = got.lock().unwrap();
    g.0.extend(spans);
    g.1 += 1;
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpReceiver {
    /// An OTLP/HTTP receiver: `POST /v1/traces` with `application/x-protobuf`.
    pub async fn http() -> Self {
        let got = Spans::default();
        let st = got.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let st = st.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            record(&st, req);
                            let resp = ExportTraceServiceResponse::default().encode_to_vec();
                            (
                                StatusCode::OK,
                                [(header::CONTENT_TYPE, "application/x-protobuf")],
                                resp,
                            )
                                .into_response()
                        }
                        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, got, task }
    }

    /// An OTLP/gRPC receiver (the `TraceService` of `opentelemetry-proto`).
    pub async fn grpc() -> Self {
        let got = Spans::default();
        let svc = TraceServiceServer::new(Grpc(got.clone()));
        let (addr, task) =
            crate::grpc_server(tonic::transport::Server::builder().add_service(svc)).await;
        Self { addr, got, task }
    }

    /// The base URL to configure as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.got.lock().unwrap().0.clone()
    }

    /// How many export requests arrived.
    pub fn exports(&self) -> usize {
        self.got.lock().unwrap().1
    }

    /// Polls (every 50 ms, at most `within`) until `done` holds for the spans received,
    /// and returns them; panics with what arrived when it never does.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if std::time::Instant::now() > deadline {
                panic!("spans never satisfied the test within {within:?}: {spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
