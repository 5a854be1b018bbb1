//! Integration tests: the real gateway binary against real upstream servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod filters;
mod foundation;
mod http_edge;
mod live_ops;
mod observability;
mod resilience;
mod support;
