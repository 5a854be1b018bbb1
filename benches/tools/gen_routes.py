#!/usr/bin/env python3
"""Writes a gatehouse config with N routes (default 10,000) over 10 upstreams, a third
each of prefix, exact+method and host+prefix routes, for timing reloads:

    python3 benches/tools/gen_routes.py > /tmp/r10k.yaml
    gatehouse run -c /tmp/r10k.yaml &
    curl -s -o /dev/null -w '%{time_total}\\n' -X POST http://127.0.0.1:58002/admin/reload
"""

import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
out = [
    "listeners:",
    "  - name: public",
    "    address: 127.0.0.1:58001",
    "admin:",
    "  address: 127.0.0.1:58002",
    "upstreams:",
]
for u in range(10):
    out += [
        f"  u{u}:",
        "    discovery:",
        "      static:",
        f"        - {{ address: 127.0.0.1:{59000 + u}, weight: 1 }}",
    ]
out.append("routes:")
for i in range(n):
    match = [
        f"{{ path_prefix: /svc{i}/api }}",
        f"{{ path: /exact/{i}, methods: [GET] }}",
        f"{{ hosts: [h{i}.example.com], path_prefix: /p{i} }}",
    ][i % 3]
    out += [f"  - name: r{i}", f"    match: {match}", f"    upstream: u{i % 10}"]
print("\n".join(out))
