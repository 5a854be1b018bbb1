//! Human-friendly durations in config: `250ms`, `10s`, `15m`, `1h`, `1d`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A duration written as a number and a unit (`ms`, `s`, `m`, `h`, `d`), e.g. `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    /// The std duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

/// A duration string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {input:?}: expected a number followed by ms, s, m, h or d (e.g. 250ms, 10s, 15m)")]
pub struct ParseDurationError {
    input: String,
}

impl FromStr for Duration {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: s.to_string(),
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => None,
        }
        .ok_or_else(err)?;
        Ok(Duration::from_millis(ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms.checked_rem(size) == Some(0) {
                return write!(f, "{}{}", ms / size, unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl serde::de::Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 10s or 15m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            // A bare number has no unit to read it in: say how to write one.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration with its unit, such as {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} is not a duration: write one with its unit, such as 1s or 250ms"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration with its unit, such as 1s or 1500ms"
                )))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

crate::util::string_config_value!(
    Duration,
    "Duration",
    "^[0-9]+(ms|s|m|h|d)$",
    "A duration: a number followed by ms, s, m, h or d (e.g. 250ms, 10s, 15m)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("250ms".parse(), Ok(Duration::from_millis(250)));
        assert_eq!("10s".parse(), Ok(Duration::from_secs(10)));
        assert_eq!("15m".parse(), Ok(Duration::from_secs(900)));
        assert_eq!("1h".parse(), Ok(Duration::from_secs(3600)));
        assert_eq!("2d".parse(), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10", "s", "10x", "-1s", "1.5s", "10 s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["250ms", "10s", "15m", "1h", "1d", "1500ms"] {
            assert_eq!(
                s.parse::<Duration>().map(|d| d.to_string()),
                Ok(s.to_string())
            );
        }
    }
}
