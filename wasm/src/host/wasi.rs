//! The few WASI preview 1 calls that guests built for `wasm32-wasip1` import through their
//! standard library: `fd_write` (stdout/stderr lines go to the gateway's log), empty
//! `environ_*`/`args_*`, `clock_time_get`, `random_get`, `sched_yield` and `proc_exit` (which
//! traps). Any other WASI call answers `ENOSYS`: a filter has no files, sockets or
//! environment.

use std::hash::{BuildHasher, Hasher};

use wasmtime::{Caller, Linker};

use crate::memory::{read, write, write_u32, write_u64};
use crate::state::HostState;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(WASI, "environ_sizes_get", sizes)?;
    linker.func_wrap(WASI, "args_sizes_get", sizes)?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| ERRNO_SUCCESS,
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| ERRNO_SUCCESS,
    )?;
    linker.func_wrap(WASI, "clock_time_get", clock_time_get)?;
    linker.func_wrap(WASI, "random_get", random_get)?;
    linker.func_wrap(WASI, "sched_yield", |_: Caller<'_, HostState>| {
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the filter called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}

fn fd_write(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> i32 {
    if fd != 1 && fd != 2 {
        return ERRNO_BADF;
    }
    let r = (|| {
        let table = read(
            &mut caller,
            iovs,
            iovs_len
                .checked_mul(8)
                .ok_or(crate::abi::Status::BadArgument)?,
        )?;
        let mut out = Vec::new();
        for iov in table.chunks_exact(8) {
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            out.extend(read(&mut caller, ptr, len)?);
        }
        let text = String::from_utf8_lossy(&out);
        let module = caller.data().plugin.name.as_str();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if fd == 1 {
                tracing::info!(target: "wasm", module, "stdout: {line}");
            } else {
                tracing::warn!(target: "wasm", module, "stderr: {line}");
            }
        }
        write_u32(&mut caller, nwritten, out.len() as u32)
    })();
    if r.is_ok() {
        ERRNO_SUCCESS
    } else {
        ERRNO_FAULT
    }
}

fn sizes(mut caller: Caller<'_, HostState>, count: i32, size: i32) -> i32 {
    match write_u32(&mut caller, count, 0).and_then(|()| write_u32(&mut caller, size, 0)) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn clock_time_get(mut caller: Caller<'_, HostState>, id: i32, _precision: i64, ret: i32) -> i32 {
    let ns = if id == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    } else {
        crate::engine::monotonic_ns()
    };
    match write_u64(&mut caller, ret, ns) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn random_get(mut caller: Caller<'_, HostState>, buf: i32, len: i32) -> i32 {
    // Seeds for the guest's hash maps, not key material: std's per-process random hasher
    // keys, stirred with the clock.
    let mut bytes = Vec::with_capacity(len.max(0) as usize);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    while bytes.len() < len.max(0) as usize {
        h.write_u64(crate::engine::monotonic_ns());
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    bytes.truncate(len.max(0) as usize);
    match write(&mut caller, buf, &bytes) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}
