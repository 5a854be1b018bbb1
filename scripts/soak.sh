#!/usr/bin/env bash
# Soak run (issue 18; not in CI): MINUTES of mixed traffic through the real gateway while,
# all at once, its config reloads every 10 s, its file discovery drops and re-adds an
# endpoint every 15 s, a private Redis is killed (5 s) and frozen with SIGSTOP (5 s) once a
# minute each, and an upstream replica is killed with SIGKILL for 10 s once a minute. Every
# 30 s it prints one line: the gateway's RSS and open fds, the requests and errors of that
# interval per traffic stream, the gateway's 5xx count, its Redis fallback decisions and its
# reloads (applied/refused); at the end the totals, the 5xx and upstream-try outcomes, and the
# gateway's WARN/ERROR log lines by message. Everything listens on 127.0.0.1 on free ports; everything it starts is stopped by
# PID on exit.
#
#   scripts/soak.sh [MINUTES]          (default 10)
#
# Environment:
#   GATEHOUSE_BIN  the gateway binary (default: $CARGO_TARGET_DIR/release/gatehouse when it
#                  exists, else .../debug/gatehouse; build it first)
#   CONNS          wrk connections on the plain route (default 16; 8 on the limited one)
#   KEEP_TMP=1     keep the work directory (configs, logs, per-interval wrk output)
#
# Traffic: wrk (keep-alive GETs) on /plain and on /limited (a GCRA rate limit in Redis with
# on_redis_error: local, never reached), and a curl loop of fresh-connection 4 KiB POSTs on
# /plain. Needs wrk, curl, jq, nginx (the three upstream replicas) and redis-server
# (`scripts/setup.sh test` installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES="${1:-${MINUTES:-10}}"
CONNS="${CONNS:-16}"
TARGET="${CARGO_TARGET_DIR:-/var/cache/gatehouse-target}"
if [[ -z "${GATEHOUSE_BIN:-}" ]]; then
  GATEHOUSE_BIN="$TARGET/release/gatehouse"
  [[ -x "$GATEHOUSE_BIN" ]] || GATEHOUSE_BIN="$TARGET/debug/gatehouse"
fi
[[ -x "$GATEHOUSE_BIN" ]] || { echo "soak: $GATEHOUSE_BIN missing: cargo build -p gatehouse --bins" >&2; exit 2; }
for tool in wrk curl jq nginx redis-server python3; do
  command -v "$tool" >/dev/null || { echo "soak: $tool missing (scripts/setup.sh test)" >&2; exit 2; }
