//! The `cors` filter: preflights answered at the gateway (204), CORS headers on
//! actual responses, including the gateway's own error responses.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use pingora_http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::util::header_lists;
use crate::{
    BuildError, Duration, Filter, FilterError, FilterOutcome, RequestCx, RequestResult, Response,
    ResponseCx, ResponseResult,
};

/// Config of the `cors` filter.
///
/// ```yaml
/// - cors:
///     allow_origins: [https://app.example.com]   # or ["*"]
///     allow_methods: [GET, POST, PUT, DELETE]
///     allow_headers: [authorization, content-type]
///     expose_headers: [x-request-id]
///     allow_credentials: true
///     max_age: 10m
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`scheme://host[:port]`, exact match), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights. Default GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights. Default `authorization, content-type`.
    /// `["*"]` allows whatever the preflight asks for.
    #[serde(default = "default_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (not allowed with `*` origins).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight. Default 10m.
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_headers() -> Vec<String> {
    vec!["authorization".into(), "content-type".into()]
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

/// The runtime `cors` filter.
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<String>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    /// Validates the config.
    pub fn new(cfg: &CorsConfig) -> Result<Self, BuildError> {
        if cfg.allow_origins.is_empty() {
            return Err(BuildError::new(
                "allow_origins must list at least one origin (or \"*\")",
            ));
        }
        let any_origin = cfg.allow_origins.iter().any(|o| o == "*");
        if any_origin && cfg.allow_credentials {
            return Err(BuildError::new(
                "allow_credentials cannot be used with allow_origins: [\"*\"]; list the origins",
            ));
        }
        for o in &cfg.allow_origins {
            if o != "*" && (!o.contains("://") || o.ends_with('/')) {
                return Err(BuildError::new(format!(
                    "allow_origins: {o:?} is not an origin like https://app.example.com"
                )));
            }
        }
        let methods = cfg
            .allow_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| BuildError::new(format!("allow_methods: invalid method {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let join = |items: Vec<String>, what: &str| {
            HeaderValue::from_str(&items.join(", "))
                .map_err(|_| BuildError::new(format!("{what}: invalid value")))
        };
        let any_header = cfg.allow_headers.iter().any(|h| h == "*");
        for h in cfg.allow_headers.iter().chain(&cfg.expose_headers) {
            if h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(BuildError::new(format!("invalid header name {h:?}")));
            }
        }
        let headers: Vec<String> = cfg
            .allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(Self {
            any_origin,
            origins: cfg.allow_origins.clone(),
            methods_value: join(
                methods.iter().map(|m| m.to_string()).collect(),
                "allow_methods",
            )?,
            methods,
            any_header,
            headers_value: if any_header || headers.is_empty() {
                None
            } else {
                Some(join(headers.clone(), "allow_headers")?)
            },
            headers,
            expose: if cfg.expose_headers.is_empty() {
                None
            } else {
                Some(join(cfg.expose_headers.clone(), "expose_headers")?)
            },
            credentials: cfg.allow_credentials,
            max_age: HeaderValue::from(cfg.max_age.get().as_secs()),
        })
    }

    fn allowed_origin<'r>(&self, req: &'r RequestHeader) -> Option<&'r HeaderValue> {
        let origin = req.headers.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(s)))
            .then_some(origin)
    }

    /// Headers for an actual (non-preflight) response to an allowed origin.
    fn simple_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(3);
        if self.any_origin {
            out.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ));
        } else {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        }
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(e) = &self.expose {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
        }
        out
    }

    fn preflight(&self, req: &RequestHeader, origin: Option<&HeaderValue>) -> Response {
        let forbidden =
            |why: &'static str| Response::error(StatusCode::FORBIDDEN, "cors_forbidden", why);
        let Some(origin) = origin else {
            return forbidden("origin not allowed");
        };
        let method_ok = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        if !method_ok {
            return forbidden("method not allowed");
        }
        let asked = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let asked: Vec<String> = asked
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if !self.any_header && asked.iter().any(|h| !self.headers.contains(h)) {
            return forbidden("request header not allowed");
        }
        let mut resp = Response {
            status: StatusCode::NO_CONTENT,
            error_code: None,
            message: "".into(),
            headers: self.simple_headers(origin),
            body: Some(Bytes::new()),
        };
        resp.headers.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone(),
        ));
        let allow_headers = if self.any_header {
            HeaderValue::from_str(&asked.join(", "))
                .ok()
                .filter(|_| !asked.is_empty())
        } else {
            self.headers_value.clone()
        };
        if let Some(h) = allow_headers {
            resp.headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        resp.headers
            .push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        resp.headers.push((
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ));
        resp
    }
}

