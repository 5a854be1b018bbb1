//! Small config types and helpers shared by several filters.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string or a list of strings in YAML (`aud: api` or `aud: [api, web]`).
///
/// Deserialized by hand rather than with `#[serde(untagged)]` so that errors keep
/// their location.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OneOrMany(pub Vec<String>);

impl OneOrMany {
    /// The values.
    pub fn values(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for OneOrMany {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for OneOrMany {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StringOrList".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string or a list of strings.",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// Serialization and JSON Schema of a config value written as one string: serialized
/// with its `Display`, described in the schema as a string with a name, a pattern and a
/// description. (Each type parses itself: its `Deserialize` says what a wrong value is.)
macro_rules! string_config_value {
    ($ty:ty, $name:literal, $pattern:literal, $description:literal) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $description
                })
            }
        }
    };
}
pub(crate) use string_config_value;

/// Seconds to announce in `Retry-After`/`RateLimit-Reset`: rounded up, at least `min`.
pub fn ceil_secs(d: std::time::Duration, min: u64) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(min)
}

/// Whether a comma-separated header (e.g. `Vary`) already lists `token`.
pub fn header_lists(values: http::header::GetAll<'_, http::HeaderValue>, token: &str) -> bool {
    values.iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token) || t.trim() == "*")
        })
    })
}

/// Whether a response has a body that a response filter may rewrite: not for `HEAD`,
/// a 1xx, 204 or 304 (no content, RFC 9110 sections 9.3.2, 15.3.5 and 15.4.5), nor a 206
/// (its range names bytes of the unrewritten representation, RFC 9110 section 15.3.7).
pub fn body_rewritable(method: &http::Method, status: u16) -> bool {
    !(*method == http::Method::HEAD
        || status < 200
        || status == 204
        || status == 304
        || status == 206)
}

/// The media type of a `Content-Type` value, lowercased and without its parameters
/// (`Text/HTML; charset=utf-8` is `text/html`; RFC 9110 section 8.3.1: case-insensitive).
pub fn media_type(content_type: &str) -> String {
    let essence = content_type.split(';').next().unwrap_or("");
    essence.trim().to_ascii_lowercase()
}

/// A response header's value as text; `None` when absent or not visible ASCII.
pub fn header_str(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The declared `Content-Length` (RFC 9110 section 8.6); `None` when absent or invalid.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    header_str(headers, http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_many_accepts_both_shapes() {
        let one: OneOrMany = serde_json::from_str("\"a\"").unwrap();
        assert_eq!(one.values(), ["a"]);
        let many: OneOrMany = serde_json::from_str("[\"a\",\"b\"]").unwrap();
        assert_eq!(many.values(), ["a", "b"]);
        assert!(serde_json::from_str::<OneOrMany>("{}").is_err());
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(std::time::Duration::from_millis(1001), 0), 2);
        assert_eq!(ceil_secs(std::time::Duration::from_millis(0), 1), 1);
        assert_eq!(ceil_secs(std::time::Duration::from_secs(3), 1), 3);
    }
}
