//! Logging, time, the root context's timer, and the stream-control calls: `proxy_log`,
//! `proxy_get_log_level`, `proxy_get_current_time_nanoseconds`,
//! `proxy_set_tick_period_milliseconds`, `proxy_set_effective_context`, `proxy_done`,
//! `proxy_continue_stream` (resume after a pause), `proxy_send_local_response`.

use wasmtime::{Caller, Linker};

use crate::abi::{self, Status};
use crate::memory::{read, status, write_u32, write_u64};
use crate::state::{HostState, LocalResponse};

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", log)?;
    linker.func_wrap("env", "proxy_get_log_level", log_level)?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", now)?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", tick_period)?;
    linker.func_wrap("env", "proxy_set_effective_context", effective_context)?;
    linker.func_wrap("env", "proxy_done", |_: Caller<'_, HostState>| 0)?;
    linker.func_wrap("env", "proxy_continue_stream", resume)?;
    // 0.2.0 name of the same call.
    linker.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: Caller<'_, HostState>| {
            c.data_mut().stream.resumed = true;
            0
        },
    )?;
    linker.func_wrap("env", "proxy_send_local_response", local_response)?;
    Ok(())
}

fn log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> i32 {
    let r = read(&mut caller, ptr, len).map(|msg| {
        let msg = String::from_utf8_lossy(&msg);
        let module = caller.data().plugin.name.as_str();
        let id = caller.data().stream.info.request_id.as_str();
        match level {
            0 => tracing::trace!(target: "wasm", module, request_id = id, "{msg}"),
            1 => tracing::debug!(target: "wasm", module, request_id = id, "{msg}"),
            2 => tracing::info!(target: "wasm", module, request_id = id, "{msg}"),
            3 => tracing::warn!(target: "wasm", module, request_id = id, "{msg}"),
            _ => tracing::error!(target: "wasm", module, request_id = id, "{msg}"),
        }
    });
    status(r)
}

fn log_level(mut caller: Caller<'_, HostState>, ret: i32) -> i32 {
    use tracing::level_filters::LevelFilter;
    let level = match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        _ => 4,
    };
    status(write_u32(&mut caller, ret, level))
}

fn now(mut caller: Caller<'_, HostState>, ret: i32) -> i32 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    status(write_u64(&mut caller, ret, ns))
}

fn tick_period(mut caller: Caller<'_, HostState>, ms: i32) -> i32 {
    caller.data_mut().tick_period_ms = ms as u32;
    0
}

fn resume(mut caller: Caller<'_, HostState>, _stream: i32) -> i32 {
    caller.data_mut().stream.resumed = true;
    0
}

#[allow(clippy::too_many_arguments)]
fn local_response(
    mut caller: Caller<'_, HostState>,
    code: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    _grpc_status: i32,
) -> i32 {
    if caller.data().in_root {
        return Status::BadArgument.code();
    }
    let r = (|| {
        let status = u16::try_from(code)
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or(Status::BadArgument)?;
        let details = read(&mut caller, details_ptr, details_len)?;
        let body = read(&mut caller, body_ptr, body_len)?;
        let raw = read(&mut caller, headers_ptr, headers_len)?;
        let headers = abi::deserialize_map(&raw).ok_or(Status::SerializationFailure)?;
        caller.data_mut().stream.local = Some(LocalResponse {
            status,
            headers,
            body,
            details: String::from_utf8_lossy(&details).into_owned(),
        });
        Ok(())
    })();
    status(r)
}

/// `proxy_set_effective_context`: the stream being called into (or the root) only. A thread's
/// streams share one instance, but a call is made on behalf of one of them and only that
/// stream's state is in the store, so another stream's id is refused with `BadArgument`
/// (Envoy's answer for a context it does not know; Envoy would switch to a live one). The
/// SDK's own use, before `on_http_call_response`, names the calling stream, which is the
/// current one here.
fn effective_context(c: Caller<'_, HostState>, id: i32) -> i32 {
    let current = c.data().stream.context;
    let ok = u32::try_from(id).is_ok_and(|id| id == current || id == crate::instance::ROOT);
    status(if ok { Ok(()) } else { Err(Status::BadArgument) })
}
