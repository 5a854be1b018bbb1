//! A proxy-wasm host (ABI v0.2.1, the version the Rust, Go and C++ SDKs target) on wasmtime,
//! for gatehouse's `wasm` filter: filter modules written for Envoy run against pingora's
//! request and response headers.
//!
//! - [`engine`]: the one engine (epoch interruption bounds every call) and the module cache
//!   keyed by SHA-256.
//! - [`plugin`]: a configured module, proven to start and configure before it is accepted.
//! - `instance` / `vm`: one instance per plugin per proxy thread, one context per stream in it.
//! - [`stream`]: one HTTP stream's callbacks, the API the filter adapter drives.
//! - `host/`: the host functions, one group per file; [`abi`]: the ABI's numbers and
//!   encodings; [`http`]: `proxy_http_call`'s sending; [`shared`], [`metrics`]: what guests
//!   share in the process; `ticker`: root-context timers.

pub mod abi;
pub mod engine;
mod host;
pub mod http;
mod instance;
mod memory;
pub mod metrics;
pub mod plugin;
pub mod runtime;
pub mod shared;
mod state;
pub mod stream;
mod ticker;
mod vm;

pub use instance::{Failure, GuestError};
pub use plugin::{LoadError, Plugin, PluginSpec};
pub use runtime::{Upstreams, WasmRuntime};
pub use state::{CallAnswer, CallRequest, LocalResponse, StreamInfo};
pub use stream::{HttpStream, Phase, Step};
