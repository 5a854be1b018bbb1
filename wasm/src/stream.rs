//! One HTTP stream (request and response) through one plugin: an instance taken from the
//! thread's pool for the stream's life, an HTTP context created in it, the header and body
//! callbacks, and `proxy_on_done`/`proxy_on_log`/`proxy_on_delete` when the stream is
//! dropped (then the instance goes back to the pool of the thread that drops it).
//!
//! The request and response headers are moved into the store for each call (swapped with
//! placeholders kept in the store, so no allocation) and moved back after it, so host
//! functions edit pingora's headers in place.

use std::sync::Arc;

use pingora_http::{RequestHeader, ResponseHeader};

use crate::abi::{buffer, ACTION_CONTINUE};
use crate::instance::{GuestError, Instance, ROOT};
use crate::plugin::Plugin;
use crate::pool;
use crate::state::{CallAnswer, CallRequest, LocalResponse, StreamInfo};

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

/// One stream's context in one instance.
pub struct HttpStream {
    plugin: Arc<Plugin>,
    inst: Option<Instance>,
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
    /// Takes an instance and creates the stream's HTTP context in it.
    ///
    /// # Errors
    ///
    /// A new instance could not start, or the guest trapped creating the context.
    pub fn open(plugin: &Arc<Plugin>, info: StreamInfo) -> Result<Self, GuestError> {
        let mut inst = plugin.instance()?;
        inst.store.data_mut().stream.reset(info);
        let id = inst.next_context();
        let create = inst.ex.context_create.clone();
        inst.call(|s| create.call(s, (id, ROOT)))?;
        Ok(Self {
            plugin: plugin.clone(),
            inst: Some(inst),
            id,
        })
    }

    fn inst(&mut self) -> Result<&mut Instance, GuestError> {
        self.inst.as_mut().ok_or_else(|| GuestError {
            module: self.plugin.name().to_string(),
            failure: crate::instance::Failure::Trap,
            message: "the stream's instance failed before".into(),
        })
    }

    /// Runs `f` with `req` moved into the store.
    fn with_request<R>(
        &mut self,
        req: &mut RequestHeader,
        f: impl FnOnce(&mut Instance) -> Result<R, GuestError>,
    ) -> Result<R, GuestError> {
        let inst = self.inst()?;
        std::mem::swap(req, &mut inst.store.data_mut().stream.request);
        inst.store.data_mut().stream.has_request = true;
        let r = f(inst);
        inst.store.data_mut().stream.has_request = false;
        std::mem::swap(req, &mut inst.store.data_mut().stream.request);
        r
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
        // Envoy goes on to the body after headers stopped iteration.
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
        self.with_request(req, |inst| {
            let Some(f) = inst.ex.request_headers.clone() else {
                return Ok(Step::Continue);
            };
            let n = inst.store.data().stream.request.headers.len() as u32;
            let action = inst.call(|s| f.call(s, (id, n, u32::from(end_of_stream))))?;
            Ok(Self::step(inst, action))
        })
    }

    /// `proxy_on_request_body` with the whole buffered body (`end_of_stream` true). The body
    /// is readable, not writable.
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn request_body(
        &mut self,
        req: &mut RequestHeader,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.with_request(req, |inst| {
            let Some(f) = inst.ex.request_body.clone() else {
                return Ok(Step::Continue);
            };
            {
                let s = &mut inst.store.data_mut().stream;
                s.body.clear();
                s.body.extend_from_slice(body);
                s.body_kind = Some(buffer::REQUEST_BODY);
                s.body_writable = false;
            }
            let r = inst.call(|s| f.call(s, (id, body.len() as u32, u32::from(end_of_stream))));
            let s = &mut inst.store.data_mut().stream;
            s.body_kind = None;
            s.body.clear();
            Ok(Self::step(inst, r?))
        })
    }

    /// `proxy_on_http_call_response` for call `token`, with the request's headers in reach
    /// (the guest usually edits them and resumes, or answers). `Step::Wait` with new calls
    /// when it made more; `Step::Wait(vec![])` when it neither resumed nor answered.
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn call_response(
        &mut self,
        req: &mut RequestHeader,
        token: u32,
        answer: CallAnswer,
    ) -> Result<Step, GuestError> {
        let id = self.id;
        self.with_request(req, |inst| {
            let Some(f) = inst.ex.http_call_response.clone() else {
                return Ok(Step::Continue);
            };
            let (n, len) = (answer.headers.len() as u32, answer.body.len() as u32);
            inst.store.data_mut().stream.answer = Some(answer);
            let r = inst.call(|s| f.call(s, (id, token, n, len, 0)));
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

    /// `proxy_on_response_headers`, with the response's headers (and the request's, for
    /// properties) in reach. A call the guest makes here is not sent (the response phase
    /// does not wait).
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
        let inst = self.inst()?;
        let Some(f) = inst.ex.response_headers.clone() else {
            return Ok(Step::Continue);
        };
        // The request header is only read here: a clone of its parts would allocate, so only
        // the response is moved in; request properties read the stored copy below.
        let _ = req;
        std::mem::swap(resp, &mut inst.store.data_mut().stream.response);
        inst.store.data_mut().stream.has_response = true;
        let n = inst.store.data().stream.response.headers.len() as u32;
        let r = inst.call(|s| f.call(s, (id, n, u32::from(end_of_stream))));
        inst.store.data_mut().stream.has_response = false;
        std::mem::swap(resp, &mut inst.store.data_mut().stream.response);
        let action = r?;
        let step = Self::step(inst, action);
        Ok(match step {
            Step::Wait(_) => Step::Continue,
            s => s,
        })
    }

    /// `proxy_on_response_body` on `body` (the chunks not yet let through), which the guest may
    /// rewrite. `Ok(true)`: let `body` through now; `Ok(false)`: the guest paused to see more.
    ///
    /// # Errors
    ///
    /// As [`HttpStream::request_headers`].
    pub fn response_body(
        &mut self,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<bool, GuestError> {
        let id = self.id;
        let inst = self.inst()?;
        let Some(f) = inst.ex.response_body.clone() else {
            return Ok(true);
        };
        {
            let s = &mut inst.store.data_mut().stream;
            std::mem::swap(&mut s.body, body);
            s.body_kind = Some(buffer::RESPONSE_BODY);
            s.body_writable = true;
        }
        let len = inst.store.data().stream.body.len() as u32;
        let r = inst.call(|s| f.call(s, (id, len, u32::from(end_of_stream))));
        let s = &mut inst.store.data_mut().stream;
        s.body_kind = None;
        s.body_writable = false;
        std::mem::swap(&mut s.body, body);
        s.body.clear();
        s.local = None;
        Ok(r? as i32 == ACTION_CONTINUE || end_of_stream)
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        let Some(mut inst) = self.inst.take() else {
            return;
        };
        if inst.poisoned {
            return;
        }
        let id = self.id;
        if let Some(f) = inst.ex.done.clone() {
            let _ = inst.call(|s| f.call(s, id));
        }
        if let Some(f) = inst.ex.log.clone() {
            let _ = inst.call(|s| f.call(s, id));
        }
        if let Some(f) = inst.ex.delete.clone() {
            let _ = inst.call(|s| f.call(s, id));
        }
        if !inst.poisoned {
            inst.store.data_mut().stream.reset(StreamInfo::default());
            pool::put(&self.plugin, inst);
        }
    }
}
