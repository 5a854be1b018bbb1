//! What a rate limit counts by: client IP, a header, a JWT claim, or a JSON body field.

use std::fmt;
use std::str::FromStr;

use http::HeaderName;
use pingora_http::RequestHeader;
use serde::{Deserialize, Deserializer};

use crate::RequestCx;

/// The key of a rate limit, written as a string in YAML:
/// `client_ip`, `header:<name>`, `claim:<name>` (needs a `jwt` filter before it) or
/// `body.<field>[.<field>...]` (a field of a JSON request body, e.g. `body.email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The TCP peer address the gateway saw.
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the verified JWT (string, number or boolean).
    Claim(String),
    /// A field of the JSON request body, read from its first bytes.
    Body(Vec<String>),
}

/// A rate-limit key string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "invalid rate-limit key {0:?}: expected client_ip, header:<name>, claim:<name> or body.<field>"
)]
pub struct ParseKeyError(String);

impl FromStr for RateLimitKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseKeyError(s.to_string());
        if s == "client_ip" {
            return Ok(Self::ClientIp);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(h.as_bytes())
                .map(Self::Header)
                .map_err(|_| err());
        }
        if let Some(c) = s.strip_prefix("claim:") {
            return if c.is_empty() {
                Err(err())
            } else {
                Ok(Self::Claim(c.to_string()))
            };
        }
        if let Some(path) = s.strip_prefix("body.") {
            let parts: Vec<String> = path.split('.').map(str::to_string).collect();
            return if parts.iter().any(String::is_empty) {
                Err(err())
            } else {
                Ok(Self::Body(parts))
            };
        }
        Err(err())
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client_ip"),
            Self::Header(h) => write!(f, "header:{h}"),
            Self::Claim(c) => write!(f, "claim:{c}"),
            Self::Body(p) => write!(f, "body.{}", p.join(".")),
        }
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

crate::util::string_config_value!(
    RateLimitKey,
    "RateLimitKey",
    "^(client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|claim:.+|body\\.[^.]+(\\.[^.]+)*)$",
    "client_ip, header:<name>, claim:<name> or body.<field> (e.g. body.email)."
);

impl RateLimitKey {
    /// Whether the key needs the first bytes of the request body.
    pub fn needs_body(&self) -> bool {
        matches!(self, Self::Body(_))
    }

    /// The key's value for this request, `None` when the request has none.
    pub fn extract(&self, req: &RequestHeader, cx: &RequestCx<'_>) -> Option<String> {
        let v = match self {
            Self::ClientIp => cx.client_ip.map(crate::ip_text::ip_text),
            Self::Header(h) => req
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string()),
            Self::Claim(c) => cx.claims.as_ref().and_then(|claims| scalar(claims.get(c)?)),
            Self::Body(path) => {
                let body: serde_json::Value = serde_json::from_slice(cx.body_prefix?).ok()?;
                let mut v = &body;
                for p in path {
                    v = v.get(p)?;
                }
                scalar(v)
            }
        }?;
        (!v.is_empty()).then_some(v)
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cx<'a>(body: Option<&'a [u8]>) -> RequestCx<'a> {
        RequestCx {
            client_ip: Some("10.0.0.7".parse().unwrap()),
            body_prefix: body,
            claims: Some(Arc::new(serde_json::json!({"sub": "u1", "n": 5}))),
            ..crate::test_cx()
        }
    }

    #[test]
    fn parses_and_displays() {
        for s in [
            "client_ip",
            "header:x-api-key",
            "claim:sub",
            "body.email",
            "body.user.email",
        ] {
            let k: RateLimitKey = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        for bad in [
            "ip",
            "header:",
            "header:bad name",
            "claim:",
            "body.",
            "body.a..b",
            "email",
        ] {
            assert!(bad.parse::<RateLimitKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn extracts_each_kind() {
        let mut req = RequestHeader::build("POST", b"/login", None).unwrap();
        req.insert_header("x-api-key", "k1").unwrap();
        let body = br#"{"email":"a@example.com","user":{"id":3}}"#;
        let c = cx(Some(body));
        let get = |s: &str| s.parse::<RateLimitKey>().unwrap().extract(&req, &c);
        assert_eq!(get("client_ip").as_deref(), Some("10.0.0.7"));
        assert_eq!(get("header:x-api-key").as_deref(), Some("k1"));
        assert_eq!(get("header:x-other"), None);
        assert_eq!(get("claim:sub").as_deref(), Some("u1"));
        assert_eq!(get("claim:n").as_deref(), Some("5"));
        assert_eq!(get("body.email").as_deref(), Some("a@example.com"));
        assert_eq!(get("body.user.id").as_deref(), Some("3"));
        assert_eq!(get("body.password"), None);
    }

    #[test]
    fn truncated_or_missing_body_is_missing_key() {
        let req = RequestHeader::build("POST", b"/login", None).unwrap();
        let k: RateLimitKey = "body.email".parse().unwrap();
        assert_eq!(k.extract(&req, &cx(Some(br#"{"email":"a@exa"#))), None);
        assert_eq!(k.extract(&req, &cx(None)), None);
        assert_eq!(k.extract(&req, &cx(Some(b"email=a@example.com"))), None);
    }
}
