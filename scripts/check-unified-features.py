#!/usr/bin/env python3
"""Checks that the README's commands resolve one feature set for every shared dependency.

Cargo enables a dependency's features per command, from the packages that command builds
(resolver 2). When `cargo run -p gatehouse-services --features demo` turns on a feature of a
crate that `cargo run -p gatehouse` also builds (serde_json's `raw_value`, say), that crate
and every crate above it (pingora included) compile a second time. The workspace-hack crate
turns the union on everywhere; this script fails, naming the crate and the features to add
to workspace-hack/Cargo.toml, when a change of dependencies breaks that.

Pairs of commands that must agree (each reads `cargo tree`, nothing is compiled):
- the demo and the gateway (README): `-p gatehouse-services --features demo` vs `-p gatehouse`;
- the test command (scripts/test.sh): `cargo test --workspace --features
  gatehouse-services/demo` vs the later `cargo build -p gatehouse --bins --example ...`.
"""

import collections
import re
import subprocess
import sys

NODE = re.compile(r"^(\S+) v(\S+)(?: \(([^)]*)\))?(?: ([^ (]\S*))?(?: \(\*\))?$")


def features(args):
    """Package `name version` -> the feature sets this command builds it with: one per unit,
    so a crate built for the host (a build script's or a proc macro's dependency) with other
    features than for the target shows as two sets (resolver 2 resolves the two sides
    apart, and a difference on the host side alone recompiles every crate above it)."""
    out = subprocess.run(
        ["cargo", "tree", "--prefix", "none", "-f", "{p} {f}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"cargo tree {' '.join(args)} failed:\n{out.stderr}")
    found = collections.defaultdict(set)  # crate -> {frozenset of features}
    for line in out.stdout.splitlines():
        m = NODE.match(line.strip())
        if not m:
            continue
        name, version, _path, feats = m.groups()
        found[f"{name} {version}"].add(frozenset(feats.split(",") if feats else []))
    return found


def compare(label_a, a, label_b, b):
    """Fails when `b` (the command run second) builds a shared crate with a feature set that
    `a` (run first) did not build it with: that unit, and every crate above it, compiles
    again. Sets that only `a` builds (e.g. host-side crates of the services' proc macros)
    cost nothing when `b` runs."""
    bad = []
    for crate in sorted(set(a) & set(b)):
        new = b[crate] - a[crate]
        if new:
            bad.append(f"  {crate}: {label_b} builds it with features "
                       f"{[sorted(f) for f in new]}; {label_a} only with "
                       f"{[sorted(f) for f in a[crate]]}")
    shared = len(set(a) & set(b))
    if bad:
        print(f"{label_a} then {label_b}: {len(bad)} of {shared} shared crates compile again:")
        print("\n".join(bad))
    else:
        print(f"{label_a} then {label_b}: all {shared} shared crates are reused")
    return not bad


def main():
    edges = "features,normal,build"
    demo = features(["-p", "gatehouse-services", "--features", "demo", "-e", edges])
    gateway = features(["-p", "gatehouse", "-e", edges])
    tests = features(
        ["--workspace", "--features", "gatehouse-services/demo", "-e", edges + ",dev"]
    )
    gateway_dev = features(["-p", "gatehouse", "-e", edges + ",dev"])
    ok = compare("the demo", demo, "the gateway", gateway)
    ok &= compare("the workspace tests", tests, "gatehouse with dev-deps", gateway_dev)
    if not ok:
        sys.exit("add the features above to workspace-hack/Cargo.toml ([build-dependencies] "
                 "for a crate built for the host)")


if __name__ == "__main__":
    main()
