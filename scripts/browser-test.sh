#!/usr/bin/env bash
# Runs the dashboard's headless-Chromium test (tests/browser) against a real gateway with
# one healthy and one failing upstream. The screenshot lands in artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gatehouse-target}"
GATEHOUSE_BIN="${GATEHOUSE_BIN:-$CARGO_TARGET_DIR/debug/gatehouse}"
[ -x "$GATEHOUSE_BIN" ] || cargo build -p gatehouse
ARTIFACT_DIR="${ARTIFACT_DIR:-$PWD/artifacts}"
mkdir -p "$ARTIFACT_DIR"
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# Waits up to SECS seconds for URL to answer 2xx while process PID lives. Returns 0 when it
# answered; otherwise prints the tail of LOG (a bare `curl` later would only say "exit 7")
# and returns 1 when the process exited, 2 when it did not answer in time.
wait_ready() {
  local url=$1 pid=$2 secs=$3 log=$4 _
  for _ in $(seq 1 $((secs * 10))); do
    curl -sf "$url" >/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: the process behind $url exited before it answered; the end of $log:" >&2
      tail -n 40 "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "error: $url did not answer within ${secs}s; the end of $log:" >&2
  tail -n 40 "$log" >&2; return 2
}
# Ports below the kernel's range for outgoing connections (scripts/free_ports.py says why).
read -r up_port dead_port gw_port admin_port < <(scripts/free_ports.py 4)

# A healthy upstream: 200 for everything, /health included.
cat > "$tmp/upstream.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok":true}'
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$tmp/upstream.py" "$up_port" & pids+=($!)

cat > "$tmp/gatehouse.yaml" <<YAML
listeners: [ { name: public, address: "127.0.0.1:$gw_port" } ]
admin: { address: "127.0.0.1:$admin_port" }
runtime: { threads: 1 }
access_log: { enabled: false }
upstreams:
  user:
    discovery: { static: [ { address: "127.0.0.1:$up_port" } ] }
    health_check: { path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }
  payment:
    discovery: { static: [ { address: "127.0.0.1:$dead_port" } ] }
    health_check: { path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }
    circuit_breaker: { failure_rate: 0.5, min_requests: 3, window: 30s, open_for: 60s, half_open_probes: 1 }
routes:
  - { name: user, match: { path_prefix: /user }, upstream: user }
  - { name: payment, match: { path_prefix: /payment }, upstream: payment }
YAML
"$GATEHOUSE_BIN" validate -c "$tmp/gatehouse.yaml"
"$GATEHOUSE_BIN" run -c "$tmp/gatehouse.yaml" > "$ARTIFACT_DIR/browser-gateway.log" 2>&1 & pids+=($!)
wait_ready "http://127.0.0.1:$admin_port/readyz" "$!" 30 "$ARTIFACT_DIR/browser-gateway.log" || exit 1

cd tests/browser
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
ADMIN_PORT=$admin_port GATEWAY_URL="http://127.0.0.1:$gw_port" FAILING_UPSTREAM=payment HEALTHY_UPSTREAM=user \
  TRAFFIC_PATH=/user/x FAILING_TRAFFIC_PATH=/payment/x EXPECT_STATUS=DEGRADED EXPECT_BREAKER_STATE=OPEN WAIT_SECONDS=30 \
  ARTIFACT_DIR="$ARTIFACT_DIR" node dashboard.test.mjs
# The same page against the mock admin API: states the real gateway cannot be put in on cue
# (a breaker OPEN over healthy endpoints, a reload with a pending restart, missing fields).
ARTIFACT_DIR="$ARTIFACT_DIR/mock" node dashboard.test.mjs --mock

