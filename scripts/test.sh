#!/usr/bin/env bash
# The test command (README): every test of the workspace against the real Redis and
# MariaDB, the bench smoke runs, the observability checks, the dashboard in headless
# Chromium, and a short load-harness check. Needs Redis on 127.0.0.1:6379 and MariaDB on
# 127.0.0.1:3306: scripts/setup.sh installs the tools and starts both when they are down;
# a test fails, never skips, when one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gatehouse-target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
step() { printf '\n=== %s\n' "$*"; }

step "setup: system packages and test tools when missing, Redis and MariaDB when down"
scripts/setup.sh test

step "unit and integration tests (gateway, filters, registry, services), benches in smoke mode"
# --all-targets also runs every criterion bench once in test mode (debug build, no timing).
# Timing-sensitive tests share 2 cores: cap the parallelism of test threads.
# The services' demo (and its test) runs the gateway in-process: it needs the `demo` feature.
RUST_TEST_THREADS="${TEST_THREADS:-4}" cargo test --workspace --all-targets --features gatehouse-services/demo

step "deployment files: systemd-analyze verify on the unit, hadolint on the Dockerfile"
cargo build -p gatehouse --bins
scripts/check-deploy.sh

step "observability: promtool rules and tests, Grafana dashboard"
scripts/check-observability.sh

step "dashboard in headless Chromium against a real gateway"
scripts/browser-test.sh

step "load harness, check mode (0 errors; no timing asserted)"
cargo build -p gatehouse --bins --example bare_proxy
GATEHOUSE_BIN="$CARGO_TARGET_DIR/debug/gatehouse" BARE_BIN="$CARGO_TARGET_DIR/debug/examples/bare_proxy" \
  DURATION="${LOAD_DURATION:-3}" CONNS="${LOAD_CONNS:-64}" benches/load/run.sh --check

echo
echo "all tests passed"
