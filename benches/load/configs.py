"""Every config the load harness writes, in one place.

Edit here when gatehouse's config schema (src/config/, filters/src/) changes; the
driver (`harness.py`) only fills in the ports, paths and the JWT secret. Templates
use `string.Template` syntax: `$name` placeholders, `$$` for a literal dollar sign.
"""

from string import Template

import os

# The rate limit's algorithm in (e)/(f). The filter's default, `sliding_window`, is
# an exact log (one timestamp per admitted request inside the window, in memory or in
# a Redis sorted set): with this bench's one client and a huge limit that log grows by
# every request for a whole minute, which shows in RSS. `gcra` is O(1) per key.
RL_ALGORITHM = os.environ.get("RL_ALGORITHM", "sliding_window")

# Shared by the token the driver signs and the gatehouse JWT filter that checks it.
JWT_ISSUER = "bench"
JWT_AUDIENCE = "bench"

# --- gatehouse -------------------------------------------------------------------

# The part every gatehouse target shares: one listener, the admin listener, one
# runtime thread (same as bare pingora and the single nginx worker), no access log,
# and one upstream with one endpoint.
_GATEHOUSE_BASE = """\
listeners:
  - name: public
    address: 127.0.0.1:$port
admin:
  address: 127.0.0.1:$admin_port
runtime:
  threads: 1
access_log:
  enabled: false
upstreams:
  app:
    discovery:
      static:
        - { address: 127.0.0.1:$upstream_port, weight: 1 }
"""

# The full stack of (e) and (f): JWT HS256 + a rate limit that never rejects
# (the bench measures its cost, not its 429s) + a response header. Metrics are
# always on (the admin listener serves /metrics). `on_redis_error: fail_closed`:
# in (f) a Redis failure must show as errors (503), not fall back to counting in
# process (the default `local`), which would measure (e) again under (f)'s name.
_FULL_FILTERS = """\
    filters:
      - jwt:
          keys:
            - { secret: "$jwt_secret", algorithms: [HS256] }
          issuer: $jwt_issuer
          audience: $jwt_audience
      - rate_limit:
          name: per_client
          key: client_ip
          limit: 100000000
          window: 1m
          algorithm: $rl_algorithm
          on_redis_error: fail_closed
      - headers:
          response:
            set: { x-bench: "1" }
"""

_ROUTE = """\
routes:
  - name: plain
    match: { path_prefix: / }
    upstream: app
"""

# `redis.timeout` for (f): the gateway's default (50ms) unless REDIS_TIMEOUT is set
# (e.g. `1s`; `--check` sets 1s). At 1000 connections one proxy thread queues requests
# for longer than 50ms, so the default then measures the limiter's failure policy
# rather than Redis. The driver fills `$redis_timeout_line` from this.
REDIS_TIMEOUT = os.environ.get("REDIS_TIMEOUT", "")

_REDIS = """\
redis:
  url: redis://$redis_addr
${redis_timeout_line}"""


# (g) a proxy-wasm filter that does nothing (the host's cost alone), (h) one that sets a
# request header, (i) the same header set by the built-in (Rust) `headers` filter. The
# module is tests/wasm-guests/bench, built by tests/wasm-guests/build.sh.
_WASM_NOOP = """\
    filters:
      - wasm: { module: "$wasm_module" }
"""

_WASM_HEADER = """\
    filters:
      - wasm: { module: "$wasm_module", config: "x-bench-req" }
"""

_RUST_HEADER = """\
    filters:
      - headers: { request: { set: { x-bench-req: "1" } } }
"""

# (k) (d) over TLS: the driver's certificate (ECDSA P-256, made with `openssl req`), TLS 1.3
# only, as (j)'s nginx. The listener's ALPN offers h2 and http/1.1, so (m) is this same config
# with h2load's clients choosing h2.
_GATEHOUSE_TLS_BASE = _GATEHOUSE_BASE.replace(
    "    address: 127.0.0.1:$port\n",
    '    address: 127.0.0.1:$port\n    tls: { cert: "$cert", key: "$key", min_version: "1.3" }\n',
)

# (o) (d) with HTTP/2 in clear text by prior knowledge besides HTTP/1.1 (`http.h2c`).
_GATEHOUSE_H2C_BASE = _GATEHOUSE_BASE.replace(
    "    address: 127.0.0.1:$port\n",
    "    address: 127.0.0.1:$port\n    http: { h2c: true }\n",
)

# (r) (d) behind a trusted proxy: the listener trusts 127.0.0.1 (the load generator), and
# every request carries a two-address `X-Forwarded-For`, so the gateway walks the chain to
# the rightmost untrusted address and rewrites the header for the upstream on each request.
_GATEHOUSE_TRUSTED_BASE = _GATEHOUSE_BASE.replace(
    "    address: 127.0.0.1:$port\n",
    "    address: 127.0.0.1:$port\n    trusted_proxies: [127.0.0.1]\n",
)

# The chain wrk sends in (r) (`BENCH_XFF`), and what the upstream must then receive: the
# client's chain with the trusted peer appended.
XFF_CHAIN = "203.0.113.7, 198.51.100.2"
XFF_UPSTREAM = "203.0.113.7, 198.51.100.2, 127.0.0.1"

