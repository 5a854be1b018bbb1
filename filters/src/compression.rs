//! The `compression` filter: gzip or brotli response bodies, chosen by the client's
//! `Accept-Encoding`, for listed content types above a minimum size.

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_http::ResponseHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::util::{body_rewritable, content_length, header_lists, header_str, media_type};
use crate::{BodyTransform, BuildError, Filter, FilterError, ResponseCx, ResponseResult};

/// A content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Brotli (`br`).
    Br,
    /// gzip.
    Gzip,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Config of the `compression` filter. List it after `envelope` (body transforms run
/// in filter order; a compressed body is not wrapped).
///
/// ```yaml
/// - compression:
///     encodings: [br, gzip]          # server preference when the client accepts both equally
///     min_size: 1024                 # bytes; bodies of unknown length are compressed
///     content_types: [text/, application/json, application/javascript, image/svg+xml]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Encodings offered, in preference order. Default `[br, gzip]`.
    #[serde(default = "default_encodings")]
    pub encodings: Vec<Encoding>,
    /// Responses with a smaller `Content-Length` are sent as they are. Default 1024.
    #[serde(default = "default_min_size")]
    pub min_size: u64,
    /// Content-type prefixes to compress (`text/` matches every text type). Default:
    /// text/, application/json, application/javascript, application/xml,
    /// image/svg+xml, and any `+json`/`+xml` type.
    #[serde(default = "default_types")]
    pub content_types: Vec<String>,
    /// gzip level 1-9. Default 6.
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// Brotli quality 0-11. Default 5 (11 is far slower for little gain on the fly).
    #[serde(default = "default_br_quality")]
    pub brotli_quality: u32,
}

fn default_encodings() -> Vec<Encoding> {
    vec![Encoding::Br, Encoding::Gzip]
}
fn default_min_size() -> u64 {
    1024
}
fn default_types() -> Vec<String> {
    [
        "text/",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "+json",
        "+xml",
    ]
    .map(String::from)
    .to_vec()
}
fn default_gzip_level() -> u32 {
    6
}
fn default_br_quality() -> u32 {
    5
}

/// The runtime `compression` filter.
pub struct Compression {
    cfg: CompressionConfig,
}

impl Compression {
    /// Validates the config.
    pub fn new(cfg: &CompressionConfig) -> Result<Self, BuildError> {
        if cfg.encodings.is_empty() {
            return Err(BuildError::new("encodings must list br and/or gzip"));
        }
        if !(1..=9).contains(&cfg.gzip_level) {
            return Err(BuildError::new("gzip_level must be 1-9"));
        }
        if cfg.brotli_quality > 11 {
            return Err(BuildError::new("brotli_quality must be 0-11"));
        }
        Ok(Self { cfg: cfg.clone() })
    }

    fn type_listed(&self, ct: &str) -> bool {
        let mime = media_type(ct);
        self.cfg.content_types.iter().any(|t| {
            let t = t.to_ascii_lowercase();
            if t.starts_with('+') {
                mime.ends_with(&t)
            } else if t.ends_with('/') {
                mime.starts_with(&t)
            } else {
                mime == t
            }
        })
    }

    /// The encoding to use for `accept` (an `Accept-Encoding` value), if any.
    pub fn choose(&self, accept: &str) -> Option<Encoding> {
        let mut best: Option<(Encoding, f32, usize)> = None;
        for (rank, enc) in self.cfg.encodings.iter().enumerate() {
            let q = quality(accept, enc.token());
            if q <= 0.0 {
                continue;
            }
            if best.is_none_or(|(_, bq, brank)| q > bq || (q == bq && rank < brank)) {
                best = Some((*enc, q, rank));
            }
        }
        best.map(|(e, _, _)| e)
    }
}

