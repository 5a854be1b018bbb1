//! gatehouse: a programmable edge gateway on pingora.
//!
//! The request's path through the modules: `router` picks a route from the pinned
//! `state::Snapshot`, the route's filter chain (crate `gatehouse-filters`) runs, `upstream`
//! picks an endpoint, `resilience` holds the breaker and retry policies, `proxy` is the
//! pingora glue, and `admin` serves metrics and the dashboard. See ARCHITECTURE.md for the
//! layers and `proxy/mod.rs` for the phases. [`App`] (in `cli`) is the `gatehouse` command
//! line, to which a program adds its own filter kinds.

pub mod admin;
pub mod app;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod lifecycle;
pub mod memory;
pub mod path;
pub mod proxy;
pub mod resilience;
pub mod router;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use cli::App;
/// The filter API (crate `gatehouse-filters`), for programs that add their own filter
/// kinds: `gatehouse::filters::{Filter, FilterFactory, ...}`.
pub use gatehouse_filters as filters;
