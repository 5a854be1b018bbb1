//! Sizes in config: a byte count (`1048576`) or a number with a unit (`512k`, `10MiB`,
//! `1g`), units in powers of 1024 as nginx reads `client_max_body_size 10m`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// A size string could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid size {input:?}: write a byte count or a number with k, m or g (KiB, MiB, GiB; powers of 1024), such as 10MiB or 512k")]
pub struct ParseSizeError {
    input: String,
}

/// Reads `1048576`, `512k`, `512KiB`, `10m`, `10MB`, `10MiB`, `1g` (case-insensitive;
/// every unit a power of 1024, as nginx's sizes). Errors on anything else or overflow.
pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
    let err = || ParseSizeError {
        input: s.to_string(),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" | "ki" => 10,
        "m" | "mb" | "mib" | "mi" => 20,
        "g" | "gb" | "gib" | "gi" => 30,
        _ => return Err(err()),
    };
    n.checked_mul(1 << shift).ok_or_else(err)
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size: a byte count or a number with k, m or g, such as 10MiB")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }
}

/// `deserialize_with` for a size field of any unsigned type.
pub fn de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = d.deserialize_any(SizeVisitor)?;
    T::try_from(n).map_err(|_| de::Error::custom(format!("size {n} is too large")))
}

/// `deserialize_with` for an optional size field (`null` or absent: `None`).
pub fn de_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct Wrap<T>(T);
    impl<'de, T: TryFrom<u64>> serde::Deserialize<'de> for Wrap<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            de(d).map(Wrap)
        }
    }
    Ok(<Option<Wrap<T>> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
}

/// The JSON Schema of a size field (`#[schemars(with = "ByteSize")]`): an integer, or a
/// string with a unit.
pub struct ByteSize;

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: a count, or a number with k, m or g (KiB, MiB, GiB; powers of 1024), e.g. 10MiB, 512k.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgG]([iI]?[bB]?)?|[bB])?\\s*$" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_in_powers_of_1024() {
        for (s, n) in [
            ("0", 0),
            ("1048576", 1_048_576),
            ("512k", 512 << 10),
            ("512KiB", 512 << 10),
            ("10m", 10 << 20),
            ("10MB", 10 << 20),
            ("10 MiB", 10 << 20),
            ("1g", 1 << 30),
            ("7b", 7),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
    }

    #[test]
    fn refuses_garbage_and_overflow() {
        for bad in [
            "",
            "m",
            "10x",
            "-1",
            "1.5m",
            "10 apples",
            "99999999999999999999g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("17179869184g").is_err(), "overflows u64");
    }
}
