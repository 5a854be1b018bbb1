//! `proxy_get_property` / `proxy_set_property`: the request and source attributes Envoy
//! documents that the gateway knows (`request.path`, `.url_path`, `.host`, `.scheme`,
//! `.method`, `.query`, `.protocol`, `.id`, `.useragent`, `.referer`; `source.address`;
//! `response.code`; `route_name`, `plugin_name`, `plugin_root_id`, `plugin_vm_id`). Strings
//! are raw bytes, integers 8 bytes little-endian (as Envoy serializes them). Values a guest
//! sets live for its stream and are read back first.

use wasmtime::{Caller, Linker};

use crate::abi::{property_path, Status};
use crate::memory::{give, read, status};
use crate::state::HostState;

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", get)?;
    linker.func_wrap("env", "proxy_set_property", set)?;
    Ok(())
}

fn text(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// The property at `path` (segments), if the gateway knows it now.
fn lookup(st: &HostState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let s = &st.stream;
    let req = s.has_request.then_some(&s.request);
    let header = |name: &str| {
        req.and_then(|r| r.headers.get(name))
            .map(|v| v.as_bytes().to_vec())
    };
    match path {
        [b"request", b"path"] => req.map(|r| {
            r.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes()
                .to_vec()
        }),
        [b"request", b"url_path"] => req.and_then(|r| text(r.uri.path())),
        [b"request", b"query"] => req.and_then(|r| r.uri.query()).and_then(text),
        [b"request", b"host"] => req
            .and_then(|r| r.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
            .or_else(|| header("host")),
        [b"request", b"scheme"] => req.and_then(|r| text(r.uri.scheme_str().unwrap_or("http"))),
        [b"request", b"method"] => req.and_then(|r| text(r.method.as_str())),
        [b"request", b"protocol"] => req.and_then(|r| text(&format!("{:?}", r.version))),
        [b"request", b"id"] => text(&s.info.request_id),
        [b"request", b"useragent"] => header("user-agent"),
        [b"request", b"referer"] => header("referer"),
        [b"source", b"address"] => s.info.client_ip.and_then(|ip| text(&ip.to_string())),
        [b"response", b"code"] if s.has_response => {
            Some(i64::from(s.response.status.as_u16()).to_le_bytes().to_vec())
        }
        [b"route_name"] => text(&s.info.route),
        [b"plugin_name"] => text(&st.plugin.name),
        [b"plugin_root_id"] => text(&st.plugin.root_id),
        [b"plugin_vm_id"] => text(&st.plugin.vm_id),
        _ => None,
    }
}

fn get(mut caller: Caller<'_, HostState>, ptr: i32, len: i32, ret_ptr: i32, ret_size: i32) -> i32 {
    let r = read(&mut caller, ptr, len).and_then(|raw| {
        let st = caller.data();
        let value = match st.stream.properties.get(&raw) {
            Some(v) => v.clone(),
            None => lookup(st, &property_path(&raw)).ok_or(Status::NotFound)?,
        };
        give(&mut caller, &value, ret_ptr, ret_size)
    });
    status(r)
}

fn set(mut caller: Caller<'_, HostState>, ptr: i32, len: i32, val_ptr: i32, val_len: i32) -> i32 {
    let r = read(&mut caller, ptr, len).and_then(|key| {
        let value = read(&mut caller, val_ptr, val_len)?;
        caller.data_mut().stream.properties.insert(key, value);
        Ok(())
    });
    status(r)
}
