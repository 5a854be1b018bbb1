#!/usr/bin/env python3
"""Redis script calls per rate-limited request (issue 19), and one Redis's script-call rate.

Starts a private redis-server, the load harness's nginx upstream and the gateway with one
route limited in Redis (`key: header:x-k`, a limit never reached, `on_redis_error:
fail_closed` so a Redis failure shows as a 503), then for each connection count and key
mode runs wrk for DURATION seconds and reads `INFO commandstats` (EVAL/EVALSHA/FCALL
calls) before and after, against the limit's decisions from the gateway's /metrics:

  hot     every request carries the same key: the gateway batches a key's requests
          while its call is in flight (one script call per batch)
  spread  each request a random key of 100,000: batching rarely helps

Then redis-benchmark runs the gateway's own sliding-window script (EVALSHA, one request
per call, random keys) against the same Redis: script calls per second of one Redis
process, without and with pipelining (the gateway's connection is multiplexed).

usage: script_calls.py GATEHOUSE_BIN [CONNS ...]   (default CONNS: 64 1000)
env:   DURATION (5), THREADS (the gateway's runtime.threads, 1), ALGORITHM (sliding_window),
       REDIS_TIMEOUT (the gateway's redis.timeout, 1s: a debug gateway at 1000 connections
       queues a call for longer than the 50 ms default)
       and the load harness's PROXY_CPU / LOAD_CPU / UPSTREAM_CPU pinning.
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benches", "load"))
import harness  # noqa: E402  (the load harness: processes, redis-server, nginx upstream)

LIMIT = "per_key"

CONFIG = """\
listeners: [ {{ name: public, address: "127.0.0.1:{port}" }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
runtime: {{ threads: {threads} }}
access_log: {{ enabled: false }}
redis: {{ url: "redis://{redis}", timeout: {timeout} }}
upstreams:
  app: {{ discovery: {{ static: [ {{ address: "127.0.0.1:{upstream}" }} ] }} }}
routes:
  - name: limited
    match: {{ path_prefix: / }}
    upstream: app
    filters:
      - rate_limit: {{ name: {limit}, key: "header:x-k", limit: 100000000, window: 1m, algorithm: {algorithm}, on_redis_error: fail_closed }}
"""

# wrk: the key header per mode, and one machine-readable line (report.lua's format plus
# non-2xx answers counted in `response`, which costs wrk some speed but not the gateway).
WRK_LUA = """\
local mode = os.getenv("KEY_MODE")
request = function()
  local key = "hot"
  if mode == "spread" then key = tostring(math.random(1, 100000)) end
  return wrk.format(nil, nil, { ["x-k"] = key })
end
local bad = 0
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT %d %d %d %d\\n', summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


def decisions(admin: int) -> tuple[float, float]:
    """The limit's decisions so far: (made by Redis: allowed or limited, the others:
    the failure policy's while Redis did not answer in time)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    redis, other = 0.0, 0.0
    for line in text.splitlines():
        if line.startswith("gatehouse_ratelimit_decisions_total{") and f'limit="{LIMIT}"' in line:
            n = float(line.rsplit(" ", 1)[1])
            if 'decision="allowed"' in line or 'decision="limited"' in line:
                redis += n
            else:
                other += n
    return redis, other


def wrk(s: "harness.Settings", port: int, conns: int, mode: str, script: str) -> tuple[int, float, int, int]:
    cmd = ["taskset", "-c", str(s.load_cpu), "wrk", "-t1", f"-c{conns}", f"-d{s.duration}s",
           "--timeout=5s", "-s", script, f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=s.duration + 60,
                         env=dict(os.environ, KEY_MODE=mode))
    m = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}{out.stderr}")
    n, us, errors, non2xx = (int(g) for g in m.groups())
    return n, us / 1e6, errors, non2xx


def lua_source(name: str) -> str:
    """A script constant of the Redis limiter, as the gateway sends it."""
    src = open(os.path.join(ROOT, "filters", "src", "rate_limit", "redis_store.rs")).read()
    m = re.search(rf'const {name}: &str = r"(.*?)";', src, re.S)
    if not m:
        raise RuntimeError(f"{name} not found in redis_store.rs")
    return m.group(1)


def redis_benchmark(addr: str, sha: str, pipeline: int) -> float:
    """EVALSHA calls per second (one request per call, random keys of 100,000)."""
    host, port = addr.rsplit(":", 1)
    cmd = ["redis-benchmark", "-h", host, "-p", port, "-n", "200000", "-c", "50", "-r", "100000",
           "-P", str(pipeline), "-q", "EVALSHA", sha, "1", "bench:{__rand_int__}", "100000000",
           "60000", "1", "42"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    if not m:
        raise RuntimeError(f"redis-benchmark printed no rate:\n{out}")
    return float(m.group(1))


def main(argv: list[str]) -> int:
    args = harness.tool_args(argv, __doc__, [64, 1000], "5")
    if args is None:
        return 2
    binary, conns, s = args
    algorithm = os.environ.get("ALGORITHM", "sliding_window")
    h = harness.Harness(s)
    rows = []
    try:
        h.ensure_redis()
        h.start_upstream()
        port, admin = harness.free_port(), harness.free_port()
        conf = os.path.join(h.tmp, "gatehouse.yaml")
        with open(conf, "w") as f:
            f.write(CONFIG.format(port=port, admin=admin, threads=os.environ.get("THREADS", "1"),
                                  redis=h.redis_addr, upstream=h.upstream_port, limit=LIMIT,
                                  algorithm=algorithm,
                                  timeout=os.environ.get("REDIS_TIMEOUT", "1s")))
        gw = harness.PROCS.start("gatehouse", [binary, "run", "-c", conf], h.tmp, s.proxy_cpu,
                                 harness.signal.SIGINT)
        harness.wait_port(port, gw, timeout=60)
        script = os.path.join(h.tmp, "keys.lua")
        with open(script, "w") as f:
            f.write(WRK_LUA)
        for c in conns:
            for mode in ("hot", "spread"):
                r0, (d0, f0) = harness.redis_counters(h.redis_addr), decisions(admin)
                n, secs, errors, non2xx = wrk(s, port, c, mode, script)
                r1, (d1, f1) = harness.redis_counters(h.redis_addr), decisions(admin)
                calls = r1["scripts"] - r0["scripts"]
                decided, fallback = d1 - d0, f1 - f0
                rows.append((c, mode, n, n / secs, errors, non2xx, decided, fallback, calls,
                             calls / decided if decided else float("nan")))
                harness.log(f"c={c} {mode}: {n} requests, {decided:.0f} decisions by Redis, "
                            f"{fallback:.0f} by the failure policy, {calls} script calls")
                time.sleep(1)
        harness.PROCS.stop(gw)
        sha = harness.redis_cmd(h.redis_addr, "SCRIPT", "LOAD", lua_source("SLIDING_WINDOW_LUA"))
        sha = sha.decode().split("\r\n")[1]
        bench = [(p, redis_benchmark(h.redis_addr, sha, p)) for p in (1, 16)]
    finally:
        harness.PROCS.stop_all()
    print(f"\n{algorithm}, gateway {binary} (runtime.threads {os.environ.get('THREADS', '1')}), "
          f"{s.duration} s per run, load average {harness.loadavg()}")
    print("| conns | keys | requests | req/s | errors | non-200 | decided by Redis | by the failure policy | script calls | calls per Redis decision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, mode, n, rps, errors, non2xx, decided, fallback, calls, per in rows:
        print(f"| {c} | {mode} | {n} | {rps:.0f} | {errors} | {non2xx} | {decided:.0f} | {fallback:.0f} | {calls} | {per:.3f} |")
    print("\nredis-benchmark, EVALSHA of the sliding-window script, 50 clients, random keys:")
    for p, rate in bench:
        print(f"  pipeline {p}: {rate:.0f} script calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
