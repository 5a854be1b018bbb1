//! Integration tests: the real gateway binary against real upstream servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod filters;
mod foundation;
mod observability;
mod live_ops;
mod resilience;
mod support;
