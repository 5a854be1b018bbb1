//! The `wasm` filter: runs a proxy-wasm module (ABI v0.2.1, e.g. a filter built with the
//! proxy-wasm Rust SDK for Envoy) on the route's requests and responses, through the host in
//! the `gatehouse-wasm` crate.
//!
//! ```yaml
//! filters:
//!   - wasm:
//!       module: filters/add_header.wasm     # relative to the config file
//!       config: { header: x-team, value: edge }   # or a string; given to proxy_on_configure
//!       root_id: add_header
//!       vm_config: { call_timeout: 100ms, memory_limit: 64MiB }
//! ```
//!
//! Per request: an HTTP context in the proxy thread's instance of the module (Envoy's model:
//! one instance per worker thread),
//! `proxy_on_request_headers` (waiting, without blocking the thread, for the answers of the
//! `proxy_http_call`s the guest paused for, all in flight at once), `proxy_on_request_body`
//! on the whole body when `request_body` is on (it may rewrite it), then
//! `proxy_on_response_headers` (calls waited for likewise) and `proxy_on_response_body` per
//! response chunk (buffered while the guest pauses, up to `max_body_bytes`), and
//! `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` when the request ends. A guest that traps or runs past
//! its time limit in the request phase gets the request answered 500 `wasm_trap`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gatehouse_wasm::{
    GuestError, HttpStream, LocalResponse, Phase, Plugin, PluginSpec, Step, StreamInfo,
};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    BodyTransform, BuildError, Filter, FilterBuildContext, FilterError, FilterOutcome,
    FilterRuntime, FilterState, RequestCx, RequestResult, Response, ResponseCx, ResponseResult,
};

/// Run a proxy-wasm filter module (ABI v0.2.1, as the Rust, Go and C++ SDKs build for Envoy).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The `.wasm` file, relative to the config file. Compiled once per distinct content
    /// (SHA-256), so a reload that keeps the file reuses the compiled code.
    pub module: PathBuf,
    /// The plugin configuration the module reads in `proxy_on_configure`: a string is
    /// passed as is, any other value as its JSON text. Default: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The root context's name (`plugin_root_id`). Default: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    /// The VM's settings and limits.
    #[serde(default)]
    pub vm_config: VmConfig,
    /// Read the whole request body (up to the route's `max_body_bytes`; a larger one is
    /// answered 413) before the upstream is chosen and give it to `proxy_on_request_body`
    /// (`end_of_stream` true), where the module may read and rewrite it; a rewritten body
    /// goes upstream with `Content-Length` set to its length. Default false: the body
    /// streams upstream unseen by the module.
    #[serde(default)]
    pub request_body: bool,
    /// Most response-body bytes held while the module pauses to see more (a larger body is
    /// let through as it is from there on). Default 1 MiB.
    #[serde(default = "default_max_body", deserialize_with = "crate::size::de")]
    #[schemars(with = "crate::size::ByteSize")]
    pub max_body_bytes: u64,
}

/// The VM of a `wasm` filter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Shared data is shared between the filters of the same `vm_id` (default: empty, all).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_id: String,
    /// The VM configuration the module reads in `proxy_on_vm_start`: a string as is, any
    /// other value as its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<serde_json::Value>,
    /// Longest a single call into the module may run; past it the call is stopped (epoch
    /// interruption), the request answered 500 `wasm_trap`, and the trap counted. Default
    /// 100ms.
    #[serde(default = "default_call_timeout")]
    #[schemars(with = "String")]
    pub call_timeout: crate::Duration,
    /// Largest linear memory of one instance. Default 64MiB.
    #[serde(default = "default_memory_limit", deserialize_with = "crate::size::de")]
    #[schemars(with = "crate::size::ByteSize")]
    pub memory_limit: u64,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vm_id: String::new(),
            configuration: None,
            call_timeout: default_call_timeout(),
            memory_limit: default_memory_limit(),
        }
    }
}

fn default_call_timeout() -> crate::Duration {
    crate::Duration::from_millis(100)
}

fn default_memory_limit() -> u64 {
    64 << 20
}

fn default_max_body() -> u64 {
    1 << 20
}

/// Most `proxy_http_call`s one phase (request or response) sends.
const MAX_CALLS: usize = 16;

fn config_bytes(v: &Option<serde_json::Value>) -> Vec<u8> {
    match v {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => other.to_string().into_bytes(),
    }
}

/// The filter: one loaded plugin.
pub struct Wasm {
    plugin: Arc<Plugin>,
    request_body: bool,
    max_body: usize,
}

