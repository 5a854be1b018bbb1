#!/usr/bin/env python3
"""Prints N distinct loopback ports that bind now, one line, space-separated.

The ports come from 12000-21999, below the range Linux picks the local port of an outgoing
connection from (net.ipv4.ip_local_port_range, 32768-60999 by default): a port of that
range, free when chosen, can be taken by any connect() a moment later, and the server
started on it then fails with "address in use". The same rule as testkit/src/ports.rs; the load
harness imports `free_ports` from here.
"""
from __future__ import annotations

import random
import socket
import sys

FIRST, SPAN = 12000, 10000


def free_ports(n: int, exclude: set[int] | None = None) -> list[int]:
    """`n` distinct ports of the range that bind now, none of them in `exclude`."""
    chosen: list[int] = []
    for port in random.sample(range(FIRST, FIRST + SPAN), SPAN):
        if len(chosen) == n:
            break
        if exclude and port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} of {n} ports of {FIRST}-{FIRST + SPAN - 1} bind")
    return chosen


if __name__ == "__main__":
    print(" ".join(map(str, free_ports(int(sys.argv[1]) if len(sys.argv) > 1 else 1))))
