//! `proxy_http_call`: records the call on the stream and hands back a token; the filter
//! adapter sends it (asynchronously, the request waiting) once the guest's callback returns,
//! and delivers the answer through `proxy_on_http_call_response`. Calls are made from HTTP
//! contexts only; from the root context (`on_tick`, `on_configure`) they answer
//! `InternalFailure`, which the SDKs surface as an error.

use wasmtime::{Caller, Linker};

use crate::abi::{self, Status};
use crate::memory::{read, status, write_u32};
use crate::state::{CallRequest, HostState};

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_http_call", http_call)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut caller: Caller<'_, HostState>,
    up_ptr: i32,
    up_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    _trailers_ptr: i32,
    _trailers_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    if caller.data().in_root || !caller.data().stream.calls_allowed {
        return Status::InternalFailure.code();
    }
    let r = (|| {
        let upstream = String::from_utf8(read(&mut caller, up_ptr, up_len)?)
            .map_err(|_| Status::BadArgument)?;
        let raw = read(&mut caller, headers_ptr, headers_len)?;
        let headers = abi::deserialize_map(&raw).ok_or(Status::SerializationFailure)?;
        let has = |n: &[u8]| headers.iter().any(|(k, _)| k == n);
        if !(has(b":method") && has(b":path")) {
            return Err(Status::BadArgument);
        }
        let body = read(&mut caller, body_ptr, body_len)?;
        let st = caller.data_mut();
        st.next_token = st.next_token.wrapping_add(1).max(1);
        let token = st.next_token;
        st.stream.calls.push(CallRequest {
            token,
            upstream,
            headers,
            body,
            timeout: std::time::Duration::from_millis(u64::from(timeout_ms as u32).max(1)),
        });
        write_u32(&mut caller, ret_token, token)
    })();
    status(r)
}