/// The q-value of `coding` in an Accept-Encoding value (`*` counts; absent = 0), as
/// RFC 9110 section 12.5.3 defines it: `gzip;q=0` refuses gzip.
pub fn quality(accept: &str, coding: &str) -> f32 {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|v| v.trim().parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

/// Compresses a body chunk by chunk.
pub struct Compressor {
    enc: Option<Encoder>,
}

impl Compressor {
    /// A compressor for `encoding`.
    pub fn new(encoding: Encoding, gzip_level: u32, brotli_quality: u32) -> Self {
        let enc = match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(gzip_level),
            )),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                brotli_quality,
                22,
            ))),
        };
        Self { enc: Some(enc) }
    }
}

impl BodyTransform for Compressor {
    fn transform(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        let enc = self.enc.as_mut()?;
        if let Some(c) = chunk.as_ref().filter(|c| !c.is_empty()) {
            // Writing into a Vec cannot fail.
            let _ = match enc {
                Encoder::Gzip(e) => e.write_all(c),
                Encoder::Br(e) => e.write_all(c),
            };
        }
        let out = if end_of_stream {
            match self.enc.take()? {
                Encoder::Gzip(e) => e.finish().unwrap_or_default(),
                Encoder::Br(e) => e.into_inner(),
            }
        } else {
            match enc {
                Encoder::Gzip(e) => std::mem::take(e.get_mut()),
                Encoder::Br(e) => std::mem::take(e.get_mut()),
            }
        };
        if out.is_empty() && !end_of_stream {
            return None;
        }
        Some(Bytes::from(out))
    }
}

