#!/usr/bin/env python3
"""Where a proxied request's cost goes, per request, at each connection count (issue 20).

For each target (load harness keys: (b) nginx, (c) bare pingora, (d) gatehouse plain, ...)
and each connection count, runs the harness's wrk load (warm-up, then DURATION seconds) and,
attached to the target's process for the measured span only:

  perf stat   syscalls by kind (read/write/recvfrom/sendto/writev/epoll_wait/epoll_ctl/
              futex/accept4/close), context switches, CPU migrations, scheduler wake-ups
              (sched:sched_wakeup, every task or thread woken, in or by the target),
              timer starts (timer:hrtimer_start: the kernel timers the process arms,
              epoll/futex timeouts included); printed per request
  perf record (with PROFILE=1) cpu-clock samples with call graphs (--call-graph dwarf,
              which needs no frame pointers), and a flat report of the top symbols by
              self time, written beside the JSON

Prints a table and writes JSON (OUT, default benches/load/results/profile-<time>.json).
usage: profile.py [TARGETS [CONNS]]   e.g. profile.py b,c,d 64,1000
env:   GATEHOUSE_BIN, BARE_BIN (as the harness), DURATION (10), WARMUP (2), PROFILE (0/1),
       TOP (25 symbols in the flat report), and the harness's pinning variables.
"""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benches", "load"))
import harness  # noqa: E402  (the load harness: targets, processes, wrk, pinning)

SYSCALLS = ["read", "write", "recvfrom", "sendto", "writev", "epoll_wait", "epoll_ctl",
            "futex", "accept4", "close"]
EVENTS = (["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in SYSCALLS]
          + ["context-switches", "cpu-migrations", "sched:sched_wakeup", "timer:hrtimer_start",
             "cpu-clock"])


def perf_stat(pid: int, out: str) -> subprocess.Popen:
    return subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(EVENTS),
                             "-p", str(pid)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_stat(path: str) -> dict[str, float]:
    counts = {}
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            counts[parts[2]] = float(parts[0])
        except ValueError:
            counts[parts[2]] = float("nan")  # <not counted> / <not supported>
    return counts


def stop(p: subprocess.Popen) -> None:
    p.send_signal(harness.signal.SIGINT)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def flat_report(data: str, top: int) -> str:
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                          "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.5"],
                         capture_output=True, text=True, timeout=600).stdout
    rows = [ln for ln in out.splitlines() if re.match(r"^\s+\d+\.\d+%", ln)]
    return "\n".join(rows[:top])


def main(argv: list[str]) -> int:
    targets = (argv[1] if len(argv) > 1 else "b,c,d").split(",")
    conns = [int(c) for c in (argv[2] if len(argv) > 2 else "64,1000").split(",")]
    os.environ.setdefault("DURATION", "10")
    s = harness.Settings.from_env([])
    profile = os.environ.get("PROFILE", "0") == "1"
    top = int(os.environ.get("TOP", "25"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(ROOT, "benches", "load", "results")
    os.makedirs(outdir, exist_ok=True)
    out_json = os.environ.get("OUT", os.path.join(outdir, f"profile-{stamp}.json"))
    h = harness.Harness(s)
    rows = []
    try:
        h.start_upstream()
        for key in targets:
            t = h.start_target(key)
            h.sanity(t)
            for c in conns:
                label = f"{key}-c{c}"
                if s.warmup > 0:
                    harness.run_wrk(s, t.port, c, s.warmup, t.token, h.tmp, label + "-warmup",
                                    t.tls, t.xff)
                stat_out = os.path.join(h.tmp, f"stat-{label}.csv")
                stat = perf_stat(t.pid, stat_out)
                rec = None
                data = os.path.join(outdir, f"profile-{stamp}-{label}.data")
                if profile:
                    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499",
                                            "--call-graph", "dwarf,16384", "-o", data,
                                            "-p", str(t.pid)], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # perf attaches
                wrk, _ = harness.run_wrk(s, t.port, c, s.duration, t.token, h.tmp, label, t.tls,
                                         t.xff)
                stop(stat)
                if rec:
                    stop(rec)
                counts = read_stat(stat_out)
                n = wrk["requests"]
                per = {k: (v / n if n else None) for k, v in counts.items()}
                row = {"target": key, "name": t.name, "conns": c, "requests": n,
                       "rps": n / (wrk["duration_us"] / 1e6), "p99_ms": wrk["p99_us"] / 1000,
                       "errors": sum(v for k, v in wrk.items() if k.startswith("err_")),
                       "per_request": per, "counts": counts,
                       "note": "perf record attached: req/s and latency are lower than unprofiled"
                       if profile else ""}
                if rec:
                    row["perf_data"] = data
                    row["top_symbols"] = flat_report(data, top)
                rows.append(row)
                harness.log(f"{key} c={c}: {n} requests, "
                            f"{per.get('raw_syscalls:sys_enter', 0):.2f} syscalls/req")
            if t.proc is not None:
                harness.PROCS.stop(t.proc)
    finally:
        harness.PROCS.stop_all()
    with open(out_json, "w") as f:
        json.dump({"targets": targets, "conns": conns, "duration": s.duration,
                   "loadavg": harness.loadavg(), "rows": rows}, f, indent=1)
    cols = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in SYSCALLS] + \
        ["context-switches", "sched:sched_wakeup", "timer:hrtimer_start", "cpu-clock"]
    short = ["sys"] + SYSCALLS + ["cs", "wakeup", "hrtimer", "CPU us"]
    print(f"\nper request (perf stat on the target's process during the measured span; "
          f"load average {harness.loadavg()})")
    print("| target | conns | req/s | " + " | ".join(short) + " |")
    print("|---|---|---|" + "---|" * len(short))
    for r in rows:
        vals = []
        for c in cols:
            v = r["per_request"].get(c)
            if v is None or v != v:
                vals.append("-")
            elif c == "cpu-clock":  # perf stat gives it in ms
                vals.append(f"{v * 1000:.1f}")
            else:
                vals.append(f"{v:.2f}")
        print(f"| ({r['target']}) {r['name']} | {r['conns']} | {r['rps']:.0f} | " + " | ".join(vals) + " |")
    for r in rows:
        if r.get("top_symbols"):
            print(f"\n({r['target']}) {r['name']} c={r['conns']}: top symbols by self time\n{r['top_symbols']}")
    print(f"\nJSON: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
