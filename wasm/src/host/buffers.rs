//! Buffer calls (`proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`): the body of the current
//! body callback, an HTTP call's answer body, and the VM and plugin configurations. The body
//! of the current body callback (request or response) may be rewritten; setting another
//! buffer answers `Unimplemented`.

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::abi::{buffer, Status};
use crate::memory::{give, read, status};
use crate::state::HostState;

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_buffer_bytes", get)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", set)?;
    Ok(())
}

fn slice(bytes: &[u8], start: i32, max: i32) -> Vec<u8> {
    let start = (start as u32 as usize).min(bytes.len());
    let end = start.saturating_add(max as u32 as usize).min(bytes.len());
    bytes[start..end].to_vec()
}

fn get(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> i32 {
    let st = caller.data();
    let bytes = match kind {
        buffer::REQUEST_BODY | buffer::RESPONSE_BODY if st.stream.body_kind == Some(kind) => {
            slice(&st.stream.body, start, max)
        }
        buffer::HTTP_CALL_RESPONSE_BODY => match &st.stream.answer {
            Some(a) => slice(&a.body, start, max),
            None => return Status::NotFound.code(),
        },
        buffer::VM_CONFIGURATION => slice(&st.plugin.vm_config, start, max),
        buffer::PLUGIN_CONFIGURATION => slice(&st.plugin.plugin_config, start, max),
        buffer::REQUEST_BODY | buffer::RESPONSE_BODY => return Status::NotFound.code(),
        _ => return Status::Unimplemented.code(),
    };
    status(give(&mut caller, &bytes, ret_ptr, ret_size))
}

fn set(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> i32 {
    let st = caller.data();
    if st.stream.body_kind != Some(kind) || !st.stream.body_writable {
        return Status::Unimplemented.code();
    }
    let r = read(&mut caller, ptr, len).map(|data| {
        let body = &mut caller.data_mut().stream.body;
        // Envoy's semantics: replace [start, start+size); start 0 size 0 prepends, start at
        // the end appends.
        let start = (start as u32 as usize).min(body.len());
        let end = start.saturating_add(size as u32 as usize).min(body.len());
        let mut new = Vec::with_capacity(body.len() - (end - start) + data.len());
        new.extend_from_slice(&body[..start]);
        new.extend_from_slice(&data);
        new.extend_from_slice(&body[end..]);
        *body = Bytes::from(new);
        caller.data_mut().stream.body_changed = true;
    });
    status(r)
}
