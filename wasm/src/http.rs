//! Sends a guest's `proxy_http_call` to the upstream it names, asynchronously (the request
//! that made it waits; the proxy thread serves others), and reads the answer for
//! `proxy_on_http_call_response`. A call that fails (unknown upstream, connect error,
//! timeout) is delivered as an answer without headers, as Envoy does.

use crate::runtime::WasmRuntime;
use crate::state::{CallAnswer, CallRequest};

/// Largest answer body kept for the guest; the rest is dropped.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Sends `call` and waits for its answer, at most the guest's timeout.
pub async fn send(rt: &WasmRuntime, call: &CallRequest) -> CallAnswer {
    match try_send(rt, call).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(target: "wasm", upstream = %call.upstream, error = %e, "wasm http call failed");
            CallAnswer::default()
        }
    }
}

async fn try_send(rt: &WasmRuntime, call: &CallRequest) -> Result<CallAnswer, String> {
    let addr = rt
        .upstreams()
        .and_then(|u| u.resolve(&call.upstream))
        .ok_or_else(|| format!("no upstream named `{}` with an endpoint up", call.upstream))?;
    let pseudo = |name: &[u8]| {
        call.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let method = reqwest::Method::from_bytes(pseudo(b":method").unwrap_or_default().as_bytes())
        .map_err(|e| format!("bad :method: {e}"))?;
    let path = pseudo(b":path").unwrap_or_else(|| "/".into());
    let mut req = rt
        .http
        .request(method, format!("http://{addr}{path}"))
        .timeout(call.timeout)
        .body(call.body.clone());
    for (k, v) in &call.headers {
        if k.first() == Some(&b':') {
            continue;
        }
        req = req.header(k.as_slice(), v.as_slice());
    }
    if let Some(authority) = pseudo(b":authority") {
        req = req.header(http::header::HOST, authority);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let mut headers = Vec::with_capacity(resp.headers().len() + 1);
    headers.push((
        b":status".to_vec(),
        resp.status().as_str().as_bytes().to_vec(),
    ));
    for (k, v) in resp.headers() {
        headers.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let mut body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
    body.truncate(MAX_ANSWER_BYTES);
    Ok(CallAnswer { headers, body })
}