# The README's screenshot, from the demo itself (its four services and their DB pools): the
# demo on free ports, the walk-through's traffic, then a full-page PNG. UPDATE_SCREENSHOT=1
# writes docs/dashboard.png (commit it); otherwise artifacts/dashboard-demo.png.
cd ../..
# The test command's `cargo test --features gatehouse-services/demo` built it (a `cargo build`
# here would resolve the dev-dependencies' features differently and compile it again).
SERVICES_BIN="${SERVICES_BIN:-$CARGO_TARGET_DIR/debug/gatehouse-services}"
[ -x "$SERVICES_BIN" ] || cargo build -p gatehouse-services --features demo
# The ports come from below the kernel's range for outgoing connections, but another program
# may still take one before the demo binds it; the demo then exits naming the address, and
# it is started again on new ports, at most 3 times.
for attempt in 1 2 3; do
  read -r d_gw d_admin d_ctl d_user d_tx d_pay d_note < <(scripts/free_ports.py 7)
  sed -e "s/127.0.0.1:3000/127.0.0.1:$d_gw/" -e "s/127.0.0.1:9901/127.0.0.1:$d_admin/" \
      -e "s/127.0.0.1:3001/127.0.0.1:$d_user/" -e "s/127.0.0.1:3003/127.0.0.1:$d_tx/" \
      -e "s/127.0.0.1:3004/127.0.0.1:$d_pay/" -e "s/127.0.0.1:3005/127.0.0.1:$d_note/" \
      -e "s/interval: 10s/interval: 1s/" config/demo.yaml > "$tmp/demo.yaml"
  rm -rf "$tmp/demo-data"
  GATEHOUSE_DEMO_CONFIG="$tmp/demo.yaml" GATEHOUSE_DEMO_CONTROL="127.0.0.1:$d_ctl" RUST_LOG=warn \
    "$SERVICES_BIN" demo --data-dir "$tmp/demo-data" --user-port "$d_user" --transaction-port "$d_tx" \
    --payment-port "$d_pay" --notification-port "$d_note" > "$ARTIFACT_DIR/browser-demo.log" 2>&1 & pids+=($!)
  # It starts four services, then its gateway (under a second on a debug build).
  rc=0; wait_ready "http://127.0.0.1:$d_admin/readyz" "$!" 60 "$ARTIFACT_DIR/browser-demo.log" || rc=$?
  [ "$rc" = 0 ] && break
  [ "$rc" = 1 ] && [ "$attempt" -lt 3 ] || exit 1
  echo "the demo exited before it was ready (attempt $attempt); again on new ports" >&2
done
api="http://127.0.0.1:$d_gw/api"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
curl -sf "$api/user/register" -H 'content-type: application/json' \
  -d '{"email":"ada@example.com","password":"correct horse battery","role":"USER"}' >/dev/null
token=$(curl -sf "$api/user/login" -H 'content-type: application/json' \
  -d '{"email":"ada@example.com","password":"correct horse battery"}' | json token)
auth="authorization: Bearer $token"
a=$(curl -sf "$api/payment/accounts" -H "$auth" -H 'content-type: application/json' -d '{"initial_balance":10000}' | json id)
b=$(curl -sf "$api/payment/accounts" -H "$auth" -H 'content-type: application/json' -d '{}' | json id)
for i in $(seq 1 5); do
  curl -sf "$api/transaction/transfers" -H "$auth" -H 'content-type: application/json' \
    -d "{\"from_account\":\"$a\",\"to_account\":\"$b\",\"amount\":100}" >/dev/null
  curl -sf "$api/transaction/history" -H "$auth" >/dev/null
  curl -sf "$api/notification/notifications" -H "$auth" >/dev/null
  curl -s -o /dev/null "$api/transaction/history"   # 401: no token
done
if [ "${UPDATE_SCREENSHOT:-0}" = 1 ]; then shot="$PWD/docs/dashboard.png"; else shot="$ARTIFACT_DIR/dashboard-demo.png"; fi
(cd tests/browser && ADMIN_URL="http://127.0.0.1:$d_admin/" OUT="$shot" node demo-screenshot.mjs)