# (p)/(q) the full stack with tracing: every request makes a server span and a try span,
# kept at ratio 1.0 (all exported) or 0.01; OTLP/HTTP batches go to the nginx upstream,
# which answers `/v1/traces` with an empty 200 (an empty protobuf is a valid
# ExportTraceServiceResponse), so the gateway's export cost is real but no collector runs.
def _tracing(ratio: str) -> str:
    return f"""\
tracing:
  otlp_endpoint: http://127.0.0.1:$upstream_port
  sampler: {{ ratio: {ratio} }}
"""


GATEHOUSE = {
    # (d) one plain route, no filters
    "plain": Template(_GATEHOUSE_BASE + _ROUTE),
    # (e) full stack, rate limit counted in process
    "full": Template(_GATEHOUSE_BASE + _ROUTE + _FULL_FILTERS),
    # (f) full stack, rate limit counted in Redis
    "full_redis": Template(_GATEHOUSE_BASE + _REDIS + _ROUTE + _FULL_FILTERS),
    "wasm_noop": Template(_GATEHOUSE_BASE + _ROUTE + _WASM_NOOP),
    "wasm_header": Template(_GATEHOUSE_BASE + _ROUTE + _WASM_HEADER),
    "rust_header": Template(_GATEHOUSE_BASE + _ROUTE + _RUST_HEADER),
    # (k) one plain route, clients on https
    "plain_tls": Template(_GATEHOUSE_TLS_BASE + _ROUTE),
    # (o) one plain route, clients on h2c
    "plain_h2c": Template(_GATEHOUSE_H2C_BASE + _ROUTE),
    # (r) one plain route behind a trusted proxy (X-Forwarded-For on every request)
    "plain_trusted": Template(_GATEHOUSE_TRUSTED_BASE + _ROUTE),
    # (p) (e) with tracing, every trace kept; (q) 1 in 100 kept
    "full_trace_1": Template(_GATEHOUSE_BASE + _tracing("1.0") + _ROUTE + _FULL_FILTERS),
    "full_trace_001": Template(_GATEHOUSE_BASE + _tracing("0.01") + _ROUTE + _FULL_FILTERS),
}

# A response header that proves the full stack's headers filter ran.
FULL_STACK_MARKER_HEADER = "x-bench"

# --- nginx -------------------------------------------------------------------------

# What both nginx configs share: one worker in the foreground, its pid file and
# request-body temp directory named by `role`, no access log, long keep-alive.
def _nginx_head(role: str) -> str:
    return f"""\
worker_processes 1;
master_process off;
daemon off;
pid $prefix/{role}.pid;
error_log stderr warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $prefix/tmp_{role};
"""


# The upstream every target ends at: one worker answering a fixed body from memory.
# keepalive_requests is raised so that neither wrk nor the proxies are made to
# reconnect every 1000 requests (nginx's default), which would measure connection
# setup rather than proxying.
NGINX_UPSTREAM = Template(_nginx_head("upstream") + """\
    server {
        listen 127.0.0.1:$port backlog=4096;
        default_type text/plain;
        location / { return 200 "$body"; }
        location = /v1/traces { return 200 ""; }
        location = /xff { return 200 "$$http_x_forwarded_for"; }
    }
}
""")

# Every nginx proxy target: one worker, an upstream keepalive pool of 1024, HTTP/1.1 to
# the upstream; `listen` and the `ssl_*` lines are what differ. `keepalive_requests`
# (raised in `_nginx_head`) also bounds the requests of one HTTP/2 connection since
# nginx 1.19.7 (it replaced `http2_max_requests`, 1000 by default): at 1000 nginx sends
# GOAWAY and h2load, which does not reconnect, would count the streams in flight as failed.
def _nginx_proxy(role: str, temp: str, listen: str, tls: bool) -> Template:
    ssl = """\
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.3;
""" if tls else ""
    return Template(_nginx_head(role) + f"""\
    proxy_temp_path $prefix/tmp_proxy_{temp};
    upstream app {{
        server 127.0.0.1:$upstream_port;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:$port {listen}backlog=4096;
{ssl}\
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")


# (b) nginx as a reverse proxy: one worker, upstream keepalive pool of 1024.
NGINX_PROXY = _nginx_proxy("proxy", "p", "", tls=False)

# (j) (b) with clients on https: the same certificate as (k), TLS 1.3 only, OpenSSL's
# default TLS 1.3 suites on both (both link the system's libssl); the driver records the
# protocol and cipher a client negotiates with each. Session tickets and the session cache
# stay at their defaults on both (wrk keeps its connections: one handshake each).
NGINX_TLS_PROXY = _nginx_proxy("tlsproxy", "t", "ssl ", tls=True)

# (l) (j) with HTTP/2 offered by ALPN (`listen ... ssl http2`, nginx 1.22's syntax; 1.25.1
# moved it to `http2 on;`). nginx's own HTTP/2 limits stay at their defaults
# (128 concurrent streams per connection; h2load opens 10).
NGINX_H2_PROXY = _nginx_proxy("h2proxy", "h", "ssl http2 ", tls=True)

# (n) HTTP/2 in clear text: before 1.25.1 a `listen ... http2` without `ssl` speaks
# only HTTP/2 with prior knowledge (an HTTP/1.1 request there is not answered), which
# is what h2load sends for an http:// URI.
NGINX_H2C_PROXY = _nginx_proxy("h2cproxy", "c", "http2 ", tls=False)

# The fixed body the upstream answers (19 bytes; no quotes or `$`, it is pasted
# into nginx's config as is).
UPSTREAM_BODY = "hello from upstream"
