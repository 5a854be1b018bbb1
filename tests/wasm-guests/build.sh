#!/usr/bin/env bash
# Builds the proxy-wasm guest filters for wasm32-wasip1 into
# ${CARGO_TARGET_DIR:-target}/wasm-guests/wasm32-wasip1/release/guest_<name>.wasm (a target dir
# of their own under the gateway's, so that CI keeps it between runs). Needs the target:
# `rustup target add wasm32-wasip1` (scripts/setup.sh test adds it). The tests call it
# (gatehouse_testkit::wasm_guest); scripts/test.sh and the load harness too.
set -euo pipefail
cd "$(dirname "$0")"
base="${CARGO_TARGET_DIR:-$(pwd)/../../target}"
CARGO_TARGET_DIR="$base/wasm-guests" cargo build --release --target wasm32-wasip1 --quiet "$@"
echo "$base/wasm-guests/wasm32-wasip1/release"
