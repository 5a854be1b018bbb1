#!/usr/bin/env bash
# Fuzzing (cargo fuzz, libFuzzer, nightly): runs each target of fuzz/ for SECONDS
# (default 60) on its corpus, then prints executions and crashes per target.
#   scripts/fuzz.sh [SECONDS]            every target
#   FUZZ_TARGETS="router path" scripts/fuzz.sh 600
# Installs the nightly toolchain and cargo-fuzz when missing; when either cannot be
# installed it says so and exits 0 ("skipped"), so that CI without them still runs.
# A crash exits 1; its input is in fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz
# run <target> <file>). New corpus entries stay untracked; seeds are fuzz/corpus/*/seed-*.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
TARGET_DIR="${FUZZ_TARGET_DIR:-/var/cache/gatehouse-fuzz-target}"
# No sanitizer by default: the code under test is safe Rust (a panic is what we look
# for), and ASan doubles the build and halves the executions. FUZZ_SANITIZER=address
# turns it on.
SANITIZER="${FUZZ_SANITIZER:-none}"
TARGETS="${FUZZ_TARGETS:-config router path jwt proxy_protocol forwarded}"

skip() {
  echo "fuzz: SKIPPED: $*"
  exit 0
}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1 ||
    skip "the nightly toolchain could not be installed (rustup toolchain install nightly)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked >/dev/null 2>&1 ||
    skip "cargo-fuzz could not be installed (cargo install cargo-fuzz)"
fi

# -a: debug assertions (and overflow checks) on, so an arithmetic overflow is a crash too.
FLAGS=(-O -a --sanitizer "$SANITIZER" --target-dir "$TARGET_DIR")
echo "fuzz: building the targets (nightly, release, sanitizer $SANITIZER)"
if ! (cd fuzz && cargo +nightly fuzz build "${FLAGS[@]}"); then
  echo "fuzz: FAILED to build the fuzz targets"
  exit 1
fi

status=0
summary=()
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="$TARGET_DIR/fuzz-$t.log"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  (cd fuzz && cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
    >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  [ -n "$runs" ] || runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$t: CRASH after ${runs:-?} executions (exit $rc); see $log and fuzz/artifacts/$t/")
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5
  else
    summary+=("$t: ${runs:-?} executions in ${SECONDS_PER_TARGET}s, no crash, corpus $corpus")
  fi
done
echo
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
exit $status