#[async_trait]
impl Filter for Compression {
    fn kind(&self) -> &'static str {
        "compression"
    }

    fn on_response(&self, resp: &mut ResponseHeader, cx: &ResponseCx<'_>) -> ResponseResult {
        let err = FilterError::header("compression");
        if !body_rewritable(&cx.request.method, resp.status.as_u16()) {
            return Ok(None);
        }
        // Whatever we decide, the representation depends on Accept-Encoding.
        if !header_lists(resp.headers.get_all(header::VARY), "accept-encoding") {
            resp.append_header(header::VARY, "Accept-Encoding")
                .map_err(err)?;
        }
        if resp.headers.contains_key(header::CONTENT_ENCODING) {
            return Ok(None);
        }
        let ct = header_str(&resp.headers, header::CONTENT_TYPE).unwrap_or("");
        if ct.is_empty() || !self.type_listed(ct) {
            return Ok(None);
        }
        if header_lists(resp.headers.get_all(header::CACHE_CONTROL), "no-transform") {
            return Ok(None);
        }
        if content_length(&resp.headers).is_some_and(|l| l < self.cfg.min_size) {
            return Ok(None);
        }
        let accept = cx
            .request
            .headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let Some(enc) = self.choose(&accept) else {
            return Ok(None);
        };
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.insert_header(header::CONTENT_ENCODING, enc.token())
            .map_err(err)?;
        // A strong ETag names the uncompressed bytes; the compressed ones differ.
        if let Some(etag) = resp.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
            if !etag.starts_with("W/") {
                let weak = format!("W/{etag}");
                resp.insert_header(header::ETAG, weak).map_err(err)?;
            }
        }
        Ok(Some(Box::new(Compressor::new(
            enc,
            self.cfg.gzip_level,
            self.cfg.brotli_quality,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;
    use std::io::Read;

    fn filter() -> Compression {
        Compression::new(&serde_json::from_value(serde_json::json!({})).unwrap()).unwrap()
    }

    fn run(t: &mut dyn BodyTransform, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in body.chunks(700) {
            if let Some(b) = t.transform(Some(Bytes::copy_from_slice(c)), false) {
                out.extend_from_slice(&b);
            }
        }
        out.extend_from_slice(&t.transform(None, true).unwrap());
        out
    }

    fn response(ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        if let Some(l) = len {
            r.insert_header("content-length", l.to_string()).unwrap();
        }
        r
    }

    /// The body transform the filter chooses for `resp` (the test fails when it chooses none).
    fn transform(
        f: &Compression,
        resp: &mut ResponseHeader,
        req: &RequestHeader,
    ) -> Box<dyn BodyTransform> {
        let cx = ResponseCx {
            route: "r",
            request: req,
            state: &Default::default(),
        };
        f.on_response(resp, &cx).unwrap().expect("a compressor")
    }

    fn request(accept: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("accept-encoding", accept).unwrap();
        r
    }

    #[test]
    fn chooses_by_q_values_then_preference() {
        let f = filter();
        assert_eq!(f.choose("gzip, deflate, br"), Some(Encoding::Br));
        assert_eq!(f.choose("gzip"), Some(Encoding::Gzip));
        assert_eq!(f.choose("br;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(f.choose("*"), Some(Encoding::Br));
        assert_eq!(f.choose("br;q=0, *;q=0.1"), Some(Encoding::Gzip));
        assert_eq!(f.choose("identity"), None);
        assert_eq!(f.choose(""), None);
    }

    #[test]
    fn gzip_round_trip_and_headers() {
        let f = filter();
        let body = "{\"hello\":\"world\"}".repeat(200);
        let mut resp = response("application/json; charset=utf-8", Some(body.len()));
        resp.insert_header("etag", "\"abc\"").unwrap();
        let req = request("gzip");
        let mut t = transform(&f, &mut resp, &req);
        assert_eq!(resp.headers.get("content-encoding").unwrap(), "gzip");
        assert!(resp.headers.get("content-length").is_none());
        assert_eq!(resp.headers.get("vary").unwrap(), "Accept-Encoding");
        assert_eq!(resp.headers.get("etag").unwrap(), "W/\"abc\"");
        let out = run(t.as_mut(), body.as_bytes());
        assert!(out.len() < body.len() / 4);
        let mut dec = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut dec)
            .unwrap();
        assert_eq!(dec, body);
    }

    #[test]
    fn brotli_round_trip() {
        let f = filter();
        let body = "<p>lorem ipsum</p>".repeat(300);
        let mut resp = response("text/html", None);
        let req = request("br");
        let mut t = transform(&f, &mut resp, &req);
        assert_eq!(resp.headers.get("content-encoding").unwrap(), "br");
        let out = run(t.as_mut(), body.as_bytes());
        let mut dec = Vec::new();
        brotli::Decompressor::new(&out[..], 4096)
            .read_to_end(&mut dec)
            .unwrap();
        assert_eq!(dec, body.as_bytes());
    }

    #[test]
    fn skips_small_unlisted_encoded_and_head() {
        let f = filter();
        let req = request("gzip, br");
        let cx = ResponseCx {
            route: "r",
            request: &req,
            state: &Default::default(),
        };
        assert!(f
            .on_response(&mut response("application/json", Some(100)), &cx)
            .unwrap()
            .is_none());
        assert!(f
            .on_response(&mut response("image/png", Some(100_000)), &cx)
            .unwrap()
            .is_none());
        let mut pre = response("text/plain", Some(100_000));
        pre.insert_header("content-encoding", "gzip").unwrap();
        assert!(f.on_response(&mut pre, &cx).unwrap().is_none());
        let mut head = RequestHeader::build("HEAD", b"/", None).unwrap();
        head.insert_header("accept-encoding", "gzip").unwrap();
        assert!(f
            .on_response(
                &mut response("text/plain", Some(100_000)),
                &ResponseCx {
                    route: "r",
                    request: &head,
                    state: &Default::default(),
                }
            )
            .unwrap()
            .is_none());
        let plain = request("identity");
        let mut r = response("text/plain", Some(100_000));
        assert!(f
            .on_response(
                &mut r,
                &ResponseCx {
                    route: "r",
                    request: &plain,
                    state: &Default::default(),
                }
            )
            .unwrap()
            .is_none());
        assert_eq!(r.headers.get("vary").unwrap(), "Accept-Encoding");
        assert_eq!(r.headers.get("content-length").unwrap(), "100000");
    }
}
