#!/usr/bin/env bash
# The README's "run" command: installs the build's system packages when missing, then starts the
# gateway on :3000 with the four reference services behind it (arguments go to `demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec cargo run --release -p gatehouse-services --features demo -- demo "$@"
