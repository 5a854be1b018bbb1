//! Shared data and metrics calls: `proxy_get_shared_data`, `proxy_set_shared_data`,
//! `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`. A metric is looked up in the instance's own table first, so the
//! request path takes no lock once an instance has used it.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{give, read, status, write_u32, write_u64};
use crate::metrics::GuestMetric;
use crate::state::HostState;

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_shared_data", get_shared)?;
    linker.func_wrap("env", "proxy_set_shared_data", set_shared)?;
    linker.func_wrap("env", "proxy_define_metric", define_metric)?;
    linker.func_wrap("env", "proxy_increment_metric", increment_metric)?;
    linker.func_wrap("env", "proxy_record_metric", record_metric)?;
    linker.func_wrap("env", "proxy_get_metric", get_metric)?;
    Ok(())
}

fn get_shared(
    mut caller: Caller<'_, HostState>,
    kp: i32,
    kl: i32,
    ret_ptr: i32,
    ret_size: i32,
    ret_cas: i32,
) -> i32 {
    let r = read(&mut caller, kp, kl).and_then(|key| {
        let plugin = caller.data().plugin.clone();
        let (value, cas) = plugin
            .runtime
            .shared
            .get(&plugin.vm_id, &key)
            .ok_or(Status::NotFound)?;
        give(&mut caller, &value, ret_ptr, ret_size)?;
        write_u32(&mut caller, ret_cas, cas)
    });
    status(r)
}

fn set_shared(
    mut caller: Caller<'_, HostState>,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
    cas: i32,
) -> i32 {
    let r = read(&mut caller, kp, kl).and_then(|key| {
        let value = read(&mut caller, vp, vl)?;
        let plugin = caller.data().plugin.clone();
        plugin
            .runtime
            .shared
            .set(&plugin.vm_id, &key, value, cas as u32)
    });
    status(r)
}

fn define_metric(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    np: i32,
    nl: i32,
    ret_id: i32,
) -> i32 {
    let r = read(&mut caller, np, nl).and_then(|name| {
        let name = String::from_utf8(name).map_err(|_| Status::BadArgument)?;
        let id = caller.data().plugin.runtime.metrics.define(kind, &name)?;
        write_u32(&mut caller, ret_id, id)
    });
    status(r)
}

fn metric(caller: &mut Caller<'_, HostState>, id: i32) -> Result<GuestMetric, Status> {
    let id = id as u32;
    if let Some(m) = caller.data().metrics.get(&id) {
        return Ok(m.clone());
    }
    let m = caller
        .data()
        .plugin
        .runtime
        .metrics
        .get(id)
        .ok_or(Status::NotFound)?;
    caller.data_mut().metrics.insert(id, m.clone());
    Ok(m)
}

fn increment_metric(mut caller: Caller<'_, HostState>, id: i32, offset: i64) -> i32 {
    status(metric(&mut caller, id).and_then(|m| m.increment(offset)))
}

fn record_metric(mut caller: Caller<'_, HostState>, id: i32, value: i64) -> i32 {
    status(metric(&mut caller, id).and_then(|m| m.record(value as u64)))
}

fn get_metric(mut caller: Caller<'_, HostState>, id: i32, ret: i32) -> i32 {
    let r = metric(&mut caller, id).and_then(|m| write_u64(&mut caller, ret, m.get()));
    status(r)
}
