//! The per-request context: the pinned snapshot and what each stage found.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_filters::BodyTransform;
use http::{HeaderName, HeaderValue};

use crate::client_addr::ClientAddr;
use crate::state::{Route, Snapshot};
use crate::telemetry::InflightGuard;
use crate::upstream::Endpoint;

/// The status and stable code (`X-Gatehouse-Error`) of the answer the gateway made
/// itself (rendered from a `Refusal` by `respond::refuse`), for the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status sent.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// The `grpc-status` sent to a gRPC request, whose answer carries HTTP 200 while
    /// metrics and the access log record `status` (so error rates see it).
    pub grpc_status: Option<u8>,
}

/// Decrements an endpoint's in-flight count when the try ends.
pub struct EndpointInflight(pub Arc<Endpoint>);

impl Drop for EndpointInflight {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Everything one request carries from phase to phase.
pub struct RequestCtx {
    /// The snapshot pinned at the start.
    pub snap: Arc<Snapshot>,
    /// When the request started.
    pub started: Instant,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// Request id (kept from the client when valid, else generated).
    pub request_id: String,
    /// The client's address: resolved once from the peer and the listener's trusted
    /// proxies; feeds `client_ip` rate limits and the access log.
    pub client_ip: Option<IpAddr>,
    /// The connection's peer and whether it is a trusted proxy.
    pub client: Option<ClientAddr>,
    /// Whether the request came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// Normalized path.
    pub path: String,
    /// Parameters the route's path template captured (`{id}` -> `42`), still
    /// percent-encoded; empty for other routes.
    pub path_params: Vec<(Arc<str>, String)>,
    /// Original Host header value.
    pub host_header: Option<HeaderValue>,
    /// Endpoint of the current try.
    pub endpoint: Option<Arc<Endpoint>>,
    /// The first try's peer, chosen in `proxy_upstream_filter` for `upstream_peer`.
    pub next_peer: Option<Box<pingora_core::upstreams::peer::HttpPeer>>,
    /// Endpoints tried so far (retries prefer others).
    pub tried: Vec<Arc<Endpoint>>,
    /// Tries made.
    pub tries: u32,
    /// Set once pingora asked for a peer: after that, pingora never keeps the downstream
    /// connection after an error (even when no peer could be chosen).
    pub upstream_phase: bool,
    /// Set when the gateway itself produced the response status.
    pub gateway_error: Option<GatewayError>,
    /// Status the upstream answered, if it did.
    pub upstream_status: Option<u16>,
    /// The code of an upstream failure after the response header went out
    /// (`upstream_truncated`, `upstream_timeout`), for the access log.
    pub body_error: Option<&'static str>,
    /// Request body bytes seen.
    pub body_bytes: u64,
    /// Headers filters asked to add to the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Body transforms of response filters, applied in order.
    pub body_transforms: Vec<Box<dyn BodyTransform>>,
    /// Keeps the in-flight gauge right.
    pub inflight: Option<InflightGuard>,
    /// Keeps the endpoint's in-flight count right.
    pub endpoint_inflight: Option<EndpointInflight>,
    /// Whether the current try's outcome was counted (once per try).
    pub try_outcome_recorded: bool,
    /// Breaker admission, bulkhead slot and retry state (see `proxy/resilience.rs`).
    pub resilience: super::resilience::RequestResilience,
    /// Time spent in filters, request and response phases (the access log's `filter_ms`).
    pub filter_time: Duration,
    /// What filters keep from the request phase to the response phase (a wasm filter's
    /// guest context); dropped, and so ended, with the request.
    pub filter_state: gatehouse_filters::FilterState,
    /// The request's spans, when `tracing` is configured.
    pub trace: Option<super::trace::RequestTrace>,
    /// The tunnel of an upgraded connection (after a `101`).
    pub tunnel: Option<super::tunnel::Tunnel>,
}

impl RequestCtx {
    /// A context pinned to `snap`.
    pub fn new(snap: Arc<Snapshot>) -> Self {
        Self {
            snap,
            started: Instant::now(),
            route: None,
            next_peer: None,
            request_id: String::new(),
            client_ip: None,
            tls: false,
            client: None,
            path: String::new(),
            path_params: Vec::new(),
            host_header: None,
            endpoint: None,
            tried: Vec::new(),
            tries: 0,
            upstream_phase: false,
            gateway_error: None,
            upstream_status: None,
            body_error: None,
            body_bytes: 0,
            response_headers: Vec::new(),
            body_transforms: Vec::new(),
            inflight: None,
            endpoint_inflight: None,
            try_outcome_recorded: false,
            resilience: Default::default(),
            filter_time: Duration::ZERO,
            filter_state: Default::default(),
            trace: None,
            tunnel: None,
        }
    }

    /// Route name, or "" before routing.
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.name)
    }

    /// The trace id (32 hex digits), or "" without tracing.
    pub fn trace_id(&self) -> &str {
        self.trace.as_ref().map_or("", |t| t.trace_id())
    }

    /// Upstream name, or "" before routing.
    pub fn upstream_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.cluster.name())
    }
}