done
BUILD="debug"
[[ "$GATEHOUSE_BIN" == */release/* ]] && BUILD="release"

TMP="$(mktemp -d /tmp/gatehouse-soak.XXXXXX)"
PIDS=()            # loops started here, stopped by PID on exit
declare -A REPLICA_PID
REDIS_PID=""
GW_PID=""

# Every process started here writes its PID to $TMP/pid.<name> (the fault loops restart
# Redis and a replica in subshells), so that the exit stops exactly those.
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $(cat "$TMP"/pid.* 2>/dev/null); do
    kill -CONT "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
  done
  # The gateway drains for up to its grace period; give everything 5 s, then SIGKILL.
  for _ in $(seq 1 50); do
    local alive=0
    for p in $(cat "$TMP"/pid.* 2>/dev/null); do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in $(cat "$TMP"/pid.* 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "soak: work directory kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports below the kernel's range for outgoing connections (scripts/free_ports.py says why).
read -r -a SOAK_PORTS < <(scripts/free_ports.py 6)
wait_port() { # port, what
  local i
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "soak: $2 did not listen on $1" >&2
  return 1
}
now() { date +%s.%N; }

# --- upstream replicas: one nginx process each (master_process off: SIGKILL kills it all)
R_PORTS=("${SOAK_PORTS[@]:0:3}")
start_replica() { # index
  local i=$1 port=${R_PORTS[$1]} dir="$TMP/r$1"
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/body;
    server {
        listen 127.0.0.1:$port;
        location / { return 200 "replica $i\n"; }
    }
}
EOF
  nginx -p "$dir" -e stderr -c "$dir/nginx.conf" 2>>"$dir/err.log" &
  REPLICA_PID[$i]=$!
  disown "$!" # killed on purpose: no job report
  echo "$!" > "$TMP/pid.r$i"
  wait_port "$port" "replica $i"
}
for i in 0 1 2; do start_replica "$i"; done

# --- Redis: private, no persistence
REDIS_PORT="${SOAK_PORTS[3]}"
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" >/dev/null 2>&1 &
  REDIS_PID=$!
  disown "$!"
  echo "$!" > "$TMP/pid.redis"
  wait_port "$REDIS_PORT" redis
}
start_redis

# --- the gateway: file discovery for the pool, a reloading config
PORT="${SOAK_PORTS[4]}"
ADMIN="${SOAK_PORTS[5]}"
EPS="$TMP/endpoints.yaml"
write_endpoints() { # count of replicas listed (2 or 3)
  local i out=""
  for ((i = 0; i < $1; i++)); do out+="- { address: \"127.0.0.1:${R_PORTS[$i]}\" }"$'\n'; done
  printf '%s' "$out" > "$EPS.tmp" && mv "$EPS.tmp" "$EPS"
}
write_config() { # version
  local read=$((5 + $1 % 2))
  cat > "$TMP/gatehouse.yaml.tmp" <<EOF
# soak version $1
listeners: [ { name: public, address: "127.0.0.1:$PORT" } ]
admin: { address: "127.0.0.1:$ADMIN" }
runtime: { threads: 2 }
access_log: { enabled: false }
redis: { url: "redis://127.0.0.1:$REDIS_PORT" }
upstreams:
  pool:
    discovery: { file: { path: "$EPS" } }
    timeouts: { connect: 500ms, read: ${read}s }
routes:
  - { name: plain, match: { path_prefix: /plain }, upstream: pool }
  - name: limited
    match: { path_prefix: /limited }
    upstream: pool
    filters:
      - rate_limit: { name: soak, key: client_ip, limit: 100000, window: 1s, algorithm: gcra, burst: 10000, on_redis_error: local }
EOF
  mv "$TMP/gatehouse.yaml.tmp" "$TMP/gatehouse.yaml"
}
write_endpoints 3
write_config 0
"$GATEHOUSE_BIN" validate -c "$TMP/gatehouse.yaml" >/dev/null
GATEHOUSE_LOG=warn "$GATEHOUSE_BIN" run -c "$TMP/gatehouse.yaml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
disown "$GW_PID"
echo "$GW_PID" > "$TMP/pid.gateway"
wait_port "$PORT" gateway
wait_port "$ADMIN" "gateway admin"

metrics() { curl -s --noproxy '*' "http://127.0.0.1:$ADMIN/metrics"; }
# Sum of the samples of metric $1 whose line matches the regex $2 (default: all).
msum() { awk -v n="$1" -v re="${2:-.}" '$1 ~ "^"n"({|$)" && $0 ~ re { s += $NF } END { printf "%d", s }'; }

# --- the faults, each its own loop
reloader() {
  local v=0
  while sleep 10; do v=$((v + 1)); write_config "$v"; done
}
discoverer() {
  local n=3
  while sleep 15; do n=$((n == 3 ? 2 : 3)); write_endpoints "$n"; done
}
redis_faults() {
  while true; do
    sleep 20; kill -KILL "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    echo "$(date +%T) fault: redis killed" >> "$TMP/faults.log"
    sleep 5; start_redis; echo "$(date +%T) fault: redis back (pid $REDIS_PID)" >> "$TMP/faults.log"
    sleep 25; kill -STOP "$REDIS_PID"; echo "$(date +%T) fault: redis frozen" >> "$TMP/faults.log"
    sleep 5; kill -CONT "$REDIS_PID"; echo "$(date +%T) fault: redis thawed" >> "$TMP/faults.log"
    sleep 5
  done
}
replica_faults() {
  while true; do
    sleep 35; kill -KILL "${REPLICA_PID[1]}"; wait "${REPLICA_PID[1]}" 2>/dev/null || true
    echo "$(date +%T) fault: replica 1 killed" >> "$TMP/faults.log"
    sleep 10; start_replica 1; echo "$(date +%T) fault: replica 1 back" >> "$TMP/faults.log"
    sleep 15
  done
}
# Fresh-connection POSTs with a 4 KiB body: one status code per line.
poster() {
  head -c 4096 /dev/zero | tr '\0' 'x' > "$TMP/body"
  while true; do
    curl -s --noproxy '*' -o /dev/null -m 10 -w '%{http_code}\n' -X POST --data-binary @"$TMP/body" \
      "http://127.0.0.1:$PORT/plain/post" >> "$TMP/posts" || true
    sleep 0.05
  done
}
: > "$TMP/faults.log"
: > "$TMP/posts"
# The fault loops run in subshells: the replica and Redis PIDs they restart are theirs, so
# they write them to files for the final cleanup.
(redis_faults; ) & PIDS+=($!)
(replica_faults; ) & PIDS+=($!)
reloader & PIDS+=($!)
discoverer & PIDS+=($!)
poster & PIDS+=($!)

proc_rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$GW_PID/status"; }
proc_fds() { ls "/proc/$GW_PID/fd" | wc -l; }
wrk_errors() { jq -r '"\(.requests|floor) \((.err_connect + .err_read + .err_write + .err_timeout + .err_status)|floor) \(.p99_us|floor)"' ; }

echo "soak: $MINUTES min, gateway $GATEHOUSE_BIN ($BUILD build, pid $GW_PID), work dir $TMP"
echo "soak: faults: reload every 10 s, discovery change every 15 s, Redis killed 5 s and frozen 5 s per minute, replica 1 killed 10 s per minute"
m0="$(metrics)"
rss_first="$(proc_rss)"; fds_first="$(proc_fds)"
rss_max=$rss_first; fds_max=$fds_first
tot_plain=0; tot_plain_err=0; tot_lim=0; tot_lim_err=0; tot_post=0; tot_post_err=0
posts_seen=0
windows=$((MINUTES * 2))
printf '%-8s %8s %5s | %8s %5s %7s | %8s %5s %7s | %6s %5s | %6s %8s %7s\n' \
  time rss_kB fds plain err p99_ms limited err p99_ms posts err gw5xx rl_fallbk reloads
for ((w = 1; w <= windows; w++)); do
  wrk -t1 -c"$CONNS" -d30s --timeout 10s -s benches/load/report.lua "http://127.0.0.1:$PORT/plain" > "$TMP/wrk-plain-$w.out" 2>&1 &
  a=$!
  wrk -t1 -c$((CONNS / 2)) -d30s --timeout 10s -s benches/load/report.lua "http://127.0.0.1:$PORT/limited" > "$TMP/wrk-limited-$w.out" 2>&1 &
  b=$!
  wait "$a" "$b" || true
  kill -0 "$GW_PID" 2>/dev/null || { echo "soak: the gateway died"; tail -20 "$TMP/gateway.log"; exit 1; }
  read -r pr pe pp < <(grep '^BENCH_JSON ' "$TMP/wrk-plain-$w.out" | cut -d' ' -f2- | wrk_errors || echo "0 1 0")
  read -r lr le lp < <(grep '^BENCH_JSON ' "$TMP/wrk-limited-$w.out" | cut -d' ' -f2- | wrk_errors || echo "0 1 0")
  posts_now=$(wc -l < "$TMP/posts")
  new_posts=$(tail -n +"$((posts_seen + 1))" "$TMP/posts" | head -n "$((posts_now - posts_seen))")
  po=$((posts_now - posts_seen)); posts_seen=$posts_now
  poe=$(printf '%s\n' "$new_posts" | grep -cv '^200$' || true)
  [[ -z "$new_posts" ]] && poe=0
  m1="$(metrics)"
  g5=$(( $(msum gatehouse_requests_total 'status_class="5xx"' <<<"$m1") - $(msum gatehouse_requests_total 'status_class="5xx"' <<<"$m0") ))
  fb_re='decision="(fail_open|fail_closed|local_allowed|local_limited)"'
  fb=$(( $(msum gatehouse_ratelimit_decisions_total "$fb_re" <<<"$m1") - $(msum gatehouse_ratelimit_decisions_total "$fb_re" <<<"$m0") ))
  rl_ok=$(( $(msum gatehouse_config_reloads_total 'result="success"' <<<"$m1") - $(msum gatehouse_config_reloads_total 'result="success"' <<<"$m0") ))
  rl_bad=$(( $(msum gatehouse_config_reloads_total 'result="failure"' <<<"$m1") - $(msum gatehouse_config_reloads_total 'result="failure"' <<<"$m0") ))
  m0="$m1"
  rss="$(proc_rss)"; fds="$(proc_fds)"
  ((rss > rss_max)) && rss_max=$rss
  ((fds > fds_max)) && fds_max=$fds
  tot_plain=$((tot_plain + pr)); tot_plain_err=$((tot_plain_err + pe))
  tot_lim=$((tot_lim + lr)); tot_lim_err=$((tot_lim_err + le))
  tot_post=$((tot_post + po)); tot_post_err=$((tot_post_err + poe))
  printf '%-8s %8s %5s | %8s %5s %7.1f | %8s %5s %7.1f | %6s %5s | %6s %8s %4s/%-2s\n' \
    "$((w * 30))s" "$rss" "$fds" "$pr" "$pe" "$(awk -v u="$pp" 'BEGIN { print u / 1000 }')" "$lr" "$le" "$(awk -v u="$lp" 'BEGIN { print u / 1000 }')" \
    "$po" "$poe" "$g5" "$fb" "$rl_ok" "$rl_bad"
done
echo "soak: faults injected (count, kind):"; cut -d' ' -f2- "$TMP/faults.log" | sed 's/ (pid [0-9]*)//' | sort | uniq -c
echo "soak: totals: plain $tot_plain requests, $tot_plain_err errors; limited $tot_lim requests, $tot_lim_err errors; posts $tot_post, $tot_post_err not 200"
echo "soak: gateway RSS ${rss_first} kB first, ${rss_max} kB max, ${rss} kB last; fds ${fds_first} first, ${fds_max} max, ${fds} last ($BUILD build)"
echo "soak: gateway 5xx by route and source:"
grep '^gatehouse_requests_total{.*status_class="5xx"' <<<"$m1" | grep -v ' 0$' | sed 's/^/  /'
echo "soak: upstream tries by endpoint and outcome, and retries (an endpoint's series restart when discovery re-adds it):"
grep -E '^gatehouse_upstream_(requests|retries)_total' <<<"$m1" | grep -v ' 0$' \
  | sed -E 's/^gatehouse_upstream_requests_total\{.*endpoint="([^"]*)".*outcome="([^"]*)".*\} /  \1 \2 /; s/^gatehouse_upstream_retries_total\{.*reason="([^"]*)".*\} /  retries \1 /' \
  | awk '{ k = $1 " " $2; s[k] += $3 } END { for (k in s) print "  " k " " s[k] }' | sort
echo "soak: gateway log: $(grep -c '"level":"WARN"' "$TMP/gateway.log" || true) WARN and $(grep -c '"level":"ERROR"' "$TMP/gateway.log" || true) ERROR lines; distinct messages:"
jq -r 'select(.level == "WARN" or .level == "ERROR") | "\(.level) \(.fields.message)"' "$TMP/gateway.log" 2>/dev/null | sort | uniq -c | sort -rn | head -15
