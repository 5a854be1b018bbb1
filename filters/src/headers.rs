//! The `headers` filter: add, set or remove headers on the request and the response.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{
    BuildError, Filter, FilterError, FilterOutcome, RequestCx, RequestResult, ResponseCx,
    ResponseResult,
};

/// Header edits for one direction. Applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, replacing any existing value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// Config of the `headers` filter.
///
/// ```yaml
/// - headers:
///     request: { set: { x-env: prod }, remove: [x-debug] }
///     response: { add: { cache-control: no-store } }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Edits of the request sent upstream.
    #[serde(default)]
    pub request: HeaderEdits,
    /// Edits of the response sent downstream.
    #[serde(default)]
    pub response: HeaderEdits,
}

struct CompiledEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn compile(edits: &HeaderEdits, side: &str) -> Result<CompiledEdits, BuildError> {
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| BuildError::new(format!("{side}: invalid header name {n:?}")))
    };
    let value = |n: &str, v: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| BuildError::new(format!("{side}: invalid value for header {n:?}")))
    };
    let pairs = |m: &BTreeMap<String, String>| -> Result<Vec<_>, BuildError> {
        m.iter()
            .map(|(n, v)| Ok((name(n)?, value(n, v)?)))
            .collect()
    };
    Ok(CompiledEdits {
        remove: edits
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
        set: pairs(&edits.set)?,
        add: pairs(&edits.add)?,
    })
}

/// The runtime `headers` filter.
pub struct Headers {
    request: CompiledEdits,
    response: CompiledEdits,
}

impl Headers {
    /// Validates names and values once, at build time.
    pub fn new(cfg: &HeadersConfig) -> Result<Self, BuildError> {
        Ok(Self {
            request: compile(&cfg.request, "request")?,
            response: compile(&cfg.response, "response")?,
        })
    }
}

macro_rules! apply_edits {
    ($edits:expr, $h:expr, $kind:expr) => {{
        let err = FilterError::header($kind);
        for n in &$edits.remove {
            $h.remove_header(n);
        }
        for (n, v) in &$edits.set {
            $h.insert_header(n.clone(), v.clone()).map_err(err)?;
        }
        for (n, v) in &$edits.add {
            $h.append_header(n.clone(), v.clone()).map_err(err)?;
        }
    }};
}

#[async_trait]
impl Filter for Headers {
    fn kind(&self) -> &'static str {
        "headers"
    }

    async fn on_request(&self, req: &mut RequestHeader, _cx: &mut RequestCx<'_>) -> RequestResult {
        apply_edits!(self.request, req, "headers");
        Ok(FilterOutcome::Continue)
    }

    fn on_response(&self, resp: &mut ResponseHeader, _cx: &ResponseCx<'_>) -> ResponseResult {
        apply_edits!(self.response, resp, "headers");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> RequestCx<'static> {
        crate::test_cx()
    }

    #[tokio::test]
    async fn edits_request_in_order() {
        let cfg: HeadersConfig = serde_json::from_value(serde_json::json!({
            "request": { "remove": ["x-debug"], "set": {"x-env": "prod"}, "add": {"x-tag": "b"} }
        }))
        .unwrap();
        let f = Headers::new(&cfg).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-debug", "1").unwrap();
        req.insert_header("x-env", "dev").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        f.on_request(&mut req, &mut cx()).await.unwrap();
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(req.headers.get("x-env").unwrap(), "prod");
        let tags: Vec<_> = req.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn rejects_bad_header_name() {
        let mut cfg = HeadersConfig::default();
        cfg.response.set.insert("bad header".into(), "v".into());
        let err = Headers::new(&cfg).err().unwrap();
        assert!(
            err.message.contains("invalid header name"),
            "{}",
            err.message
        );
    }
}
