//! One HTTP stream (request and response) through one plugin: an HTTP context in the proxy
//! thread's instance of the plugin, the header and body callbacks, and
//! `proxy_on_done`/`proxy_on_log`/`proxy_on_delete` when the stream is dropped.
//!
//! The stream keeps its own state (`state::Stream`) and moves it into the store for each
//! call (a pointer swap), so the thread's other streams are called between two of its
//! callbacks. The request and response headers are moved into that state for each call
//! (swapped with placeholders it keeps, so no allocation) and moved back after it, so host
//! functions edit pingora's headers in place. From the response phase on the state keeps a
//! copy of the request (read-only in effect), as Envoy keeps the request's headers readable.

use std::sync::Arc;

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::abi::{buffer, ACTION_CONTINUE};
use crate::instance::{Failure, GuestError, Instance, ROOT};
use crate::plugin::Plugin;
use crate::state::{CallAnswer, CallRequest, HostState, LocalResponse, Stream, StreamInfo};
use crate::vm::{self, Vm};
use wasmtime::{Store, TypedFunc, WasmParams, WasmResults};

/// What the stream does after a callback.
#[derive(Debug)]
pub enum Step {
    /// Go on (to the next filter, the upstream, or downstream).
    Continue,
    /// Answer with this response instead (`proxy_send_local_response`).
    Respond(LocalResponse),
    /// The guest paused and waits for these calls' answers (send them with
    /// [`crate::http::send`], deliver each with [`HttpStream::call_response`]). Empty: it
    /// waits for nothing more than what was already asked.
    Wait(Vec<CallRequest>),
}

/// Which headers a callback has in reach besides the stream's kept state.
pub enum Phase<'a> {
    /// The request phase: the request header, editable.
    Request(&'a mut RequestHeader),
    /// The response phase: the response header, editable (the request's copy is kept).
    Response(&'a mut ResponseHeader),
}

/// One stream's context in its thread's instance.
pub struct HttpStream {
    plugin: Arc<Plugin>,
    vm: Arc<Vm>,
    /// Its state, moved into the store for each call (`None` once dropped).
    state: Option<Box<Stream>>,
    id: u32,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream")
            .field("module", &self.plugin.name())
            .field("id", &self.id)
            .finish()
    }
}

impl HttpStream {
    /// Creates the stream's HTTP context in this thread's instance of `plugin` (started
    /// first when the thread has none or its last one failed).
    ///
    /// # Errors
    ///
    /// A new instance could not start, or the guest trapped creating the context.
    pub fn open(plugin: &Arc<Plugin>, info: StreamInfo<'_>) -> Result<Self, GuestError> {
        let vm = vm::get(plugin)?;
        let (state, id) = {
            let mut inst = vm.lock();
            let mut state = inst.stream_state()?;
            let id = inst.next_context();
            state.reset(id, info);
            (state, id)
        };
        let mut me = Self {
            plugin: plugin.clone(),
            vm,
            state: Some(state),
            id,
        };
        me.with_inst(|inst| inst.call(|s, ex| ex.context_create.call(s, (id, ROOT))))?;
        Ok(me)
    }

    /// Runs `f` on the instance with this stream's state moved into the store; fails at once
    /// when a call into the instance failed before (this stream's or another's: the guest's
    /// state went with it, as when a VM fails in Envoy).
    fn with_inst<R>(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<R, GuestError>,
    ) -> Result<R, GuestError> {
        let mut inst = self.vm.lock();
        let state = match self.state.as_mut() {
            Some(state) if !inst.poisoned => state,
            _ => {
                return Err(GuestError {
                    module: self.plugin.name().to_string(),
                    failure: Failure::Trap,
                    message: "the instance holding the stream's context failed before".into(),
                })
            }
        };
        std::mem::swap(&mut inst.store.data_mut().stream, state);
        let r = f(&mut inst);
        std::mem::swap(&mut inst.store.data_mut().stream, state);
        r
    }

    /// Runs `f` on the instance in `phase`: its header moved into the stream's state (in the
    /// response phase the request's copy is there already) and `proxy_http_call` allowed.
    fn in_phase<R>(
        &mut self,
        phase: Phase<'_>,
        f: impl FnOnce(&mut Instance) -> Result<R, GuestError>,
    ) -> Result<R, GuestError> {
        self.with_inst(|inst| match phase {
            Phase::Request(req) => {
                with_moved(inst, req, |s| (&mut s.request, &mut s.has_request), f)
            }
            Phase::Response(resp) => {
                with_moved(inst, resp, |s| (&mut s.response, &mut s.has_response), f)
            }
        })
    }

