//! Fault injection for the payment service: fail, delay or drop a fraction of debits/credits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// Fractions (0..=1) of debits/credits to fail, drop or delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Answer 503 without applying.
    pub fail: f64,
    /// Apply, commit, then answer 503 as if the answer were lost.
    pub drop: f64,
    /// Sleep `delay_ms` before applying.
    pub delay: f64,
    /// The delay of delayed operations, in milliseconds.
    pub delay_ms: u64,
}

impl FaultConfig {
    /// Parses `fail=0.1,drop=0.1,delay=0.05,delay_ms=300` (any subset; empty = none).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut c = FaultConfig::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault setting {part:?} is not key=value"))?;
            match k.trim() {
                "fail" | "drop" | "delay" => {
                    let f: f64 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("fault {k}: {v:?} is not a number"))?;
                    match k.trim() {
                        "fail" => c.fail = f,
                        "drop" => c.drop = f,
                        _ => c.delay = f,
                    }
                }
                "delay_ms" => {
                    c.delay_ms = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("fault delay_ms: {v:?} is not an integer"))?
                }
                other => return Err(format!("unknown fault setting {other:?}")),
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every fraction is within 0..=1 and their sum is at most 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, f) in [
            ("fail", self.fail),
            ("drop", self.drop),
            ("delay", self.delay),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("fault {name} must be within 0..=1, got {f}"));
            }
        }
        if self.fail + self.drop + self.delay > 1.0 + 1e-9 {
            return Err("fault fractions add up to more than 1".into());
        }
        if self.delay_ms > 60_000 {
            return Err("fault delay_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// What to do with one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Proceed normally.
    None,
    /// Refuse with 503, apply nothing.
    Fail,
    /// Apply, then answer 503.
    Drop,
    /// Sleep this many ms, then proceed.
    Delay(u64),
}

impl Fault {
    /// The metric label of the fault.
    pub fn label(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Fail => "fail",
            Fault::Drop => "drop",
            Fault::Delay(_) => "delay",
        }
    }
}

/// Counts of injected faults, reported by `GET /admin/faults`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FaultCounts {
    /// Operations refused.
    pub fail: u64,
    /// Operations applied whose answer was replaced by a 503.
    pub drop: u64,
    /// Operations delayed.
    pub delay: u64,
}

/// The live fault configuration and its counters.
#[derive(Debug, Default)]
pub struct FaultInjector {
    config: RwLock<FaultConfig>,
    fail: AtomicU64,
    drop: AtomicU64,
    delay: AtomicU64,
}

impl FaultInjector {
    /// An injector starting with `config`.
    pub fn new(config: FaultConfig) -> Self {
        FaultInjector {
            config: RwLock::new(config),
            ..Default::default()
        }
    }

    /// The current configuration.
    pub fn config(&self) -> FaultConfig {
        self.config.read().map(|c| *c).unwrap_or_default()
    }

    /// Replaces the configuration (already validated).
    pub fn set(&self, config: FaultConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
    }

    /// The counters so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            fail: self.fail.load(Ordering::Relaxed),
            drop: self.drop.load(Ordering::Relaxed),
            delay: self.delay.load(Ordering::Relaxed),
        }
    }

    /// Draws the fault for one operation and counts it.
    pub fn draw(&self) -> Fault {
        let c = self.config();
        if c.fail + c.drop + c.delay <= 0.0 {
            return Fault::None;
        }
        let r: f64 = rand::random();
        let fault = if r < c.fail {
            Fault::Fail
        } else if r < c.fail + c.drop {
            Fault::Drop
        } else if r < c.fail + c.drop + c.delay {
            Fault::Delay(c.delay_ms)
        } else {
            Fault::None
        };
        let counter = match fault {
            Fault::Fail => &self.fail,
            Fault::Drop => &self.drop,
            Fault::Delay(_) => &self.delay,
            Fault::None => return fault,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = FaultConfig::parse("fail=0.1, drop=0.2,delay=0.05,delay_ms=300").unwrap();
        assert_eq!(c.fail, 0.1);
        assert_eq!(c.drop, 0.2);
        assert_eq!(c.delay_ms, 300);
        assert!(FaultConfig::parse("fail=2").is_err());
        assert!(FaultConfig::parse("fail=0.6,drop=0.6").is_err());
        assert!(FaultConfig::parse("explode=1").is_err());
        assert_eq!(FaultConfig::parse("").unwrap(), FaultConfig::default());
    }

    #[test]
    fn draw_respects_fractions() {
        let f = FaultInjector::new(FaultConfig {
            fail: 1.0,
            ..Default::default()
        });
        assert_eq!(f.draw(), Fault::Fail);
        f.set(FaultConfig::default());
        assert_eq!(f.draw(), Fault::None);
        assert_eq!(f.counts().fail, 1);
    }
}
