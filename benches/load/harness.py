#!/usr/bin/env python3
"""Side-by-side load harness for gatehouse (issue 8). Python 3.11 stdlib only.

In one run on 127.0.0.1 it starts one nginx upstream, then for each target
(a) upstream direct, (b) nginx reverse proxy, (c) bare pingora, (d) gatehouse plain,
(e) gatehouse full stack, (f) full stack with the limit in Redis, ... (the list is
`TARGETS`), starts the target, checks that it answers correctly, and measures it with wrk
(h2load for the HTTP/2 targets) at each connection count.
It prints a table with ratios and writes the same data as JSON.

Every process it starts is stopped by PID (also on error or Ctrl-C); every wrk/h2load run is
bounded by DURATION (+ a hard kill deadline). See README.md beside this file.
Settings come from the environment (see `Settings`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import configs  # noqa: E402  (the one place with every config template)
from free_ports import free_ports  # noqa: E402  (ports outside the kernel's ephemeral range)
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "a": "upstream (nginx, direct)",
    "b": "nginx proxy",
    "c": "bare pingora",
    "d": "gatehouse plain",
    "e": "gatehouse full",
    "f": "gatehouse full+redis",
    "g": "gatehouse + no-op wasm filter",
    "h": "gatehouse + header wasm filter",
    "i": "gatehouse + header Rust filter",
    "j": "nginx proxy, https",
    "k": "gatehouse plain, https",
    "l": "nginx proxy, h2 (TLS)",
    "m": "gatehouse plain, h2 (TLS)",
    "n": "nginx proxy, h2c",
    "o": "gatehouse plain, h2c",
    "p": "gatehouse full + tracing 1.0",
    "q": "gatehouse full + tracing 0.01",
    "r": "gatehouse plain, trusted XFF",
    "s": "gatehouse plain, binary B",
    "t": "gatehouse + no-op wasm filter, binary B",
}

# gatehouse targets: the config variant of each (configs.GATEHOUSE) and its process name.
VARIANTS = {"d": "plain", "e": "full", "f": "full_redis", "g": "wasm_noop", "h": "wasm_header",
            "i": "rust_header", "k": "plain_tls", "m": "plain_tls", "o": "plain_h2c",
            "p": "full_trace_1", "q": "full_trace_001", "r": "plain_trusted",
            "s": "plain", "t": "wasm_noop"}

# Targets whose clients send an `X-Forwarded-For` chain (configs.XFF_CHAIN) from a trusted peer.
XFF_TARGETS = ("r",)

# Targets that run the full stack (a JWT on every request; the headers filter's mark).
FULL_STACK = ("e", "f", "p", "q")

# nginx targets: the role of each (its process and file names) and its config template.
NGINX_TARGETS = {"b": ("proxy", configs.NGINX_PROXY), "j": ("tlsproxy", configs.NGINX_TLS_PROXY),
                 "l": ("h2proxy", configs.NGINX_H2_PROXY), "n": ("h2cproxy", configs.NGINX_H2C_PROXY)}

# Targets whose clients speak https (the harness's own certificate).
TLS_TARGETS = ("j", "k", "l", "m")

# Targets measured with h2load instead of wrk, and the protocol its clients must end up
# speaking (ALPN `h2` over TLS, or `h2c` by prior knowledge); anything else fails the target.
H2_TARGETS = {"l": "h2", "m": "h2", "n": "h2c", "o": "h2c"}

# h2load's streams in flight per connection (`-m`): HTTP/2's point is several requests
# per connection; 10 stays under both servers' concurrent-stream limits (nginx 128,
# gatehouse 100).
H2_STREAMS = 10


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_bool(name: str, default: bool = False) -> bool:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v not in ("0", "false", "no")


def default_target_dir() -> str:
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.environ["CARGO_TARGET_DIR"]
    shared = "/var/cache/gatehouse-target"
    return shared if os.path.isdir(shared) else os.path.join(ROOT, "target")


@dataclass
class Settings:
    """Everything the environment can change; printed into the JSON."""

    check: bool
    duration: int
    warmup: int
    conns: list[int]
    targets: list[str]
    proxy_cpu: int
    load_cpu: int
    upstream_cpu: int
    settle: float
    out: str
    gatehouse_bin: str
    gatehouse_bin_b: str
    bare_bin: str
    redis_addr: str
    build: bool
    wrk_timeout: str
    keep_tmp: bool
    rounds: int

    @staticmethod
    def from_env(argv: list[str]) -> "Settings":
        check = env_bool("CHECK") or "--check" in argv
        ncpu = os.cpu_count() or 1
        proxy_cpu = int(os.environ.get("PROXY_CPU", "0"))
        load_cpu = int(os.environ.get("LOAD_CPU", "1" if ncpu > 1 else "0"))
        tdir = default_target_dir()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Settings(
            check=check,
            duration=int(os.environ.get("DURATION", "3" if check else "10")),
            warmup=int(os.environ.get("WARMUP", "1" if check else "2")),
            conns=[int(c) for c in os.environ.get("CONNS", "64,1000").split(",") if c],
            # every target but (s), which needs a second binary
            targets=[t.strip() for t in os.environ.get(
                "TARGETS", ",".join(k for k in TARGETS if k not in ("s", "t") or os.environ.get("GATEHOUSE_BIN_B"))
            ).split(",") if t.strip()],
            proxy_cpu=proxy_cpu,
            load_cpu=load_cpu,
            upstream_cpu=int(os.environ.get("UPSTREAM_CPU", str(load_cpu))),
            settle=float(os.environ.get("SETTLE", "2" if check else "3")),
            out=os.environ.get("OUT", os.path.join(HERE, "results", f"{stamp}.json")),
            gatehouse_bin=os.environ.get("GATEHOUSE_BIN", os.path.join(tdir, "release", "gatehouse")),
            gatehouse_bin_b=os.environ.get("GATEHOUSE_BIN_B", ""),
            bare_bin=os.environ.get("BARE_BIN", os.path.join(tdir, "release", "examples", "bare_proxy")),
            redis_addr=os.environ.get("REDIS_ADDR", "private" if shutil.which("redis-server")
                                      else "127.0.0.1:6379"),
            build=env_bool("BUILD"),
            wrk_timeout=os.environ.get("WRK_TIMEOUT", "5s"),
            keep_tmp=env_bool("KEEP_TMP"),
            rounds=max(1, int(os.environ.get("ROUNDS", "1"))),
        )


# --- processes -------------------------------------------------------------------------


class Procs:
    """Every child process the harness started, stopped by PID on exit."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[str, subprocess.Popen, int]] = {}
        self.lock = threading.Lock()

    def start(self, name: str, cmd: list[str], logdir: str, cpu: int | None,
              stop_sig: int = signal.SIGTERM, env: dict | None = None) -> subprocess.Popen:
        if cpu is not None:
            # taskset execs the command: the PID stays the target's, and every thread
            # the target later spawns inherits the pinning.
            cmd = ["taskset", "-c", str(cpu)] + cmd
        logf = open(os.path.join(logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        logf.close()
        with self.lock:
            self.live[p.pid] = (name, p, stop_sig)
        log(f"started {name} pid={p.pid}: {' '.join(cmd)}")
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        with self.lock:
            entry = self.live.pop(p.pid, None)
        if entry is None:
            return
        name, _, sig = entry
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{name} pid={p.pid} ignored signal {sig}; SIGKILL")
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
        log(f"stopped {name} pid={p.pid} rc={p.returncode}")

    def stop_all(self) -> None:
        with self.lock:
            procs = [p for (_, p, _) in self.live.values()]
        for p in reversed(procs):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"stopping pid={p.pid}: {e}")


PROCS = Procs()


GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A loopback port that binds now, not handed out before in this run, from 12000-21999:
    below the kernel's range for the local ports of outgoing connections, which the load's
    own thousands of client connections draw from (scripts/free_ports.py says why)."""
    (port,) = free_ports(1, GIVEN_PORTS)
    GIVEN_PORTS.add(port)
    return port


def wait_port(port: int, p: subprocess.Popen | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p is not None and p.poll() is not None:
            raise RuntimeError(f"process exited with rc={p.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def log_tail(logdir: str, name: str, n: int = 20) -> str:
    try:
        with open(os.path.join(logdir, f"{name}.log"), "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


# --- /proc probes ----------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of all threads of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def busy_ticks() -> int:
    """Non-idle ticks of all CPUs since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def probe(pid: int) -> dict:
    st = status_kib(pid)
    return {"rss_kib": st.get("VmRSS"), "hwm_kib": st.get("VmHWM"), "threads": st.get("Threads"),
            "fds": fd_count(pid)}


class Sampler(threading.Thread):
    """Polls VmRSS and the fd count of one PID while a measurement runs, keeps the peak."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.stop_ev = threading.Event()
        self.max_rss = 0
        self.max_fds = 0

    def run(self) -> None:
        while not self.stop_ev.is_set():
            try:
                self.max_rss = max(self.max_rss, status_kib(self.pid).get("VmRSS", 0))
                self.max_fds = max(self.max_fds, fd_count(self.pid))
            except OSError:
                return
            self.stop_ev.wait(self.period)

    def finish(self) -> None:
        self.stop_ev.set()
        self.join(timeout=2)


def pin_all_threads(pid: int, cpu: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


# --- HTTP, JWT, Redis ------------------------------------------------------------------


def http_get(port: int, path: str = "/", headers: dict | None = None,
             tls: bool = False) -> tuple[int, dict, bytes]:
    scheme = "https" if tls else "http"
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers=headers or {})
    ctx = None
    if tls:  # the harness's own self-signed certificate
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_token(secret: str, ttl_s: int = 86400) -> str:
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": configs.JWT_ISSUER, "aud": configs.JWT_AUDIENCE, "sub": "bench-client",
              "iat": now, "nbf": now - 60, "exp": now + ttl_s}
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def redis_cmd(addr: str, *args: str) -> bytes:
    host, port = addr.rsplit(":", 1)
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(payload.encode())
        s.settimeout(2)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.startswith((b"+", b"-", b":")) and buf.endswith(b"\r\n"):
                break
            if buf.startswith(b"$"):
                head, _, body = buf.partition(b"\r\n")
                if len(body) >= int(head[1:]) + 2:
                    break
        return buf


def redis_counters(addr: str) -> dict[str, int] | None:
    """Commands Redis executed: `total` (includes the calls inside Lua scripts) and
    `scripts` (EVAL/EVALSHA/FCALL calls: one per round trip of a scripted limiter)."""
    try:
        stats = redis_cmd(addr, "INFO", "stats").decode(errors="replace")
        cmds = redis_cmd(addr, "INFO", "commandstats").decode(errors="replace")
    except OSError:
        return None
    out = {"total": 0, "scripts": 0}
    for line in stats.splitlines():
        if line.startswith("total_commands_processed:"):
            out["total"] = int(line.split(":", 1)[1])
    for line in cmds.splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro",
                    "cmdstat_fcall", "cmdstat_fcall_ro"):
            out["scripts"] += int(rest.split(",")[0].split("=")[1])
    return out


# --- wrk -------------------------------------------------------------------------------


def run_load_tool(name: str, cmd: list[str], s: Settings, deadline_s: float, out_path: str,
                  env: dict | None = None, on_line=None) -> tuple[str, float]:
    """Runs a load generator pinned to the load CPU, killed after `deadline_s`.
    `on_line(line, pid)`, when given, sees each line of its output as it is printed.
    Returns (its stdout and stderr with its exit code appended, its own CPU seconds)."""
    cmd = ["taskset", "-c", str(s.load_cpu)] + cmd
    with open(out_path, "wb") as out:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE if on_line else out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with PROCS.lock:
            PROCS.live[p.pid] = (name, p, signal.SIGKILL)
        killer = threading.Timer(deadline_s, lambda: os.kill(p.pid, signal.SIGKILL))
        killer.start()
        try:
            if on_line:
                assert p.stdout is not None
                for raw in p.stdout:  # EOF when it exits (or is killed)
                    out.write(raw)
                    on_line(raw.decode(errors="replace").rstrip("\n"), p.pid)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            killer.cancel()
            with PROCS.lock:
                PROCS.live.pop(p.pid, None)
    text = open(out_path, encoding="utf-8", errors="replace").read()
    return text + f"\n[{name} rc={p.returncode}]", ru.ru_utime + ru.ru_stime


def tool_args(argv: list[str], doc: str | None, default_conns: list[int],
              duration: str) -> tuple[str, list[int], "Settings"] | None:
    """The start the scripts in benches/tools share: `SCRIPT GATEHOUSE_BIN [CONNS ...]`, with
    DURATION defaulting to `duration` seconds. None (after printing `doc`) without a binary."""
    if len(argv) < 2:
        print(doc)
        return None
    os.environ.setdefault("DURATION", duration)
    return argv[1], [int(c) for c in argv[2:]] or default_conns, Settings.from_env([])


def run_wrk(s: Settings, port: int, conns: int, duration: int, token: str | None,
            logdir: str, label: str, tls: bool = False, xff: str | None = None,
            path: str = "/") -> tuple[dict, float]:
    """One wrk run of `GET path`, pinned to the load CPU. Returns (wrk's counters, wrk's own
    CPU seconds)."""
    scheme = "https" if tls else "http"
    env = dict(os.environ)
    env.pop("BENCH_TOKEN", None)
    env.pop("BENCH_XFF", None)
    if token:
        env["BENCH_TOKEN"] = token
    if xff:
        env["BENCH_XFF"] = xff
    text, cpu_s = run_load_tool(
        "wrk", ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"--timeout={s.wrk_timeout}",
                "-s", os.path.join(HERE, "report.lua"), f"{scheme}://127.0.0.1:{port}{path}"],
        s, duration + 30, os.path.join(logdir, f"wrk-{label}.out"), env)
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):]), cpu_s
    raise RuntimeError(f"wrk printed no result:\n{text[-2000:]}")


def percentile(sorted_vals: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of an ascending list; 0 for an empty one."""
    if not sorted_vals:
        return 0
    rank = max(1, -(-len(sorted_vals) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_vals[int(rank) - 1]


def parse_h2load(text: str, log_path: str | None, duration: int) -> dict:
    """h2load's summary and its per-request log, as the counters `report.lua` gives for wrk.

    h2load 1.52 prints no percentiles, only min/max/mean/sd: the percentiles come from
    `--log-file` (one line per finished request: start in us since the epoch, status or
    -1 for a failed stream, us from the request's start to the end of its response, the
    same span wrk measures)."""
    out: dict = {"err_connect": text.count("client could not connect to host")}
    for line in text.splitlines():
        w = line.replace(",", "").split()
        if line.startswith("requests: "):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            vals = dict(zip(w[2::2], map(int, w[1::2])))
            out["requests"] = vals["done"]
            out["succeeded"] = vals["succeeded"]
            # h2load's `failed`: streams reset, cut off or timed out (`errored`, `timeout`)
            # and responses with status >= 400 (also counted under "status codes")
            out["err_failed"] = vals["failed"]
            out["errored"], out["timed_out"] = vals["errored"], vals["timeout"]
        elif line.startswith("status codes: "):
            vals = dict(zip(w[3::2], map(int, w[2::2])))
            out["status_4xx"], out["status_5xx"] = vals["4xx"], vals["5xx"]
        elif line.startswith("Application protocol: "):
            out["protocol"] = w[2]
        elif line.startswith("TLS Protocol: "):
            out["tls"] = w[2]
        elif line.startswith("Cipher: "):
            out["cipher"] = w[1]
    if "requests" not in out:
        raise RuntimeError(f"h2load printed no result:\n{text[-2000:]}")
    # In a timed run h2load counts the requests that ended within its measured span and
    # divides by `-D` ("finished in" is the whole run, warm-up included): so does the harness.
    out["duration_us"] = duration * 1e6
    lat: list[int] = []
    if log_path and os.path.exists(log_path):  # absent when no request ended
        with open(log_path) as f:
            for row in f:
                cols = row.split("\t")
                if len(cols) >= 3:
                    lat.append(int(cols[2]))
        lat.sort()
    out["logged"] = len(lat)
    for q, k in ((50, "p50_us"), (90, "p90_us"), (99, "p99_us"), (99.9, "p999_us"), (100, "lat_max_us")):
        out[k] = percentile(lat, q)
    return out


def run_h2load(s: Settings, port: int, conns: int, duration: int, warmup: int, logdir: str,
               label: str, proto: str, on_phase=None) -> tuple[dict, float]:
    """One h2load run (one thread, `conns` connections, H2_STREAMS streams each) pinned to
    the load CPU: `warmup` s of h2load's own warm-up (from its first connect; not counted),
    then `duration` s measured. `proto` is what the clients must speak: `h2` (https, ALPN
    offering only h2) or `h2c` (http, prior knowledge). `on_phase("start" | "end", pid)`
    is called when h2load says that the measured span starts and ends, so that the caller
    can probe CPU at those instants (h2load's own counters cover only that span). Returns
    (counters as `parse_h2load`, h2load's CPU seconds over the whole run).

    The warm-up is in the same run because h2load 1.52 has a bug that hangs it: a client
    whose connection (TLS handshake) completes after the measured span ended is never
    stopped and keeps sending requests forever. A warm-up lets every connection complete
    before the span starts; should one still be late, the run is killed 10 s after the span
    and the target fails with that explanation."""
    scheme = "https" if proto == "h2" else "http"
    log_path = os.path.join(logdir, f"h2load-{label}.tsv")
    if os.path.exists(log_path):
        os.remove(log_path)  # h2load appends to it
    cmd = ["h2load", "-t1", f"-c{conns}", f"-m{H2_STREAMS}", f"-D{duration}", "--npn-list=h2",
           f"--log-file={log_path}"]
    if warmup > 0:
        cmd.append(f"--warm-up-time={warmup}")
    stuck = threading.Event()
    timers: list[threading.Timer] = []

    def on_line(line: str, pid: int) -> None:
        if line.startswith("Main benchmark duration is started"):
            if on_phase:
                on_phase("start", pid)
        elif line.startswith("Main benchmark duration is over"):
            if on_phase:
                on_phase("end", pid)
        elif line.startswith("Stopped all clients"):
            def kill_if_stuck() -> None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    stuck.set()
                except ProcessLookupError:
                    pass
            timers.append(threading.Timer(10, kill_if_stuck))
            timers[-1].start()

    try:
        text, cpu_s = run_load_tool("h2load", cmd + [f"{scheme}://127.0.0.1:{port}/"], s,
                                    warmup + duration + 30, os.path.join(logdir, f"h2load-{label}.out"),
                                    on_line=on_line)
    finally:
        for timer in timers:
            timer.cancel()
    if stuck.is_set():
        raise RuntimeError(f"h2load did not exit 10 s after its measured span: a connection that "
                           f"completed only after the span keeps sending (h2load 1.52's bug; "
                           f"{conns} connections did not all connect within WARMUP={warmup}s: "
                           f"raise WARMUP)")
    res = parse_h2load(text, log_path, duration)
    if os.path.exists(log_path):
        os.remove(log_path)  # up to DURATION x req/s lines: the figures are in the JSON
    if res.get("protocol") != proto:
        raise RuntimeError(f"h2load spoke {res.get('protocol')!r}, not {proto}:\n{text[-2000:]}")
    return res, cpu_s


# --- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    """One thing under load: its process (None for the upstream itself), port, checks."""

    key: str
    name: str
    port: int
    pid: int
    proc: subprocess.Popen | None
    token: str | None = None
    admin_port: int | None = None
    notes: list[str] = field(default_factory=list)
    tls: bool = False
    xff: str | None = None


class Harness:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.loadavg_start = ""
        self.tmp = tempfile.mkdtemp(prefix="gatehouse-load-")
        self.secret = b64url(os.urandom(32))
        self.token = hs256_token(self.secret)
        self.upstream_port = 0
        self.upstream: subprocess.Popen | None = None
        self.redis_proc: subprocess.Popen | None = None
        self.redis_addr = ""
        self.results: dict = {}
        self.failures: dict[str, str] = {}

    def ensure_redis(self) -> None:
        """REDIS_ADDR=private (default when redis-server exists): our own redis-server,
        pinned beside the upstream, so that nothing else's traffic shares it or its
        counters. Otherwise the Redis at REDIS_ADDR."""
        s = self.s
        if s.redis_addr == "private" and self.redis_proc is None:
            if not shutil.which("redis-server"):
                raise RuntimeError("REDIS_ADDR=private but redis-server is not installed")
            port = free_port()
            self.redis_proc = PROCS.start(
                "redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", self.tmp], self.tmp, s.upstream_cpu, signal.SIGTERM)
            wait_port(port, self.redis_proc)
            self.redis_addr = f"127.0.0.1:{port}"
        elif s.redis_addr != "private":
            self.redis_addr = s.redis_addr
        try:
            pong = redis_cmd(self.redis_addr, "PING")
        except OSError as e:
            raise RuntimeError(f"Redis at {self.redis_addr} unreachable: {e}")
        if not pong.startswith(b"+PONG"):
            raise RuntimeError(f"Redis at {self.redis_addr} answered {pong!r}")

    # -- the proxy-wasm module of (g) and (h), built once per run
    def wasm_module(self) -> str:
        if getattr(self, "_wasm_module", None) is None:
            env = dict(os.environ, CARGO_TARGET_DIR=default_target_dir())
            out = subprocess.run(["bash", os.path.join(ROOT, "tests", "wasm-guests", "build.sh"), "-p", "guest-bench"],
                                 capture_output=True, text=True, timeout=1200, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"building the wasm bench guest failed:\n{out.stderr}")
            self._wasm_module = os.path.join(out.stdout.strip().splitlines()[-1], "guest_bench.wasm")
        return self._wasm_module

    # -- the certificate of (j) and (k), made once per run
    def tls_cert(self) -> tuple[str, str]:
        cert, key = os.path.join(self.tmp, "bench.pem"), os.path.join(self.tmp, "bench.key")
        if not os.path.exists(cert):
            out = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                                  "-days", "2", "-subj", "/CN=localhost",
                                  "-addext", "subjectAltName=DNS:localhost"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise RuntimeError(f"openssl req failed:\n{out.stderr}")
        return cert, key

    # -- the shared upstream
    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        conf = os.path.join(self.tmp, "upstream.conf")
        with open(conf, "w") as f:
            f.write(configs.NGINX_UPSTREAM.substitute(
                prefix=self.tmp, port=self.upstream_port, body=configs.UPSTREAM_BODY))
        self.upstream = PROCS.start("upstream", ["nginx", "-p", self.tmp, "-e", "stderr", "-c", conf],
                                    self.tmp, self.s.upstream_cpu, signal.SIGTERM)
        wait_port(self.upstream_port, self.upstream)
        status, _, body = http_get(self.upstream_port)
        if status != 200 or body.decode() != configs.UPSTREAM_BODY:
            raise RuntimeError(f"upstream answered {status} {body!r}")

    # -- starting each target
    def start_target(self, key: str) -> Target:
        s = self.s
        if key == "a":
            assert self.upstream is not None
            # The upstream is the target here: it gets the proxy's CPU for this one.
            pin_all_threads(self.upstream.pid, s.proxy_cpu)
            return Target(key, TARGETS[key], self.upstream_port, self.upstream.pid, None)
        port = free_port()
        if key in NGINX_TARGETS:
            role, template = NGINX_TARGETS[key]
            cert, key_file = self.tls_cert() if key in TLS_TARGETS else ("", "")
            conf = os.path.join(self.tmp, f"{role}.conf")
            with open(conf, "w") as f:
                f.write(template.substitute(prefix=self.tmp, port=port, cert=cert, key=key_file,
                                            upstream_port=self.upstream_port))
            p = PROCS.start(f"nginx-{role}", ["nginx", "-p", self.tmp, "-e", "stderr", "-c", conf],
                            self.tmp, s.proxy_cpu, signal.SIGTERM)
            return Target(key, TARGETS[key], port, p.pid, p, tls=key in TLS_TARGETS)
        if key == "c":
            if not os.access(s.bare_bin, os.X_OK):
                raise FileNotFoundError(
                    f"{s.bare_bin} missing: cargo build --release --example bare_proxy (or BUILD=1)")
            p = PROCS.start("bare-proxy", [s.bare_bin, f"127.0.0.1:{port}",
                                           f"127.0.0.1:{self.upstream_port}"],
                            self.tmp, s.proxy_cpu, signal.SIGINT)
            return Target(key, TARGETS[key], port, p.pid, p)
        # the others: gatehouse
        if not os.access(s.gatehouse_bin, os.X_OK):
            raise FileNotFoundError(
                f"{s.gatehouse_bin} missing: cargo build --release (or BUILD=1, or GATEHOUSE_BIN=...)")
        variant = VARIANTS[key]
        if key == "f":
            self.ensure_redis()
        admin_port = free_port()
        conf = os.path.join(self.tmp, f"gatehouse-{variant}.yaml")
        with open(conf, "w") as f:
            f.write(configs.GATEHOUSE[variant].substitute(
                port=port, admin_port=admin_port, upstream_port=self.upstream_port,
                jwt_secret=self.secret, jwt_issuer=configs.JWT_ISSUER,
                jwt_audience=configs.JWT_AUDIENCE, redis_addr=self.redis_addr,
                rl_algorithm=configs.RL_ALGORITHM,
                wasm_module=self.wasm_module() if key in ("g", "h", "t") else "",
                cert=self.tls_cert()[0] if key in TLS_TARGETS else "",
                key=self.tls_cert()[1] if key in TLS_TARGETS else "",
                redis_timeout_line=f"  timeout: {configs.REDIS_TIMEOUT}\n" if configs.REDIS_TIMEOUT else ""))
        v = subprocess.run([s.gatehouse_bin, "validate", "-c", conf], capture_output=True, text=True,
                           timeout=30)
        if v.returncode != 0:
            raise RuntimeError(f"gatehouse validate refused {conf}:\n{v.stdout}{v.stderr}")
        # (s), (t): (d)'s and (g)'s configs on a second binary (GATEHOUSE_BIN_B), for an A/B of
        # two builds in one run: `TARGETS=d,s GATEHOUSE_BIN_B=... ROUNDS=5`.
        on_b = key in ("s", "t")
        binary = s.gatehouse_bin_b if on_b else s.gatehouse_bin
        if on_b and not (binary and os.access(binary, os.X_OK)):
            raise FileNotFoundError(f"({key}) needs GATEHOUSE_BIN_B, a second gatehouse binary")
        p = PROCS.start(f"gatehouse-{variant}", [binary, "run", "-c", conf], self.tmp,
                        s.proxy_cpu, signal.SIGINT)
        return Target(key, TARGETS[key], port, p.pid, p,
                      token=self.token if key in FULL_STACK else None, admin_port=admin_port,
                      tls=key in TLS_TARGETS,
                      xff=configs.XFF_CHAIN if key in XFF_TARGETS else None)

    def sanity_h2(self, t: Target) -> None:
        """An HTTP/2 target must answer the upstream's body over HTTP/2 (nghttp, which speaks
        nothing else: h2 by ALPN over TLS, h2c by prior knowledge in clear text)."""
        proto = H2_TARGETS[t.key]
        url = f"{'https' if proto == 'h2' else 'http'}://127.0.0.1:{t.port}/"
        har = os.path.join(self.tmp, f"nghttp-{t.key}.har")
        deadline = time.monotonic() + 10
        while True:  # the listener may accept before the proxy is ready to route
            out = subprocess.run(["nghttp", f"--har={har}", url], capture_output=True, timeout=15)
            try:
                with open(har) as f:
                    status = json.load(f)["log"]["entries"][0]["response"]["status"]
            except (OSError, ValueError, KeyError, IndexError):
                status = None
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        body = out.stdout.decode(errors="replace")
        if status != 200 or body != configs.UPSTREAM_BODY:
            raise RuntimeError(f"nghttp GET {url} ({proto}) answered {status} {body[:200]!r} "
                               f"{out.stderr.decode(errors='replace')[-500:]}")
        t.notes.append(f"checked: 200 and the body over {proto} (nghttp)")

    def sanity(self, t: Target) -> None:
        """The target must answer the upstream's body; the full stack must really filter."""
        wait_port(t.port, t.proc)
        if t.key in H2_TARGETS:
            self.sanity_h2(t)
        hdrs = {"Authorization": f"Bearer {t.token}"} if t.token else {}
        deadline = time.monotonic() + 10
        while t.key != "n":  # (n) speaks only HTTP/2 (sanity_h2 checked it)
            # the listener may accept before the proxy is ready to route
            status, h, body = http_get(t.port, "/", hdrs, tls=t.tls)
            if status == 200 or time.monotonic() > deadline:
                if status != 200 or body.decode(errors="replace") != configs.UPSTREAM_BODY:
                    raise RuntimeError(f"GET / answered {status} {body[:200]!r}")
                break
            time.sleep(0.2)
        if t.key in FULL_STACK:
            mark = configs.FULL_STACK_MARKER_HEADER
            if h.get(mark) != "1":
                raise RuntimeError(f"full stack: response lacks `{mark}: 1` (headers filter not applied)")
            status, _, _ = http_get(t.port, "/")
            if status != 401:
                raise RuntimeError(f"full stack: a request without a token answered {status}, not 401")
            t.notes.append("checked: 200 with token, 401 without, x-bench header set")
        if t.xff:
            # The upstream echoes the X-Forwarded-For it received: the trusted chain plus the
            # peer, not the peer alone (which is what an untrusted client's header becomes).
            status, _, body = http_get(t.port, "/xff", {"X-Forwarded-For": t.xff})
            if status != 200 or body.decode(errors="replace") != configs.XFF_UPSTREAM:
                raise RuntimeError(f"trusted X-Forwarded-For: the upstream received {body[:200]!r} "
                                   f"(status {status}), not {configs.XFF_UPSTREAM!r}")
            t.notes.append(f"checked: the upstream received X-Forwarded-For {configs.XFF_UPSTREAM}")
        if t.tls:
            raw = socket.create_connection(("127.0.0.1", t.port), timeout=5)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                alpn = tls.selected_alpn_protocol()
                t.notes.append(f"TLS: {tls.version()} {tls.cipher()[0]} ALPN {alpn}")
            if t.key in H2_TARGETS and alpn != "h2":
                raise RuntimeError(f"ALPN offering h2 and http/1.1 selected {alpn!r}, not h2")
        if t.admin_port:
            status, _, body = http_get(t.admin_port, "/metrics")
            if status != 200 or b"gatehouse_" not in body:
                raise RuntimeError(f"admin /metrics answered {status}, no gatehouse_ series")
            t.notes.append("/metrics: %d lines" % body.count(b"\n"))

    # -- one target, every connection count
    def measure(self, t: Target) -> dict:
        s = self.s
        res: dict = {"name": t.name, "pid": t.pid, "runs": {}, "notes": t.notes}
        res["idle"] = probe(t.pid)
        redis_before = redis_counters(self.redis_addr) if t.key == "f" else None
        for c in s.conns:
            label = f"{t.key}-c{c}"
            h2 = H2_TARGETS.get(t.key)
            if s.warmup > 0 and not h2:  # h2load warms up inside its run (see run_h2load)
                run_wrk(s, t.port, c, s.warmup, t.token, self.tmp, label + "-warmup", t.tls,
                        t.xff)
            sampler = Sampler(t.pid)
            up_pid = self.upstream.pid if (self.upstream and t.key != "a") else None
            rp = self.redis_proc.pid if (t.key == "f" and self.redis_proc) else None

            def snap(load_pid: int | None = None) -> dict:
                """CPU ticks of the target, the upstream, the private Redis, the load
                generator and all CPUs, and Redis's command counters, at one instant."""
                return {"target": cpu_ticks(t.pid), "up": cpu_ticks(up_pid) if up_pid else 0,
                        "redis": cpu_ticks(rp) if rp else 0, "busy": busy_ticks(),
                        "load": cpu_ticks(load_pid) if load_pid else 0,
                        "rc": redis_counters(self.redis_addr) if t.key == "f" else None}

            sampler.start()
            if h2:
                # probed when h2load's measured span starts and ends (after its warm-up)
                marks: dict[str, dict] = {}
                wrk, _ = run_h2load(s, t.port, c, s.duration, s.warmup, self.tmp, label, h2,
                                    on_phase=lambda phase, pid: marks.__setitem__(phase, snap(pid)))
                if "start" not in marks or "end" not in marks:
                    raise RuntimeError(f"h2load never reported its measured span ({sorted(marks)})")
                before, after = marks["start"], marks["end"]
                wrk_cpu_s = (after["load"] - before["load"]) / CLK_TCK
            else:
                before = snap()
                wrk, wrk_cpu_s = run_wrk(s, t.port, c, s.duration, t.token, self.tmp, label, t.tls,
                                         t.xff)
                after = snap()
            sampler.finish()
            busy_s = (after["busy"] - before["busy"]) / CLK_TCK
            cpu_s = (after["target"] - before["target"]) / CLK_TCK
            up_cpu_s = (after["up"] - before["up"]) / CLK_TCK
            rc0, rc1 = before["rc"], after["rc"]
            redis_cpu_s = (after["redis"] - before["redis"]) / CLK_TCK
            n = wrk["requests"]
            secs = wrk["duration_us"] / 1e6
            # wrk: connect, read, write, timeout, status >= 400; h2load: connect, failed
            # (streams reset, cut off or timed out, and status >= 400).
            errors = sum(v for k, v in wrk.items() if k.startswith("err_"))
            # CPU busy on the load core: wrk, plus the upstream when it shares that core.
            # (a private Redis is pinned with the upstream)
            load_core = wrk_cpu_s + ((up_cpu_s + redis_cpu_s) if s.upstream_cpu == s.load_cpu else 0.0)
            run = {
                "conns": c, "duration_s": round(secs, 3), "requests": n,
                "rps": round(n / secs, 1) if secs else 0.0,
                "p50_ms": wrk["p50_us"] / 1000, "p90_ms": wrk["p90_us"] / 1000,
                "p99_ms": wrk["p99_us"] / 1000, "p999_ms": wrk["p999_us"] / 1000,
                "max_ms": wrk["lat_max_us"] / 1000,
                "errors": errors,
                "errors_detail": {k[4:]: wrk[k] for k in wrk if k.startswith("err_")},
                "cpu_s": round(cpu_s, 3),
                "cpu_us_per_req": round(cpu_s * 1e6 / n, 2) if n else None,
                "peak_rss_kib": sampler.max_rss, "peak_fds": sampler.max_fds,
                "upstream_cpu_us_per_req": round(up_cpu_s * 1e6 / n, 2) if n and up_pid and t.key != "a" else None,
                # the load generator's (wrk's or h2load's) CPU per request
                "wrk_cpu_us_per_req": round(wrk_cpu_s * 1e6 / n, 2) if n else None,
                "load_core_busy": round(load_core / secs, 3) if secs else None,
                # CPU that neither the target, the upstream nor wrk used (other processes,
                # softirq): above ~0.1 core the row was measured on a busy machine.
                "other_cpu_cores": round(max(0.0, busy_s - cpu_s - wrk_cpu_s - up_cpu_s - redis_cpu_s) / secs, 3)
                if secs else None,
            }
            if rc0 is not None and rc1 is not None and n:
                # Upper bounds: they include our own INFO calls and any other client of
                # that Redis (none when the harness runs its own).
                run["redis_cmds_per_req"] = round((rc1["total"] - rc0["total"]) / n, 3)
                run["redis_script_calls_per_req"] = round((rc1["scripts"] - rc0["scripts"]) / n, 3)
            if rp and n:
                run["redis_cpu_us_per_req"] = round(redis_cpu_s * 1e6 / n, 2)
            if h2:
                run["load_tool"] = f"h2load -m{H2_STREAMS} ({h2})"
                run["h2load"] = {k: wrk[k] for k in ("succeeded", "errored", "timed_out", "status_4xx",
                                                     "status_5xx", "logged", "protocol", "tls", "cipher")
                                 if k in wrk}
            res["runs"][str(c)] = run
            log(f"{t.key} {t.name} c={c}: {run['rps']:.0f} req/s p50={run['p50_ms']:.2f}ms "
                f"p99={run['p99_ms']:.2f}ms errors={errors} cpu={run['cpu_us_per_req']}us/req "
                f"rss={sampler.max_rss // 1024}MiB load-core={run['load_core_busy']} "
                f"other={run['other_cpu_cores']} cores")
        time.sleep(s.settle)
        res["after"] = probe(t.pid)
        res["hwm_kib"] = res["after"]["hwm_kib"]
        if redis_before is not None:
            counters = redis_counters(self.redis_addr)
            res["redis_used"] = bool(counters and counters["scripts"] > redis_before["scripts"])
            res["redis"] = self.redis_addr + (" (private, started by the harness)" if self.redis_proc else "")
        return res

    def run(self) -> int:
        s = self.s
        self.loadavg_start = loadavg()
        if float(self.loadavg_start.split()[0]) > 0.5:
            log(f"WARNING: load average {self.loadavg_start} before the run: other processes "
                "compete for the CPUs, figures will be low and noisy (see the 'other' column)")
        log(f"tmp dir {self.tmp}; proxies on CPU {s.proxy_cpu}, wrk on CPU {s.load_cpu}, "
            f"upstream on CPU {s.upstream_cpu} (CPU {s.proxy_cpu} while it is the target)")
        self.start_upstream()
        per_round: dict[str, list[dict]] = {}
        for rnd in range(s.rounds):
            if s.rounds > 1:
                log(f"round {rnd + 1} of {s.rounds}")
            for key in s.targets:
                if key not in TARGETS:
                    self.failures[key] = "unknown target"
                    continue
                if key in self.failures:
                    continue
                t = None
                try:
                    t = self.start_target(key)
                    self.sanity(t)
                    per_round.setdefault(key, []).append(self.measure(t))
                except Exception as e:
                    name = (f"nginx-{NGINX_TARGETS[key][0]}" if key in NGINX_TARGETS else None) or \
                        ("bare-proxy" if key == "c" else None) or \
                        (f"gatehouse-{VARIANTS[key]}" if key in VARIANTS else "upstream")
                    tail = log_tail(self.tmp, name)
                    self.failures[key] = f"{e}" + (f"\n--- log tail ---\n{tail}" if tail else "")
                    log(f"target {key} ({TARGETS[key]}) FAILED: {self.failures[key]}")
                finally:
                    if t is not None and t.proc is not None:
                        PROCS.stop(t.proc)
                    if key == "a" and self.upstream is not None:
                        pin_all_threads(self.upstream.pid, s.upstream_cpu)
        # Several rounds (targets interleaved, so that background load hits all alike):
        # each (target, connections) row is the round with the median req/s; every
        # round's req/s is kept beside it. Memory probes come from the first round.
        for key, rounds in per_round.items():
            res = rounds[0]
            if len(rounds) > 1:
                for c in res["runs"]:
                    in_order = [r["runs"][c] for r in rounds if c in r["runs"]]
                    runs = sorted(in_order, key=lambda x: x["rps"])
                    med = dict(runs[(len(runs) - 1) // 2])
                    # Round order (not sorted): ratios are paired round by round.
                    med["rps_rounds"] = [x["rps"] for x in in_order]
                    med["errors"] = sum(x["errors"] for x in runs)
                    med["other_cpu_cores_max"] = max(x.get("other_cpu_cores") or 0 for x in runs)
                    res["runs"][c] = med
            self.results[key] = res
        return 0


# --- report ----------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def paired_ratio(ra: dict | None, rb: dict | None) -> float | None:
    """a/b in req/s. With several rounds: the median of the per-round ratios, each taken
    from two measurements a minute apart, which cancels the machine's drift between
    rounds better than a ratio of two medians."""
    if not ra or not rb:
        return None
    xa, xb = ra.get("rps_rounds"), rb.get("rps_rounds")
    if xa and xb and len(xa) == len(xb) and len(xa) > 1:
        per_round = sorted(a / b for a, b in zip(xa, xb) if a and b)
        if per_round:
            n = len(per_round)
            mid = per_round[n // 2] if n % 2 else (per_round[n // 2 - 1] + per_round[n // 2]) / 2
            return round(mid, 3)
    return ratio(ra.get("rps"), rb.get("rps"))


def add_ratios(results: dict, conns: list[int]) -> None:
    for c in map(str, conns):
        nginx = results.get("b", {}).get("runs", {}).get(c, {}).get("rps")
        bare = results.get("c", {}).get("runs", {}).get(c, {}).get("rps")
        for r in results.values():
            run = r["runs"].get(c)
            if run:
                run["x_nginx"] = ratio(run["rps"], nginx)
                run["x_bare"] = ratio(run["rps"], bare)


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict, conns: list[int]) -> str:
    head = (f"{'target':<30}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}"
            f"{'CPU us/req':>11}{'errors':>8}{'x nginx':>9}{'x bare':>8}{'load-core':>10}{'other':>7}")
    lines = [head, "-" * len(head)]
    for c in map(str, conns):
        for key, r in results.items():
            run = r["runs"].get(c)
            if not run:
                continue
            lines.append(
                f"{'(' + key + ') ' + r['name']:<30}{run['conns']:>6}{run['rps']:>10.0f}"
                f"{run['p50_ms']:>9.2f}{run['p99_ms']:>9.2f}{run['peak_rss_kib'] / 1024:>9.1f}"
                f"{fmt(run['cpu_us_per_req'], '.1f'):>11}{run['errors']:>8}"
                f"{fmt(run.get('x_nginx'), '.2f'):>9}{fmt(run.get('x_bare'), '.2f'):>8}"
                f"{fmt(run['load_core_busy'], '.0%'):>10}{fmt(run.get('other_cpu_cores'), '.0%'):>7}")
    return "\n".join(lines)


def mem_table(results: dict, conns: list[int]) -> tuple[str, dict]:
    big = str(max(conns))
    head = (f"{'target':<30}{'idle MiB':>9}{'idle fds':>9}{'@' + big + ' MiB':>11}{'@' + big + ' fds':>10}"
            f"{'KiB/conn':>9}{'after MiB':>10}{'after fds':>10}{'after/idle':>11}{'threads':>8}")
    lines = [head, "-" * len(head)]
    out = {}
    for key, r in results.items():
        run = r["runs"].get(big)
        if not run:
            continue
        idle, after = r["idle"], r["after"]
        per_conn = (run["peak_rss_kib"] - idle["rss_kib"]) / int(big)
        m = {"idle_rss_kib": idle["rss_kib"], "idle_fds": idle["fds"], "peak_rss_kib": run["peak_rss_kib"],
             "peak_fds": run["peak_fds"], "kib_per_conn": round(per_conn, 1),
             "after_rss_kib": after["rss_kib"], "after_fds": after["fds"],
             "after_over_idle": round(after["rss_kib"] / idle["rss_kib"], 3), "threads": after["threads"]}
        out[key] = m
        lines.append(
            f"{'(' + key + ') ' + r['name']:<30}{idle['rss_kib'] / 1024:>9.1f}{idle['fds']:>9}"
            f"{run['peak_rss_kib'] / 1024:>11.1f}{run['peak_fds']:>10}{per_conn:>9.1f}"
            f"{after['rss_kib'] / 1024:>10.1f}{after['fds']:>10}{m['after_over_idle']:>11.2f}{after['threads']:>8}")
    return "\n".join(lines), out


def issue_targets(results: dict, mem: dict, conns: list[int]) -> list[dict]:
    """The issues' targets (8, then 20's stricter ones), evaluated on this run's numbers
    (informational, never asserted)."""
    small, big = str(min(conns)), str(max(conns))
    many = max(conns) >= 1000  # the latency and memory targets are stated at 1000 connections

    def run(k, c):
        return results.get(k, {}).get("runs", {}).get(c)

    checks = []
    # The per-round ratios behind the last `pr`, attached to the check `add` records next.
    pending: dict = {}

    def add(what, value, limit, ok):
        check = {"target": what, "value": value, "limit": limit,
                 "met": None if value is None else bool(ok)}
        rounds = pending.pop("rounds", None)
        if rounds:
            check["round_ratios"] = rounds
        checks.append(check)

    def pr(a, b, c=None):
        c = c or small
        ra, rb = run(a, c), run(b, c)
        pending.pop("rounds", None)
        xa, xb = (ra or {}).get("rps_rounds"), (rb or {}).get("rps_rounds")
        if xa and xb and len(xa) == len(xb):
            pending["rounds"] = [round(x / y, 3) if x and y else None for x, y in zip(xa, xb)]
        return paired_ratio(ra, rb)

    v = pr("d", "c"); add(f"plain / bare req/s @{small}", v, ">= 1.0", v is not None and v >= 1.0)
    v = pr("d", "b"); add(f"plain / nginx req/s @{small}", v, ">= 0.60", v is not None and v >= 0.60)
    v = pr("e", "d"); add(f"full / plain req/s @{small}", v, ">= 0.90", v is not None and v >= 0.90)
    v = pr("f", "d"); add(f"full+redis / plain req/s @{small}", v, ">= 0.80", v is not None and v >= 0.80)
    # Issue 20's stretch goal: sozu's figures against nginx in this harness.
    v = pr("d", "b"); add(f"stretch: plain / nginx req/s @{small}", v, ">= 0.75", v is not None and v >= 0.75)
    if many:
        v = pr("d", "b", big); add(f"plain / nginx req/s @{big}", v, ">= 0.50", v is not None and v >= 0.50)
        add(f"stretch: plain / nginx req/s @{big}", v, ">= 0.66", v is not None and v >= 0.66)
        r64, r1k = run("d", small), run("d", big)
        v = round(r1k["cpu_us_per_req"] / r64["cpu_us_per_req"], 2) \
            if r64 and r1k and r64.get("cpu_us_per_req") and r1k.get("cpu_us_per_req") else None
        add(f"plain CPU/req @{big} / @{small}", v, "<= 1.5", v is not None and v <= 1.5)
    # Issue 21: a no-op proxy-wasm filter costs at most 10% of a plain route's throughput.
    v = pr("g", "d"); add(f"no-op wasm / plain req/s @{small}", v, ">= 0.90", v is not None and v >= 0.90)
    v = pr("h", "i"); add(f"header wasm / header Rust req/s @{small}", v, "(reported)", True)
    v = pr("i", "d"); add(f"header Rust / plain req/s @{small}", v, "(reported)", True)
    # Issue 15: TLS termination, gatehouse against nginx with the same certificate and cipher.
    v = pr("k", "j"); add(f"https: gatehouse / nginx req/s @{small}", v, "(reported)", True)
    v = pr("k", "d"); add(f"https / clear-text gatehouse req/s @{small}", v, "(reported)", True)
    # Issue 15: HTTP/2 (h2load, 10 streams per connection), over TLS and in clear text.
    v = pr("m", "l"); add(f"h2 (TLS): gatehouse / nginx req/s @{small}", v, "(reported)", True)
    v = pr("o", "n"); add(f"h2c: gatehouse / nginx req/s @{small}", v, "(reported)", True)
    # Issue 19: tracing's cost on the full stack; issue 20: the trusted-proxy code's.
    v = pr("p", "e"); add(f"tracing 1.0 / full req/s @{small}", v, "(reported)", True)
    v = pr("q", "e"); add(f"tracing 0.01 / full req/s @{small}", v, "(reported)", True)
    v = pr("r", "d"); add(f"trusted XFF / plain req/s @{small}", v, "(reported)", True)
    for c in dict.fromkeys((small, big)):
        v = pr("s", "d", c); add(f"binary B / binary A (plain) req/s @{c}", v, "(reported)", True)
        v = pr("t", "s", c); add(f"no-op wasm / plain, binary B req/s @{c}", v, "(reported)", True)
        v = pr("t", "g", c); add(f"binary B / binary A (no-op wasm) req/s @{c}", v, "(reported)", True)
    for k in ("d", "e", "f"):
        r = run(k, big)
        if not r or not many:
            continue
        add(f"({k}) errors @{big}", r["errors"], "== 0", r["errors"] == 0)
        v = round(r["p99_ms"] / r["p50_ms"], 2) if r["p50_ms"] else None
        add(f"({k}) p99 / p50 @{big}", v, "<= 2.0", v is not None and v <= 2.0)
        nb = run("b", big)
        v = round(r["p99_ms"] / nb["p99_ms"], 2) if nb and nb["p99_ms"] else None
        add(f"({k}) p99 / nginx p99 @{big}", v, "<= 2.0", v is not None and v <= 2.0)
    m = mem.get("d")
    if m and many:
        add(f"(d) KiB RSS per connection @{big}", m["kib_per_conn"], "<= 64", m["kib_per_conn"] <= 64)
        add("(d) idle RSS MiB", round(m["idle_rss_kib"] / 1024, 1), "<= 32", m["idle_rss_kib"] <= 32 * 1024)
        add("(d) RSS after load / idle", m["after_over_idle"], "<= 1.2", m["after_over_idle"] <= 1.2)
        add(f"stretch: (d) KiB RSS per connection @{big}", m["kib_per_conn"], "<= 32",
            m["kib_per_conn"] <= 32)
    return checks


def env_info(s: Settings) -> dict:
    def cmd(c):
        try:
            r = subprocess.run(c, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"

    def binfo(path):
        try:
            st = os.stat(path)
            return {"path": path, "mtime": dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")}
        except OSError:
            return {"path": path, "missing": True}

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "time": dt.datetime.now().isoformat(timespec="seconds"),
        "git": cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
        "nginx": cmd(["nginx", "-v"]), "wrk": cmd(["wrk", "-v"]), "h2load": cmd(["h2load", "--version"]),
        "gatehouse_bin": binfo(s.gatehouse_bin), "bare_bin": binfo(s.bare_bin),
    }


def build(s: Settings) -> None:
    for c in (["cargo", "build", "--release", "--example", "bare_proxy"],
              ["cargo", "build", "--release", "--bin", "gatehouse"]):
        log("BUILD=1: " + " ".join(c))
        subprocess.run(c, cwd=ROOT, check=True)


def main(argv: list[str]) -> int:
    s = Settings.from_env(argv)
    if s.check and not configs.REDIS_TIMEOUT:
        # CI asserts errors, never timing: a 50ms Redis timeout on a busy CI box is timing.
        configs.REDIS_TIMEOUT = "1s"
    tools = ["wrk", "nginx", "taskset"] + (["h2load", "nghttp"] if set(s.targets) & set(H2_TARGETS) else [])
    for tool in tools:
        if not shutil.which(tool):
            log(f"{tool} not found on PATH" + (" (Debian: nghttp2-client)" if tool in ("h2load", "nghttp") else ""))
            return 2
    need = max(s.conns) * 4 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if s.build:
        build(s)

    h = Harness(s)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping every process started")
        PROCS.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        h.run()
    finally:
        PROCS.stop_all()
        if not s.keep_tmp:
            shutil.rmtree(h.tmp, ignore_errors=True)
        else:
            log(f"kept {h.tmp}")

    add_ratios(h.results, s.conns)
    tbl = table(h.results, s.conns)
    mtbl, mem = mem_table(h.results, s.conns)
    checks = issue_targets(h.results, mem, s.conns)
    print()
    print(f"wrk -t1 (h2 targets: h2load -t1 -m{H2_STREAMS}), {s.duration}s per run after {s.warmup}s warmup; "
          f"proxy/target on CPU {s.proxy_cpu}, load generator on CPU {s.load_cpu}, upstream on CPU {s.upstream_cpu}; rate limit algorithm "
          f"{configs.RL_ALGORITHM}; Redis {h.redis_addr or '-'} timeout {configs.REDIS_TIMEOUT or 'default'}")
    print(tbl)
    for c, run in h.results.get("f", {}).get("runs", {}).items():
        print(f"  (f) @{c}: Redis round trips (script calls)/request "
              f"{fmt(run.get('redis_script_calls_per_req'), '')}, commands/request incl. inside scripts "
              f"{fmt(run.get('redis_cmds_per_req'), '')}, Redis CPU us/request {fmt(run.get('redis_cpu_us_per_req'), '')}")
    print()
    print("memory / fds (peak while loaded; 'after' = " + f"{s.settle:g}s after the last run)")
    print(mtbl)
    if checks:
        print()
        print("the issues' targets (8, 20), this run" + (" (req/s ratios: median of the per-round ratios)" if s.rounds > 1 else "") + ":")
        for c in checks:
            met = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
            print(f"  {c['target']:<40} {fmt(c['value'], ''):>10}  (want {c['limit']})  {met}")
    for key, why in h.failures.items():
        print(f"\n({key}) {TARGETS.get(key, key)}: NOT MEASURED: {why}")

    max_other = max((r.get("other_cpu_cores") or 0 for x in h.results.values()
                     for r in x["runs"].values()), default=0)
    if max_other > 0.1:
        print(f"\nWARNING: up to {max_other:.0%} of a core went to other processes during a run "
              "(column 'other'): this run's figures are not clean; ratios suffer less than absolutes.")
    info = env_info(s)
    info["loadavg_start"], info["loadavg_end"] = h.loadavg_start, loadavg()
    info["rl_algorithm"] = configs.RL_ALGORITHM
    info["redis_timeout"] = configs.REDIS_TIMEOUT or "gateway default"
    doc = {"settings": s.__dict__, "env": info, "results": h.results, "memory": mem,
           "issue_targets": checks, "failures": h.failures}
    os.makedirs(os.path.dirname(os.path.abspath(s.out)), exist_ok=True)
    with open(s.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nJSON: {s.out}")

    rc = 0
    if h.failures:
        rc = 1
    if s.check:
        for key in s.targets:
            r = h.results.get(key)
            if not r:
                continue
            for c, run in r["runs"].items():
                if run["errors"] or not run["requests"]:
                    log(f"CHECK: ({key}) c={c}: {run['errors']} errors, {run['requests']} requests")
                    rc = 1
        log("CHECK " + ("passed" if rc == 0 else "FAILED"))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
