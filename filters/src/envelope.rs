//! The `envelope` filter: wraps JSON response bodies as
//! `{"timestamp": RFC 3339, "success": <2xx?>, "data": <body>}` (the reference
//! system's response format). Off unless a route lists it.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora_http::ResponseHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::util::{body_rewritable, content_length, header_str, media_type};
use crate::{BodyTransform, BuildError, Filter, ResponseCx, ResponseResult};

/// Config of the `envelope` filter. List it before `compression`.
///
/// ```yaml
/// - envelope: {}                      # or { max_body_bytes: 2097152 }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeConfig {
    /// Bodies are buffered to be wrapped; larger ones pass through unwrapped.
    /// Default 1 MiB.
    #[serde(default = "default_max", deserialize_with = "crate::size::de")]
    #[schemars(with = "crate::size::ByteSize")]
    pub max_body_bytes: usize,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max(),
        }
    }
}

fn default_max() -> usize {
    1024 * 1024
}

/// The runtime `envelope` filter.
pub struct Envelope {
    max: usize,
}

impl Envelope {
    /// Validates the config.
    pub fn new(cfg: &EnvelopeConfig) -> Result<Self, BuildError> {
        if cfg.max_body_bytes == 0 {
            return Err(BuildError::new("max_body_bytes must be positive"));
        }
        Ok(Self {
            max: cfg.max_body_bytes,
        })
    }
}

fn is_json(ct: &str) -> bool {
    let mime = media_type(ct);
    mime == "application/json" || mime.ends_with("+json")
}

/// Buffers a JSON body and wraps it at the end of the stream.
pub struct Wrapper {
    prefix: String,
    buf: BytesMut,
    max: usize,
    passthrough: bool,
}

impl Wrapper {
    /// A wrapper for a response with this status, stamped now.
    pub fn new(status: u16, max: usize) -> Self {
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let success = (200..300).contains(&status);
        Self {
            prefix: format!("{{\"timestamp\":\"{ts}\",\"success\":{success},\"data\":"),
            buf: BytesMut::new(),
            max,
            passthrough: false,
        }
    }
}

impl BodyTransform for Wrapper {
    fn transform(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        if self.passthrough {
            return chunk;
        }
        if let Some(c) = chunk {
            self.buf.extend_from_slice(&c);
        }
        if self.buf.len() > self.max {
            // Too big to wrap: send what we held and the rest as it comes.
            self.passthrough = true;
            return Some(self.buf.split().freeze());
        }
        if !end_of_stream {
            return None;
        }
        let body = self.buf.split().freeze();
        let trimmed = body.trim_ascii();
        let data: &[u8] = if trimmed.is_empty() { b"null" } else { trimmed };
        if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
            // Labelled JSON but is not: pass it on untouched.
            return Some(body);
        }
        let mut out = BytesMut::with_capacity(self.prefix.len() + data.len() + 1);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"}");
        Some(out.freeze())
    }
}

#[async_trait]
impl Filter for Envelope {
    fn kind(&self) -> &'static str {
        "envelope"
    }

    fn on_response(&self, resp: &mut ResponseHeader, cx: &ResponseCx<'_>) -> ResponseResult {
        let status = resp.status.as_u16();
        if !body_rewritable(&cx.request.method, status) {
            return Ok(None);
        }
        if resp.headers.contains_key(header::CONTENT_ENCODING) {
            return Ok(None);
        }
        let json = header_str(&resp.headers, header::CONTENT_TYPE).is_some_and(is_json);
        if !json {
            return Ok(None);
        }
        if content_length(&resp.headers).is_some_and(|l| l > self.max as u64) {
            return Ok(None);
        }
        resp.remove_header(&header::CONTENT_LENGTH);
        // A strong validator of the unwrapped body does not name the wrapped one.
        resp.remove_header(&header::ETAG);
        Ok(Some(Box::new(Wrapper::new(status, self.max))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn run(t: &mut dyn BodyTransform, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            if let Some(b) = t.transform(Some(Bytes::copy_from_slice(c)), false) {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = t.transform(None, true) {
            out.extend_from_slice(&b);
        }
        out
    }

    fn on(
        status: u16,
        ct: &str,
        len: Option<usize>,
    ) -> (ResponseHeader, Option<Box<dyn BodyTransform>>) {
        let f = Envelope::new(&EnvelopeConfig { max_body_bytes: 64 }).unwrap();
        let mut r = ResponseHeader::build(status, None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        if let Some(l) = len {
            r.insert_header("content-length", l.to_string()).unwrap();
        }
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let t = f
            .on_response(
                &mut r,
                &ResponseCx {
                    route: "r",
                    request: &req,
                    state: &Default::default(),
                },
            )
            .unwrap();
        (r, t)
    }

    #[test]
    fn wraps_json_with_success_flag() {
        let (r, t) = on(200, "application/json", Some(13));
        assert!(r.headers.get("content-length").is_none());
        let out = run(t.unwrap().as_mut(), &[b"{\"id\":", b" 7}"]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["success"], true);
        assert_eq!(v["data"], serde_json::json!({"id": 7}));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "{ts}"
        );

        let (_, t) = on(404, "application/problem+json", None);
        let out = run(t.unwrap().as_mut(), &[b"{\"error\":\"nope\"}"]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["data"]["error"], "nope");
    }

    #[test]
    fn passes_through_non_json_invalid_and_large() {
        assert!(on(200, "text/html", Some(5)).1.is_none());
        assert!(on(200, "application/json", Some(1000)).1.is_none());
        let (_, t) = on(200, "application/json", None);
        assert_eq!(run(t.unwrap().as_mut(), &[b"not json"]), b"not json");
        let big = vec![b'1'; 100];
        let (_, t) = on(200, "application/json", None);
        assert_eq!(
            run(t.unwrap().as_mut(), &[&big[..40], &big[40..80], &big[80..]]),
            big
        );
    }
}
