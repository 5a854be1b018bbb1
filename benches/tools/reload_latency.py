#!/usr/bin/env python3
"""Rename-to-live latency of a watched config file (issue 18).

Starts the gateway on a config with N routes, then R times writes the next version beside
the file and renames it over (what editors and config tools do), and measures the time from
the rename until the admin listener's /readyz reports the new config hash (polled every
2 ms). Prints min / median / max in ms per route count.

usage: reload_latency.py GATEHOUSE_BIN [N ...]   (default N: 100 10000; R=10 per N)
"""
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(port, admin, n, version):
    lines = [
        f'listeners: [ {{ name: public, address: "127.0.0.1:{port}" }} ]',
        f'admin: {{ address: "127.0.0.1:{admin}" }}',
        "runtime: { threads: 1 }",
        "shutdown: { grace_period: 1s }",
        "upstreams:",
        '  app: { discovery: { static: [ { address: "127.0.0.1:9" } ] } }',
        "routes:",
    ]
    for i in range(n):
        lines.append(f"  - {{ name: r{i}, match: {{ path_prefix: /v{version}/r{i} }}, upstream: app }}")
    return "\n".join(lines) + "\n"


def ready_hash(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return json.load(r).get("config_hash", "")
    except Exception:
        return ""


def measure(binary, n, runs=10):
    port, admin = free_port(), free_port()
    d = tempfile.mkdtemp()
    path = os.path.join(d, "gatehouse.yaml")
    with open(path, "w") as f:
        f.write(config(port, admin, n, 0))
    log = open(os.path.join(d, "gateway.log"), "w")
    proc = subprocess.Popen([binary, "run", "-c", path], stdout=log, stderr=log)
    try:
        deadline = time.time() + 120
        while not ready_hash(admin):
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not start; see {d}/gateway.log")
            time.sleep(0.05)
        out = []
        for v in range(1, runs + 1):
            text = config(port, admin, n, v)
            want = hashlib.sha256(text.encode()).hexdigest()
            tmp = path + ".tmp~"
            with open(tmp, "w") as f:
                f.write(text)
            t0 = time.monotonic()
            os.rename(tmp, path)
            deadline = t0 + 10
            while ready_hash(admin) != want:
                if time.monotonic() > deadline:
                    raise SystemExit(f"version {v} not applied in 10 s; see {d}/gateway.log")
                time.sleep(0.002)
            out.append((time.monotonic() - t0) * 1000)
            time.sleep(0.3)
        return out
    finally:
        proc.terminate()
        proc.wait()


def main():
    binary = sys.argv[1]
    ns = [int(a) for a in sys.argv[2:]] or [100, 10000]
    for n in ns:
        ms = measure(binary, n)
        print(f"{n} routes: rename-to-live min {min(ms):.0f} ms, median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms (10 renames)")


if __name__ == "__main__":
    main()
