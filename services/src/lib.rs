//! gatehouse-services: the reference services behind the gatehouse gateway, the transfer
//! saga coordinator, their events, and the one-command demo.

pub mod auth;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod events;
pub mod faults;
pub mod metrics;
pub mod notification;
pub mod payment;
pub mod saga;
pub mod server;
pub mod switchboard;
pub mod text_enum;
pub mod trace;
pub mod transaction;
pub mod user;

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random 16-hex-digit id (64 bits).
pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