impl Wasm {
    /// Reads, compiles (or reuses) and starts the module with its configuration.
    ///
    /// # Errors
    ///
    /// At `module`: the file cannot be read, is not a proxy-wasm module, or refuses or
    /// traps on its configuration; at `vm_config.memory_limit`: 0.
    pub fn new(
        cfg: &WasmConfig,
        cx: &FilterBuildContext<'_>,
        runtime: &FilterRuntime,
    ) -> Result<Self, BuildError> {
        let path = cx.resolve(&cfg.module);
        let bytes = std::fs::read(&path).map_err(|e| {
            BuildError::at("module", format!("cannot read {}: {e}", path.display()))
        })?;
        if cfg.vm_config.memory_limit == 0 {
            return Err(BuildError::at(
                "vm_config.memory_limit",
                "must be more than 0",
            ));
        }
        let name = path
            .file_stem()
            .map_or_else(|| "module".into(), |s| s.to_string_lossy().into_owned());
        let spec = PluginSpec {
            name,
            bytes,
            root_id: cfg.root_id.clone(),
            vm_id: cfg.vm_config.vm_id.clone(),
            vm_config: config_bytes(&cfg.vm_config.configuration),
            plugin_config: config_bytes(&cfg.config),
            call_timeout: cfg.vm_config.call_timeout.get(),
            memory_limit: usize::try_from(cfg.vm_config.memory_limit).unwrap_or(usize::MAX),
        };
        let plugin = Plugin::load(runtime.wasm(), spec)
            .map_err(|e| BuildError::at("module", format!("{}: {e}", path.display())))?;
        Ok(Self {
            plugin,
            request_body: cfg.request_body,
            max_body: usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX),
        })
    }

    /// The 500 for a guest that failed in the request phase (logged with the details; the
    /// trap was counted by the host).
    fn failed(&self, e: &GuestError, request_id: &str) -> FilterOutcome {
        tracing::warn!(request_id, module = %e.module, reason = e.failure.as_str(), error = %e, "wasm filter failed");
        FilterOutcome::Respond(Response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "wasm_trap",
            "the request's wasm filter failed",
        ))
    }

    /// Follows the guest from `step` until it continues or answers: the calls it waits for
    /// are all in flight at once (the request waits, the proxy thread serves others), and
    /// each answer is delivered as it comes, in `headers`' phase. `Some`: it answered.
    async fn drive(
        &self,
        stream: &mut HttpStream,
        mut headers: Headers<'_>,
        mut step: Step,
    ) -> Result<Option<LocalResponse>, GuestError> {
        // Most callbacks continue or answer at once: no call set for them (it allocates).
        match step {
            Step::Respond(local) => return Ok(Some(local)),
            Step::Continue => return Ok(None),
            Step::Wait(_) => {}
        }
        let runtime = self.plugin.runtime();
        let mut inflight = FuturesUnordered::new();
        let mut sent = 0usize;
        loop {
            match step {
                Step::Respond(local) => return Ok(Some(local)),
                Step::Continue => return Ok(None),
                Step::Wait(calls) => {
                    for call in calls {
                        if sent == MAX_CALLS {
                            tracing::warn!(module = %self.plugin.name(), "wasm filter: more than {MAX_CALLS} http calls in one phase; the rest are not sent");
                            break;
                        }
                        sent += 1;
                        inflight.push(async move {
                            let answer = gatehouse_wasm::http::send(runtime, &call).await;
                            (call.token, answer)
                        });
                    }
                }
            }
            let Some((token, answer)) = inflight.next().await else {
                // Paused with nothing in flight: Envoy would wait for ever; go on instead.
                return Ok(None);
            };
            step = stream.call_response(headers.phase(), token, answer)?;
        }
    }
}

/// The headers a phase's callbacks have in reach.
enum Headers<'a> {
    Request(&'a mut RequestHeader),
    Response(&'a mut ResponseHeader),
}

impl Headers<'_> {
    fn phase(&mut self) -> Phase<'_> {
        match self {
            Headers::Request(r) => Phase::Request(r),
            Headers::Response(r) => Phase::Response(r),
        }
    }
}

/// A guest's local response as the gateway sends it.
fn to_response(local: LocalResponse) -> Response {
    let headers = local
        .headers
        .into_iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(&n).ok()?,
                HeaderValue::from_bytes(&v).ok()?,
            ))
        })
        .collect();
    Response {
        status: StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error_code: None,
        message: local.details.into(),
        headers,
        body: Some(Bytes::from(local.body)),
    }
}

#[async_trait]
impl Filter for Wasm {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn buffers_request_body(&self) -> bool {
        self.request_body
    }

