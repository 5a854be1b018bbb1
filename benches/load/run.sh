#!/usr/bin/env bash
# gatehouse load harness: see README.md beside this file.
#   benches/load/run.sh            full run (DURATION=10 per measurement)
#   benches/load/run.sh --check    CI smoke: short runs, fails unless every target answers with 0 errors
# Environment: DURATION WARMUP CONNS TARGETS OUT GATEHOUSE_BIN BARE_BIN BUILD PROXY_CPU LOAD_CPU
#              UPSTREAM_CPU REDIS_ADDR SETTLE WRK_TIMEOUT KEEP_TMP CHECK
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/harness.py" "$@"
