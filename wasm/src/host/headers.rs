//! Header map calls (`proxy_get_header_map_pairs`, `_set_header_map_pairs`,
//! `_get_header_map_value`, `_replace_`, `_add_`, `_remove_header_map_value`) on the request and
//! response headers of the current stream and on an HTTP call's answer. Pseudo-headers follow
//! Envoy: `:method`, `:path` (with the query), `:authority`, `:scheme` on requests, `:status`
//! on responses. The trailer maps are the stream's trailers once they came (edited in place in
//! their callback); before that, or on a stream without trailers, they read as empty and an
//! edit answers `NotFound`, as in Envoy.

use wasmtime::{Caller, Linker};

use crate::abi::{self, map, Status};
use crate::memory::{self, give, read, status};
use crate::state::HostState;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub(crate) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_header_map_pairs", get_pairs)?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", set_pairs)?;
    linker.func_wrap("env", "proxy_get_header_map_value", get_value)?;
    linker.func_wrap("env", "proxy_replace_header_map_value", replace_value)?;
    linker.func_wrap("env", "proxy_add_header_map_value", add_value)?;
    linker.func_wrap("env", "proxy_remove_header_map_value", remove_value)?;
    Ok(())
}

/// Every pair of map `kind`, pseudo-headers first.
fn pairs(st: &HostState, kind: i32) -> Result<Pairs, Status> {
    let s = &st.stream;
    match kind {
        map::REQUEST_HEADERS if s.has_request => {
            let req = &s.request;
            let mut out: Pairs = Vec::with_capacity(req.headers.len() + 4);
            for p in [":authority", ":path", ":method", ":scheme"] {
                if let Some(v) = request_pseudo(req, p) {
                    out.push((p.as_bytes().to_vec(), v));
                }
            }
            for (n, v) in req.headers.iter() {
                out.push((n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            Ok(out)
        }
        map::RESPONSE_HEADERS if s.has_response => {
            let resp = &s.response;
            let mut out: Pairs = Vec::with_capacity(resp.headers.len() + 1);
            out.push((
                b":status".to_vec(),
                resp.status.as_str().as_bytes().to_vec(),
            ));
            for (n, v) in resp.headers.iter() {
                out.push((n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            Ok(out)
        }
        map::HTTP_CALL_RESPONSE_HEADERS => s
            .answer
            .as_ref()
            .map(|a| a.headers.clone())
            .ok_or(Status::NotFound),
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS => Ok(trailers(s, kind)
            .map(|t| {
                t.iter()
                    .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect()
            })
            .unwrap_or_default()),
        map::HTTP_CALL_RESPONSE_TRAILERS => Ok(Vec::new()),
        // The map of a phase that is not the current one (the request's in the response
        // phase, the response's in the request phase) reads as empty: the SDKs panic on
        // `NotFound` from this call, and a filter that looks must not trap for it.
        map::REQUEST_HEADERS | map::RESPONSE_HEADERS => Ok(Vec::new()),
        _ => Err(Status::BadArgument),
    }
}

/// The trailers of map `kind` (request or response), when the stream has them.
fn trailers(s: &crate::state::Stream, kind: i32) -> Option<&http::HeaderMap> {
    match kind {
        map::REQUEST_TRAILERS => s.request_trailers.as_ref(),
        map::RESPONSE_TRAILERS => s.response_trailers.as_ref(),
        _ => None,
    }
}

/// Edits a trailer map (no pseudo-headers there).
fn edit_trailers(t: &mut http::HeaderMap, name: &str, val: &[u8], how: Edit) -> Result<(), Status> {
    let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| Status::BadArgument)?;
    if how == Edit::Remove {
        t.remove(&name);
        return Ok(());
    }
    let val = http::HeaderValue::from_bytes(val).map_err(|_| Status::BadArgument)?;
    match how {
        Edit::Add => {
            t.append(name, val);
        }
        _ => {
            t.insert(name, val);
        }
    }
    Ok(())
}

fn request_pseudo(req: &pingora_http::RequestHeader, name: &str) -> Option<Vec<u8>> {
    match name {
        ":method" => Some(req.method.as_str().as_bytes().to_vec()),
        ":path" => Some(
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes()
                .to_vec(),
        ),
        ":authority" => req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes().to_vec())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .map(|h| h.as_bytes().to_vec())
            }),
        ":scheme" => Some(req.uri.scheme_str().unwrap_or("http").as_bytes().to_vec()),
        _ => None,
    }
}

/// The first value of `key` in map `kind`.
fn value(st: &HostState, kind: i32, key: &[u8]) -> Result<Vec<u8>, Status> {
    let s = &st.stream;
    let name = std::str::from_utf8(key).map_err(|_| Status::BadArgument)?;
    match kind {
        map::REQUEST_HEADERS if s.has_request => {
            if name.starts_with(':') {
                return request_pseudo(&s.request, name).ok_or(Status::NotFound);
            }
            s.request
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .ok_or(Status::NotFound)
        }
        map::RESPONSE_HEADERS if s.has_response => {
            if name == ":status" {
                return Ok(s.response.status.as_str().as_bytes().to_vec());
            }
            s.response
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .ok_or(Status::NotFound)
        }
        _ => pairs(st, kind)?
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .ok_or(Status::NotFound),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Edit {
    Replace,
    Add,
    Remove,
}

/// Applies one edit to map `kind`.
fn edit(st: &mut HostState, kind: i32, key: &[u8], val: &[u8], how: Edit) -> Result<(), Status> {
    let name = String::from_utf8(key.to_vec()).map_err(|_| Status::BadArgument)?;
    let s = &mut st.stream;
    match kind {
        map::REQUEST_HEADERS if s.has_request => {
            let req = &mut s.request;
            match (name.as_str(), how) {
                (":path", Edit::Replace | Edit::Add) => {
                    let uri = http::Uri::try_from(val).map_err(|_| Status::BadArgument)?;
                    req.set_uri(uri);
                    Ok(())
                }
                (":method", Edit::Replace | Edit::Add) => {
                    let m = http::Method::from_bytes(val).map_err(|_| Status::BadArgument)?;
                    req.set_method(m);
                    Ok(())
                }
                (":authority", Edit::Replace | Edit::Add) => req
                    .insert_header(http::header::HOST, val)
                    .map_err(|_| Status::BadArgument),
                (n, _) if n.starts_with(':') => Err(Status::BadArgument),
                (_, Edit::Replace) => req
                    .insert_header(name, val)
                    .map_err(|_| Status::BadArgument),
                (_, Edit::Add) => req
                    .append_header(name, val)
                    .map(drop)
                    .map_err(|_| Status::BadArgument),
                (n, Edit::Remove) => {
                    req.remove_header(n);
                    Ok(())
                }
            }
        }
        map::RESPONSE_HEADERS if s.has_response => {
            let resp = &mut s.response;
            match (name.as_str(), how) {
                (":status", Edit::Replace | Edit::Add) => {
                    let code = std::str::from_utf8(val)
                        .ok()
                        .and_then(|v| v.parse::<u16>().ok())
                        .ok_or(Status::BadArgument)?;
                    resp.set_status(code).map_err(|_| Status::BadArgument)
                }
                (n, _) if n.starts_with(':') => Err(Status::BadArgument),
                (_, Edit::Replace) => resp
                    .insert_header(name, val)
                    .map_err(|_| Status::BadArgument),
                (_, Edit::Add) => resp
                    .append_header(name, val)
                    .map(drop)
                    .map_err(|_| Status::BadArgument),
                (n, Edit::Remove) => {
                    resp.remove_header(n);
                    Ok(())
                }
            }
        }
        map::REQUEST_HEADERS | map::RESPONSE_HEADERS => Err(Status::NotFound),
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS => {
            let t = match kind {
                map::REQUEST_TRAILERS => s.request_trailers.as_mut(),
                _ => s.response_trailers.as_mut(),
            };
            edit_trailers(t.ok_or(Status::NotFound)?, &name, val, how)
        }
        _ => Err(Status::BadArgument),
    }
}

fn get_pairs(mut caller: Caller<'_, HostState>, kind: i32, ret_ptr: i32, ret_size: i32) -> i32 {
    let r = pairs(caller.data(), kind).and_then(|p| {
        let bytes = abi::serialize_map(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        give(&mut caller, &bytes, ret_ptr, ret_size)
    });
    status(r)
}

fn set_pairs(mut caller: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32) -> i32 {
    let r = read(&mut caller, ptr, len).and_then(|bytes| {
        let new = abi::deserialize_map(&bytes).ok_or(Status::SerializationFailure)?;
        let st = caller.data_mut();
        let old: Vec<Vec<u8>> = pairs(st, kind)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with(b":"))
            .collect();
        for k in old {
            edit(st, kind, &k, &[], Edit::Remove)?;
        }
        for (k, v) in new {
            let how = if k.starts_with(b":") {
                Edit::Replace
            } else {
                Edit::Add
            };
            edit(st, kind, &k, &v, how)?;
        }
        Ok(())
    });
    status(r)
}

fn get_value(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> i32 {
    let r = read(&mut caller, key_ptr, key_len).and_then(|key| {
        let v = value(caller.data(), kind, &key)?;
        give(&mut caller, &v, ret_ptr, ret_size)
    });
    status(r)
}

fn edit_call(caller: &mut Caller<'_, HostState>, args: [i32; 5], how: Edit) -> i32 {
    let [kind, key_ptr, key_len, val_ptr, val_len] = args;
    let r = read(caller, key_ptr, key_len).and_then(|key| {
        let val = if how == Edit::Remove {
            Vec::new()
        } else {
            memory::read(caller, val_ptr, val_len)?
        };
        edit(caller.data_mut(), kind, &key, &val, how)
    });
    status(r)
}

fn replace_value(mut c: Caller<'_, HostState>, k: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> i32 {
    edit_call(&mut c, [k, kp, kl, vp, vl], Edit::Replace)
}

fn add_value(mut c: Caller<'_, HostState>, k: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> i32 {
    edit_call(&mut c, [k, kp, kl, vp, vl], Edit::Add)
}

fn remove_value(mut c: Caller<'_, HostState>, k: i32, kp: i32, kl: i32) -> i32 {
    edit_call(&mut c, [k, kp, kl, 0, 0], Edit::Remove)
}