    async fn on_request(&self, req: &mut RequestHeader, cx: &mut RequestCx<'_>) -> RequestResult {
        let info = StreamInfo {
            client_ip: cx.client_ip,
            request_id: cx.request_id,
            route: cx.route,
        };
        let mut stream = match HttpStream::open(&self.plugin, info) {
            Ok(s) => s,
            Err(e) => return Ok(self.failed(&e, cx.request_id)),
        };
        let no_body = match (self.request_body, &cx.body) {
            (true, body) => body.is_none(),
            (false, _) => {
                let h = &req.headers;
                h.get(http::header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() == b"0")
                    || !(h.contains_key(http::header::CONTENT_LENGTH)
                        || h.contains_key(http::header::TRANSFER_ENCODING))
            }
        };
        let mut result = match stream.request_headers(req, no_body) {
            Ok(step) => self.drive(&mut stream, Headers::Request(req), step).await,
            Err(e) => Err(e),
        };
        if let (Ok(None), true, Some(body)) = (&result, self.request_body, cx.body.as_deref_mut()) {
            let mut bytes = body.bytes().clone();
            result = match stream.request_body(req, &mut bytes, true) {
                Ok((step, rewritten)) => {
                    if rewritten {
                        body.replace(bytes);
                    }
                    self.drive(&mut stream, Headers::Request(req), step).await
                }
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(Some(local)) => Ok(FilterOutcome::Respond(to_response(local))),
            Ok(None) => {
                cx.state.put(FilterState::key(self), stream);
                Ok(FilterOutcome::Continue)
            }
            Err(e) => Ok(self.failed(&e, cx.request_id)),
        }
    }

    /// `proxy_on_request_trailers`, with the guest context kept from the request phase (none
    /// when the response phase already took it: the request's end came after the answer).
    fn on_request_trailers(
        &self,
        req: &mut RequestHeader,
        trailers: &mut http::HeaderMap,
        state: &FilterState,
    ) {
        let key = FilterState::key(self);
        let Some(mut stream) = state.take::<HttpStream>(key) else {
            return;
        };
        if let Err(e) = stream.request_trailers(req, trailers) {
            tracing::warn!(module = %e.module, error = %e, "wasm filter failed on the request trailers; sent as they are");
        }
        state.put(key, *stream);
    }

    fn waits_in_response(&self) -> bool {
        true
    }

    async fn on_response_waiting(
        &self,
        resp: &mut ResponseHeader,
        cx: &ResponseCx<'_>,
    ) -> ResponseResult {
        let Some(mut stream) = cx.state.take::<HttpStream>(FilterState::key(self)) else {
            return Ok(None);
        };
        let failed = |e: GuestError| FilterError {
            kind: "wasm",
            message: e.to_string(),
        };
        let step = stream
            .response_headers(cx.request, resp, false)
            .map_err(failed)?;
        let local = self
            .drive(&mut stream, Headers::Response(resp), step)
            .await
            .map_err(failed)?;
        if let Some(local) = local {
            replace_response(resp, &local).map_err(FilterError::header("wasm"))?;
            return Ok(Some(Box::new(Replaced {
                body: Some(Bytes::from(local.body)),
                _stream: stream,
            })));
        }
        Ok(Some(Box::new(ResponseBody {
            stream,
            pending: Bytes::new(),
            max: self.max_body,
            passthrough: false,
        })))
    }
}

/// Turns the upstream's response header into the guest's local response.
fn replace_response(resp: &mut ResponseHeader, local: &LocalResponse) -> pingora_error::Result<()> {
    resp.set_status(local.status)?;
    let names: Vec<HeaderName> = resp.headers.keys().cloned().collect();
    for n in names {
        resp.remove_header(&n);
    }
    for (n, v) in &local.headers {
        resp.append_header(String::from_utf8_lossy(n).into_owned(), v.as_slice())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, local.body.len().to_string())?;
    Ok(())
}

/// The upstream's body replaced by a guest's local response from the response phase.
struct Replaced {
    body: Option<Bytes>,
    _stream: Box<HttpStream>,
}

impl BodyTransform for Replaced {
    fn transform(&mut self, _chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        if end_of_stream {
            self.body.take()
        } else {
            None
        }
    }
}

/// The response body through `proxy_on_response_body`. `pending`: the bytes not yet let
/// through; a chunk is handed to the guest as it came (no copy) unless the guest paused on
/// earlier ones, which are then joined with it.
struct ResponseBody {
    stream: Box<HttpStream>,
    pending: Bytes,
    max: usize,
    passthrough: bool,
}

impl BodyTransform for ResponseBody {
    fn transform(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        if self.passthrough {
            return chunk;
        }
        if let Some(c) = chunk {
            self.pending = if self.pending.is_empty() {
                c
            } else {
                let mut joined = Vec::with_capacity(self.pending.len() + c.len());
                joined.extend_from_slice(&self.pending);
                joined.extend_from_slice(&c);
                Bytes::from(joined)
            };
        }
        if self.pending.len() > self.max {
            tracing::warn!(
                limit = self.max,
                "wasm filter: response body over max_body_bytes, sent as is"
            );
            self.passthrough = true;
            return Some(std::mem::take(&mut self.pending));
        }
        if self.pending.is_empty() && !end_of_stream {
            return None;
        }
        match self.stream.response_body(&mut self.pending, end_of_stream) {
            Ok(true) => Some(std::mem::take(&mut self.pending)),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(module = %e.module, error = %e, "wasm filter failed on the response body; sent as is");
                self.passthrough = true;
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
    fn trailers(&mut self, trailers: &mut http::HeaderMap) {
        if let Err(e) = self.stream.response_trailers(trailers) {
            tracing::warn!(module = %e.module, error = %e, "wasm filter failed on the response trailers; sent as they are");
        }
    }
}

/// The wasm host of a [`FilterRuntime`].
pub(crate) fn runtime(
    registry: &prometheus::Registry,
) -> Result<Arc<gatehouse_wasm::WasmRuntime>, BuildError> {
    gatehouse_wasm::WasmRuntime::new(registry)
        .map(Arc::new)
        .map_err(BuildError::new)
}
