//! Integration tests of the filters on hand-built requests: JWT against real keys and
//! a real local JWKS server, rate limits against the real Redis at 127.0.0.1:6379
//! (these fail, never skip, when it is not running).

// Test helpers outside #[test] functions panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docs;
mod jwks;
mod jwt;
mod jwt_attacks;
mod rate_limit;
mod support;