    /// What follows a callback that returned `action`.
    fn step(inst: &mut Instance, action: u32) -> Step {
        let s = &mut inst.store.data_mut().stream;
        if let Some(local) = s.local.take() {
            return Step::Respond(local);
        }
        if s.resumed {
            s.resumed = false;
            return Step::Continue;
        }
        if action as i32 != ACTION_CONTINUE && !s.calls.is_empty() {
            return Step::Wait(std::mem::take(&mut s.calls));
        }
        // A pause with nothing to wait for continues: the next phase (the body) follows, as
        // Envoy goes on to the body after headers stopped iteration. Calls made by a callback
        // that continued are not sent.
        s.calls.clear();
        Step::Continue
    }

    /// `proxy_on_request_headers`.
    ///
    /// # Errors
    ///
    /// The guest trapped or ran out of time (the stream is then unusable).
    pub fn request_headers(
        &mut self,
        req: &mut RequestHeader,
        end_of_stream: bool,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.in_phase(Phase::Request(req), |inst| {
            if inst.ex.request_headers.is_none() {
                return Ok(Step::Continue);
            }
            let n = inst.store.data().stream.request.headers.len() as u32;
            let args = (id, n, u32::from(end_of_stream));
            let action = inst.call(|s, ex| call_or(&ex.request_headers, s, args, CONTINUE))?;
            Ok(Self::step(inst, action))
        })
    }

    /// `proxy_on_request_body` on `body` (the whole buffered body when `end_of_stream`), which
    /// the guest may read and rewrite (`proxy_set_buffer_bytes` on `HttpRequestBody`).
    /// Returns what follows and whether the guest rewrote `body` (then it holds the new
    /// bytes).
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn request_body(
        &mut self,
        req: &mut RequestHeader,
        body: &mut Bytes,
        end_of_stream: bool,
    ) -> Result<(Step, bool), GuestError> {
        let id = self.id;
        self.in_phase(Phase::Request(req), |inst| {
            if inst.ex.request_body.is_none() {
                return Ok((Step::Continue, false));
            }
            let len = body.len() as u32;
            {
                let s = &mut inst.store.data_mut().stream;
                std::mem::swap(&mut s.body, body);
                s.body_kind = Some(buffer::REQUEST_BODY);
                s.body_writable = true;
                s.body_changed = false;
            }
            let args = (id, len, u32::from(end_of_stream));
            let r = inst.call(|s, ex| call_or(&ex.request_body, s, args, CONTINUE));
            let s = &mut inst.store.data_mut().stream;
            s.body_kind = None;
            s.body_writable = false;
            *body = std::mem::take(&mut s.body);
            let changed = std::mem::take(&mut s.body_changed);
            Ok((Self::step(inst, r?), changed))
        })
    }

    /// `proxy_on_request_trailers` with `trailers` in reach (the guest may edit them).
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn request_trailers(
        &mut self,
        req: &mut RequestHeader,
        trailers: &mut http::HeaderMap,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.in_phase(Phase::Request(req), |inst| {
            if inst.ex.request_trailers.is_none() {
                return Ok(Step::Continue);
            }
            let n = trailers.len() as u32;
            inst.store.data_mut().stream.request_trailers = Some(std::mem::take(trailers));
            let r = inst.call(|s, ex| call_or(&ex.request_trailers, s, (id, n), CONTINUE));
            let s = &mut inst.store.data_mut().stream;
            if let Some(t) = s.request_trailers.as_mut() {
                // Kept readable for the later phases as a copy.
                *trailers = t.clone();
            }
            Ok(Self::step(inst, r?))
        })
    }

    /// `proxy_on_http_call_response` for call `token`, in `phase` (the request's or the
    /// response's headers in reach: the guest usually edits them and resumes, or answers).
    /// `Step::Wait` with new calls when it made more; `Step::Wait(vec![])` when it neither
    /// resumed nor answered (it waits for calls still in flight).
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn call_response(
        &mut self,
        phase: Phase<'_>,
        token: u32,
        answer: CallAnswer,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.in_phase(phase, |inst| {
            if inst.ex.http_call_response.is_none() {
                return Ok(Step::Continue);
            }
            let (n, len) = (answer.headers.len() as u32, answer.body.len() as u32);
            inst.store.data_mut().stream.answer = Some(answer);
            let args = (id, token, n, len, 0);
            let r = inst.call(|s, ex| call_or(&ex.http_call_response, s, args, ()));
            inst.store.data_mut().stream.answer = None;
            r?;
            let s = &mut inst.store.data_mut().stream;
            if let Some(local) = s.local.take() {
                return Ok(Step::Respond(local));
            }
            if s.resumed {
                s.resumed = false;
                return Ok(Step::Continue);
            }
            Ok(Step::Wait(std::mem::take(&mut s.calls)))
        })
    }

