#!/usr/bin/env python3
"""Instructions and allocations per proxied request, counted exactly (issue 20).

Runs each target (load harness keys: (c) bare pingora, (d) gatehouse plain, (e) full stack,
(f) full stack + Redis, (g) no-op wasm, ...) under `valgrind --tool=callgrind` with
instrumentation off, loads it with the harness's wrk (warm-up, then DURATION seconds), and
collects only while the measured load runs. Callgrind counts instructions, not seconds:
the same binary, config and request give the same counts whatever else the machine does,
which this noisy 2-core VM's req/s never do. Per request it prints:

  Ir          instructions executed in user space by the target (all threads)
  allocs      calls into mimalloc's allocation entry points (mi_malloc, mi_zalloc,
              mi_malloc_aligned, mi_realloc..., and glibc malloc for C code)
  frees       calls to mi_free (and glibc free)

and with TOP=N the N functions with the most inclusive instructions per request, gatehouse's
own (`gatehouse`, `gatehouse_filters`) marked. The raw callgrind files are kept beside the
JSON for `callgrind_annotate`.

usage: callgrind.py [TARGETS [CONNS]]     e.g. callgrind.py c,d,e,f 32
env:   GATEHOUSE_BIN, BARE_BIN (as the harness), DURATION (8), WARMUP (2), TOP (0),
       CACHESIM=1 (adds valgrind's cache simulation: last-level data read misses per request)
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

ALLOC_FNS = re.compile(r"^(mi_(malloc|zalloc|calloc|realloc|rezalloc|recalloc)(_aligned)?(_at)?|"
                       r"mi_heap_(malloc|zalloc)\w*|malloc|calloc|realloc)$")
FREE_FNS = re.compile(r"^(mi_free|free)$")

OUTDIR = os.path.join(ROOT, "benches", "load", "results")


def wrap_with_callgrind(out_file: dict, cachesim: bool):
    """Make the harness start gatehouse and bare pingora under callgrind (instrumentation off),
    writing to `out_file["path"]` as it is when the target starts."""
    real_start = harness.PROCS.start

    def start(name, cmd, logdir, cpu, stop_sig=harness.signal.SIGTERM, env=None):
        if name.startswith("gatehouse-") or name == "bare-proxy":
            vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  f"--callgrind-out-file={out_file['path']}", "--separate-threads=no"]
            if cachesim:
                vg.append("--cache-sim=yes")
            cmd = vg + cmd
        return real_start(name, cmd, logdir, cpu, stop_sig, env)

    harness.PROCS.start = start


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=120)


def parse(path: str) -> tuple[dict[str, int], dict[str, int]]:
    """Totals of the events line and the call counts into each function (by name)."""
    events: list[str] = []
    totals: dict[str, int] = {}
    calls: dict[str, int] = {}
    names: dict[str, str] = {}
    cfn = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:") or line.startswith("summary:"):
                vals = [int(v) for v in line.split()[1:]]
                totals = dict(zip(events, vals))
            elif line.startswith("fn="):
                # `fn=(id) name` defines a name the `cfn=(id)` lines later refer to by id
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.strip())
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
            elif line.startswith("cfn="):
                m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    cfn = names.get(m.group(1))
            elif line.startswith("calls=") and cfn is not None:
                calls[cfn] = calls.get(cfn, 0) + int(line.split("=")[1].split()[0])
                cfn = None
    return totals, calls


def top_inclusive(path: str, top: int) -> list[tuple[int, str]]:
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", f"--threshold=100", path],
                         capture_output=True, text=True, timeout=600).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if m:
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    rows.sort(reverse=True)
    return rows[:top]


def main(argv: list[str]) -> int:
    targets = (argv[1] if len(argv) > 1 else "c,d").split(",")
    conns = [int(c) for c in (argv[2] if len(argv) > 2 else "32").split(",")]
    os.environ.setdefault("DURATION", "8")
    # valgrind runs the target about 50x slower: give the harness's waits room.
    os.environ.setdefault("WRK_TIMEOUT", "10s")
    s = harness.Settings.from_env([])
    top = int(os.environ.get("TOP", "0"))
    cachesim = os.environ.get("CACHESIM", "0") == "1"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(OUTDIR, exist_ok=True)
    out_json = os.environ.get("OUT", os.path.join(OUTDIR, f"callgrind-{stamp}.json"))
    h = harness.Harness(s)
    rows = []
    out_file = {"path": ""}
    wrap_with_callgrind(out_file, cachesim)
    try:
        h.start_upstream()
        for key in targets:
            for c in conns:
                label = f"{key}-c{c}"
                cg_out = os.path.join(OUTDIR, f"callgrind-{stamp}-{label}.out")
                out_file["path"] = cg_out
                t = h.start_target(key)
                h.sanity(t)
                if s.warmup > 0:
                    harness.run_wrk(s, t.port, c, s.warmup, t.token, h.tmp, label + "-warmup",
                                    t.tls, t.xff)
                control(t.pid, "-i", "on")
                wrk, _ = harness.run_wrk(s, t.port, c, s.duration, t.token, h.tmp, label, t.tls,
                                         t.xff)
                control(t.pid, "-i", "off")
                control(t.pid, "-d")
                harness.PROCS.stop(t.proc, grace=60)
                # the dump above is `<out>.1`; the exit writes `<out>`, which holds nothing
                # counted once instrumentation is off
                parts = [p for p in (cg_out + ".1", cg_out) if os.path.exists(p)]
                n = wrk["requests"]
                errors = sum(v for k, v in wrk.items() if k.startswith("err_"))
                totals, calls = {}, {}
                for part in parts:
                    t_part, c_part = parse(part)
                    for k, v in t_part.items():
                        totals[k] = totals.get(k, 0) + v
                    for k, v in c_part.items():
                        calls[k] = calls.get(k, 0) + v
                allocs = sum(v for k, v in calls.items() if ALLOC_FNS.match(k))
                frees = sum(v for k, v in calls.items() if FREE_FNS.match(k))
                row = {"target": key, "name": t.name, "conns": c, "requests": n, "errors": errors,
                       "ir_per_request": totals.get("Ir", 0) / n if n else None,
                       "allocs_per_request": allocs / n if n else None,
                       "frees_per_request": frees / n if n else None,
                       "callgrind_out": parts[0] if parts else cg_out}
                if cachesim and n:
                    row["dlmr_per_request"] = totals.get("DLmr", 0) / n
                    row["d1mr_per_request"] = totals.get("D1mr", 0) / n
                if top and n:
                    row["top_inclusive"] = [(round(ir / n), fn) for ir, fn in top_inclusive(parts[0], top)]
                rows.append(row)
                harness.log(f"{key} c={c}: {n} requests, {row['ir_per_request']:.0f} Ir/req, "
                            f"{row['allocs_per_request']:.1f} allocs/req")
    finally:
        harness.PROCS.stop_all()
    with open(out_json, "w") as f:
        json.dump({"targets": targets, "conns": conns, "duration": s.duration, "rows": rows}, f,
                  indent=1)
    print("\nper request (callgrind, user space, measured span only)")
    extra = " | LL read misses | D1 read misses" if cachesim else ""
    print(f"| target | conns | requests | errors | instructions | allocations | frees{extra} |")
    print("|---|---|---|---|---|---|---|" + ("---|---|" if cachesim else ""))
    for r in rows:
        more = (f" | {r.get('dlmr_per_request', 0):.1f} | {r.get('d1mr_per_request', 0):.0f}"
                if cachesim else "")
        print(f"| ({r['target']}) {r['name']} | {r['conns']} | {r['requests']} | {r['errors']} | "
              f"{r['ir_per_request']:,.0f} | {r['allocs_per_request']:.1f} | "
              f"{r['frees_per_request']:.1f}{more} |")
    for r in rows:
        if r.get("top_inclusive"):
            print(f"\n({r['target']}) {r['name']} c={r['conns']}: inclusive instructions per request")
            for ir, fn in r["top_inclusive"]:
                mark = "  <- ours" if re.search(r"\bgatehouse(_filters)?::", fn) else ""
                print(f"{ir:>10,}  {fn[:150]}{mark}")
    print(f"\nJSON: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
