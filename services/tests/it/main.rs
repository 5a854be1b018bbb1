//! Integration tests of gatehouse-services: real processes, real SQLite/MariaDB/Redis.
//! Tests needing MariaDB (127.0.0.1:3306) or Redis (127.0.0.1:6379) fail when they are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod bank;
#[cfg(feature = "demo")]
mod demo_log;
mod harness;
#[cfg(feature = "demo")]
mod traces;