    /// `proxy_on_response_headers`, with the response's headers in reach and, read-only in
    /// effect, a copy of the request as sent (Envoy keeps the request's headers readable in
    /// the response phase; edits to them change the copy only). The copy stays for the
    /// later callbacks, `proxy_on_log` included.
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn response_headers(
        &mut self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.with_inst(|inst| {
            if inst.ex.response_headers.is_none() {
                return Ok(Step::Continue);
            }
            let s = &mut inst.store.data_mut().stream;
            s.request.clone_from(req);
            s.has_request = true;
            with_moved(
                inst,
                resp,
                |s| (&mut s.response, &mut s.has_response),
                |inst| {
                    let n = inst.store.data().stream.response.headers.len() as u32;
                    let args = (id, n, u32::from(end_of_stream));
                    let action =
                        inst.call(|s, ex| call_or(&ex.response_headers, s, args, CONTINUE))?;
                    Ok(Self::step(inst, action))
                },
            )
        })
    }

    /// `proxy_on_response_body` on `body` (the chunks not yet let through), which the guest may
    /// rewrite. `Ok(true)`: let `body` through now; `Ok(false)`: the guest paused to see more.
    /// A `proxy_http_call` made here answers `InternalFailure` (the body phase cannot wait).
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn response_body(
        &mut self,
        body: &mut Bytes,
        end_of_stream: bool,
    ) -> Result<bool, GuestError> {
        let id = self.id;
        self.with_inst(|inst| {
            if inst.ex.response_body.is_none() {
                return Ok(true);
            }
            let s = &mut inst.store.data_mut().stream;
            std::mem::swap(&mut s.body, body);
            s.body_kind = Some(buffer::RESPONSE_BODY);
            s.body_writable = true;
            let args = (id, s.body.len() as u32, u32::from(end_of_stream));
            let r = inst.call(|s, ex| call_or(&ex.response_body, s, args, CONTINUE));
            let s = &mut inst.store.data_mut().stream;
            s.body_kind = None;
            s.body_writable = false;
            s.body_changed = false;
            *body = std::mem::take(&mut s.body);
            s.local = None;
            s.calls.clear();
            Ok(r? as i32 == ACTION_CONTINUE || end_of_stream)
        })
    }

    /// `proxy_on_response_trailers` with `trailers` in reach (the guest may edit them).
    /// `proxy_http_call` answers `InternalFailure` here.
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn response_trailers(&mut self, trailers: &mut http::HeaderMap) -> Result<(), GuestError> {
        let id = self.id;
        self.with_inst(|inst| {
            if inst.ex.response_trailers.is_none() {
                return Ok(());
            }
            let n = trailers.len() as u32;
            inst.store.data_mut().stream.response_trailers = Some(std::mem::take(trailers));
            let r = inst.call(|s, ex| call_or(&ex.response_trailers, s, (id, n), CONTINUE));
            let s = &mut inst.store.data_mut().stream;
            if let Some(t) = s.response_trailers.take() {
                *trailers = t;
            }
            s.local = None;
            s.calls.clear();
            r.map(drop)
        })
    }
}

/// Runs `f` with `header` swapped into its place in the stream's state (`slot`: the place and
/// the flag that says the header is there) and `proxy_http_call` allowed, then swaps it back.
fn with_moved<H, R>(
    inst: &mut Instance,
    header: &mut H,
    slot: fn(&mut Stream) -> (&mut H, &mut bool),
    f: impl FnOnce(&mut Instance) -> Result<R, GuestError>,
) -> Result<R, GuestError> {
    let s = &mut inst.store.data_mut().stream;
    s.calls_allowed = true;
    let (held, present) = slot(s);
    std::mem::swap(header, held);
    *present = true;
    let r = f(inst);
    let s = &mut inst.store.data_mut().stream;
    s.calls_allowed = false;
    let (held, present) = slot(s);
    *present = false;
    std::mem::swap(header, held);
    r
}

/// `ACTION_CONTINUE` as the callbacks return it.
const CONTINUE: u32 = ACTION_CONTINUE as u32;

/// Calls export `f` with `args`, or answers `absent` when the guest does not export it (the
/// callers check first, so that a missing callback skips the work around the call too).
fn call_or<P: WasmParams, R: WasmResults>(
    f: &Option<TypedFunc<P, R>>,
    store: &mut Store<HostState>,
    args: P,
    absent: R,
) -> wasmtime::Result<R> {
    match f {
        Some(f) => f.call(store, args),
        None => Ok(absent),
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        let id = self.id;
        // Each is skipped when not exported; a failure poisons the instance (its thread
        // starts another for the next stream).
        let ended = self.with_inst(|inst| {
            if inst.ex.done.is_some() {
                inst.call(|s, ex| call_or(&ex.done, s, id, 1))?;
            }
            if inst.ex.log.is_some() {
                inst.call(|s, ex| call_or(&ex.log, s, id, ()))?;
            }
            if inst.ex.delete.is_some() {
                inst.call(|s, ex| call_or(&ex.delete, s, id, ()))?;
            }
            Ok(())
        });
        if let (Ok(()), Some(mut state)) = (ended, self.state.take()) {
            state.reset(ROOT, StreamInfo::default());
            self.vm.lock().keep_stream_state(state);
        }
    }
}
