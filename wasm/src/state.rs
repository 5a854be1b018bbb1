//! What a store carries between the host functions of one instance: the limits, the plugin's
//! settings, the guest's memory and allocator, and the state of the HTTP stream being called
//! into (each stream keeps its own and moves it into the store for the length of a call).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use wasmtime::{Memory, TypedFunc};

use crate::metrics::GuestMetric;
use crate::plugin::PluginShared;

/// A local response the guest asked for (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers, in the guest's order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body (may be empty).
    pub body: Vec<u8>,
    /// The guest's "status code details" (for the log).
    pub details: String,
}

/// A `proxy_http_call` waiting to be sent.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The token the guest got back.
    pub token: u32,
    /// The upstream named by the guest.
    pub upstream: String,
    /// Headers including `:method`, `:path`, `:authority`.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Timeout asked by the guest.
    pub timeout: std::time::Duration,
}

/// What came back from a `proxy_http_call` (no headers: the call failed).
#[derive(Debug, Clone, Default)]
pub struct CallAnswer {
    /// Headers with `:status` first; empty when the call failed.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

/// What the gateway knows about the request besides its header, for `proxy_get_property`.
/// Borrowed: the stream copies it into buffers its instance keeps from stream to stream, so
/// that opening a stream allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamInfo<'a> {
    /// The client's address (the TCP peer).
    pub client_ip: Option<IpAddr>,
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The route's name.
    pub route: &'a str,
}

/// The stream's [`StreamInfo`], owned by the instance (its strings reused).
#[derive(Debug, Default)]
pub(crate) struct OwnedInfo {
    pub client_ip: Option<IpAddr>,
    pub request_id: String,
    pub route: String,
}

impl OwnedInfo {
    fn set(&mut self, info: StreamInfo<'_>) {
        self.client_ip = info.client_ip;
        self.request_id.clear();
        self.request_id.push_str(info.request_id);
        self.route.clear();
        self.route.push_str(info.route);
    }
}

/// The state of one HTTP stream, moved into the store for each call on its behalf. In the request phase the request header is
/// moved in for the duration of one guest call (swapped with a placeholder, so no allocation)
/// and moved back after it; from the response phase on, `request` is a copy of the request as
/// it was sent (read-only in effect: edits change the copy only), kept until the stream ends so
/// that `proxy_on_log` reads it too. The response header is moved in for each call.
pub(crate) struct Stream {
    pub request: RequestHeader,
    pub has_request: bool,
    pub response: ResponseHeader,
    pub has_response: bool,
    /// The body buffer of the current body callback, and which one it is (`abi::buffer`).
    /// `Bytes`: the gateway's chunk is handed in and back without a copy; a guest's
    /// `proxy_set_buffer_bytes` makes a new buffer.
    pub body: Bytes,
    pub body_kind: Option<i32>,
    pub body_writable: bool,
    /// Whether the guest called `proxy_set_buffer_bytes` on `body` in this callback.
    pub body_changed: bool,
    /// Request and response trailers, when the stream has them (moved in for a trailers
    /// callback and kept readable after it).
    pub request_trailers: Option<http::HeaderMap>,
    pub response_trailers: Option<http::HeaderMap>,
    /// Whether `proxy_http_call` may be made now (an HTTP context in a phase that can wait).
    pub calls_allowed: bool,
    pub local: Option<LocalResponse>,
    pub calls: Vec<CallRequest>,
    pub answer: Option<CallAnswer>,
    pub resumed: bool,
    pub info: OwnedInfo,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// The stream's context id (the root context's while no stream is being called).
    pub context: u32,
}

impl Stream {
    pub fn new() -> Result<Self, String> {
        let request = RequestHeader::build("GET", b"/", Some(0)).map_err(|e| e.to_string())?;
        let response = ResponseHeader::build(200, Some(0)).map_err(|e| e.to_string())?;
        Ok(Self {
            request,
            has_request: false,
            response,
            has_response: false,
            body: Bytes::new(),
            body_kind: None,
            body_writable: false,
            body_changed: false,
            request_trailers: None,
            response_trailers: None,
            calls_allowed: false,
            local: None,
            calls: Vec::new(),
            answer: None,
            resumed: false,
            info: OwnedInfo::default(),
            properties: HashMap::new(),
            context: crate::instance::ROOT,
        })
    }

    /// Forgets the last stream (the headers were swapped back already) and serves the stream
    /// of context `context`.
    pub fn reset(&mut self, context: u32, info: StreamInfo<'_>) {
        self.context = context;
        self.body = Bytes::new();
        self.body_kind = None;
        self.body_changed = false;
        self.has_request = false;
        self.has_response = false;
        self.request_trailers = None;
        self.response_trailers = None;
        self.calls_allowed = false;
        self.local = None;
        self.calls.clear();
        self.answer = None;
        self.resumed = false;
        self.info.set(info);
        self.properties.clear();
    }
}

/// The data of one store (one instance).
pub(crate) struct HostState {
    pub limiter: crate::instance::Limiter,
    pub plugin: Arc<PluginShared>,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    /// The state of the stream being called into (the root's own between streams' calls).
    pub stream: Box<Stream>,
    /// Whether the current call is into the root context (configure, tick).
    pub in_root: bool,
    /// Set by `proxy_set_tick_period_milliseconds` (0: no timer).
    pub tick_period_ms: u32,
    pub next_token: u32,
    /// Guest metrics this instance used, by id (filled from the process table on first use).
    pub metrics: HashMap<u32, GuestMetric>,
}
