//! Empty: it exists so that cargo resolves this crate's `[build-dependencies]` (the host-side
//! feature union, see Cargo.toml).

fn main() {}
