//! Reading and writing the guest's linear memory from a host function, and handing the guest
//! bytes it owns (allocated with its `proxy_on_memory_allocate`, as the ABI requires).

use wasmtime::Caller;

use crate::abi::Status;
use crate::state::HostState;

/// `len` bytes at `ptr` of the guest's memory, copied.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, Status> {
    let mem = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&caller)
        .get(start..start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Status> {
    let mem = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.data_mut(caller)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes a u32 (little-endian, as wasm32 stores it) at `ptr`.
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    v: u32,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Writes a u64 at `ptr`.
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    v: u64,
) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates, and writes its address and size at
/// `ret_ptr` and `ret_size` (the ABI's `return_*_data`/`return_*_size` out-parameters).
/// Errors: the guest has no allocator, it failed (or trapped), or an address is out of
/// bounds.
pub(crate) fn give(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> Result<(), Status> {
    let alloc = caller.data().alloc.clone().ok_or(Status::InternalFailure)?;
    let len = u32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
    let addr = alloc
        .call(&mut *caller, len.max(1))
        .map_err(|_| Status::InternalFailure)?;
    if addr == 0 {
        return Err(Status::InternalFailure);
    }
    write(caller, addr as i32, bytes)?;
    write_u32(caller, ret_ptr, addr)?;
    write_u32(caller, ret_size, len)
}

/// The status a host function returns for `r`.
pub(crate) fn status(r: Result<(), Status>) -> i32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}
