//! Test support shared by the integration tests of every crate in the workspace (dev-only,
//! never published): a process-wide port registry, a private `redis-server` the test may
//! stop, real HTTP upstreams that misbehave on command, the real gateway binary started
//! from YAML, pebble (the ACME test CA), a JSON client that reads a response in one call,
//! and an OTLP trace receiver.
//!
//! Everything here panics on a failed setup: a test that cannot set up is a failed test,
//! never a skipped one.

// Panicking is how test setup reports failure (see the module doc).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway;
mod http;
mod otlp;
mod pebble;
mod ports;
mod process;
mod redis;
mod redis_topology;
mod upstream;
mod wasm;
mod yaml;

pub use gateway::{example_bin, fill, gatehouse_bin, TestGateway};
pub use http::{admin_json, client, eventually, get_json, metric_value, send, JsonResponse};
pub use otlp::{OtlpReceiver, ReceivedSpan, KIND_CLIENT, KIND_SERVER, STATUS_ERROR};
pub use pebble::Pebble;
pub use ports::{free_port, free_ports, is_listening, unique};
pub use process::{output_of, run_bounded};
pub use redis::PrivateRedis;
pub use redis_topology::{redis_cli, RedisCluster, RedisSentinels};
pub use upstream::{
    black_hole, grpc_server, raw_upstream, read_request_head, Mode, TestUpstream, UpstreamState,
};
pub use wasm::wasm_guest;
pub use yaml::AppConfig;