#[async_trait]
impl Filter for Cors {
    fn kind(&self) -> &'static str {
        "cors"
    }

    async fn on_request(&self, req: &mut RequestHeader, cx: &mut RequestCx<'_>) -> RequestResult {
        let origin = self.allowed_origin(req).cloned();
        let is_preflight = req.method == Method::OPTIONS
            && req.headers.contains_key(header::ORIGIN)
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            return Ok(FilterOutcome::Respond(self.preflight(req, origin.as_ref())));
        }
        // Also on the gateway's own errors (401, 429...), so browsers can read them.
        if let Some(o) = origin {
            cx.response_headers.extend(self.simple_headers(&o));
            if !self.any_origin {
                cx.response_headers
                    .push((header::VARY, HeaderValue::from_static("Origin")));
            }
        }
        Ok(FilterOutcome::Continue)
    }

    fn on_response(&self, resp: &mut ResponseHeader, cx: &ResponseCx<'_>) -> ResponseResult {
        let err = FilterError::header("cors");
        let Some(origin) = self.allowed_origin(cx.request) else {
            return Ok(None);
        };
        // The gateway may already have added our headers from on_request, and the
        // upstream may send its own: one value each, ours.
        for (n, v) in self.simple_headers(origin) {
            resp.insert_header(n, v).map_err(err)?;
        }
        if !self.any_origin && !header_lists(resp.headers.get_all(header::VARY), "origin") {
            resp.append_header(header::VARY, "Origin").map_err(err)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(v: serde_json::Value) -> Cors {
        Cors::new(&serde_json::from_value(v).unwrap()).unwrap()
    }

    fn cx() -> RequestCx<'static> {
        crate::test_cx()
    }

    fn get<'a>(h: &'a [(HeaderName, HeaderValue)], n: &HeaderName) -> Option<&'a str> {
        h.iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[tokio::test]
    async fn preflight_answered_with_204() {
        let f = cors(
            serde_json::json!({"allow_origins": ["https://app.example.com"], "allow_credentials": true}),
        );
        let mut req = RequestHeader::build("OPTIONS", b"/api", None).unwrap();
        req.insert_header("origin", "https://app.example.com")
            .unwrap();
        req.insert_header("access-control-request-method", "POST")
            .unwrap();
        req.insert_header(
            "access-control-request-headers",
            "Content-Type, Authorization",
        )
        .unwrap();
        let FilterOutcome::Respond(r) = f.on_request(&mut req, &mut cx()).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.status, 204);
        assert_eq!(r.error_code, None);
        assert_eq!(
            get(&r.headers, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&r.headers, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
        assert_eq!(
            get(&r.headers, &header::ACCESS_CONTROL_MAX_AGE),
            Some("600")
        );
        assert!(get(&r.headers, &header::ACCESS_CONTROL_ALLOW_METHODS)
            .unwrap()
            .contains("POST"));

        req.insert_header("origin", "https://evil.example").unwrap();
        let FilterOutcome::Respond(r) = f.on_request(&mut req, &mut cx()).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.status, 403);
        req.insert_header("origin", "https://app.example.com")
            .unwrap();
        req.insert_header("access-control-request-headers", "x-secret")
            .unwrap();
        let FilterOutcome::Respond(r) = f.on_request(&mut req, &mut cx()).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.status, 403);
    }

    #[tokio::test]
    async fn actual_request_gets_headers_once() {
        let f = cors(
            serde_json::json!({"allow_origins": ["https://app.example.com"], "expose_headers": ["x-request-id"]}),
        );
        let mut req = RequestHeader::build("GET", b"/api", None).unwrap();
        req.insert_header("origin", "https://app.example.com")
            .unwrap();
        let mut c = cx();
        assert!(matches!(
            f.on_request(&mut req, &mut c).await.unwrap(),
            FilterOutcome::Continue
        ));
        assert_eq!(
            get(&c.response_headers, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example.com")
        );
        // The gateway appended them, the upstream sent its own: one value each remains.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("access-control-allow-origin", "*")
            .unwrap();
        for (n, v) in &c.response_headers {
            resp.append_header(n.clone(), v.clone()).unwrap();
        }
        f.on_response(
            &mut resp,
            &ResponseCx {
                route: "r",
                request: &req,
                state: &Default::default(),
            },
        )
        .unwrap();
        let acao: Vec<_> = resp
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        assert_eq!(acao, ["https://app.example.com"]);
        assert_eq!(
            resp.headers.get("access-control-expose-headers").unwrap(),
            "x-request-id"
        );
        assert!(header_lists(resp.headers.get_all("vary"), "origin"));

        // Unknown origin: nothing added.
        let mut req = RequestHeader::build("GET", b"/api", None).unwrap();
        req.insert_header("origin", "https://evil.example").unwrap();
        let mut c = cx();
        f.on_request(&mut req, &mut c).await.unwrap();
        assert!(c.response_headers.is_empty());
    }

    #[test]
    fn refuses_wildcard_with_credentials() {
        let cfg: CorsConfig = serde_json::from_value(
            serde_json::json!({"allow_origins": ["*"], "allow_credentials": true}),
        )
        .unwrap();
        assert!(Cors::new(&cfg).is_err());
    }
}
