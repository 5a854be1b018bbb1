//! Integration tests: the real gateway binary against real upstream servers on loopback,
//! one file per behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bodies;
mod chaos;
mod cli;
mod client_addr;
mod context_headers;
mod custom_filter;
mod deploy;
mod discovery;
mod drain;
mod health;
mod http_edge;
mod jwt;
mod load;
mod load_balancing;
mod log_lines;
mod metrics_series;
mod observability;
mod overload;
mod parser_refusals;
mod rate_limits;
mod redis_tls;
mod redis_topologies;
mod refusal_log;
mod reload;
mod resilience;
mod routing;
mod routing_templates;
mod shutdown;
mod smuggling;
mod support;
mod tls;
mod upstream_errors;
mod upstream_faults;
mod wasm;
