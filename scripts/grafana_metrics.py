#!/usr/bin/env python3
"""List the metric names that a Grafana dashboard (and optionally Prometheus rule files) query,
and check them against a list of exported names or a real /metrics scrape.

    grafana_metrics.py [DASHBOARD.json ...]            print base names, one per line
    grafana_metrics.py --rules alerts.yml ...          also include the rules' exprs
    grafana_metrics.py --check-list exported-metrics.txt
    grafana_metrics.py --check-scrape http://127.0.0.1:9901/metrics [--check-scrape FILE ...]
    grafana_metrics.py --emit-rules FILE               write every query as a recording rule, so that
                                                       `promtool check rules FILE` parses them all
    grafana_metrics.py --lint                          check the dashboard's structure (ids, grid, targets)
    grafana_metrics.py --self-test

Base names have a histogram's `_bucket`/`_sum`/`_count` suffix stripped. With a --check-*
option, exits 1 and names every queried metric that the list/scrape lacks. Prometheus's own
series (`up`, `scrape_*`) are always accepted. Default dashboard: config/grafana/gatehouse.json.
Only the standard library is needed (PyYAML too for --rules).
"""
import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARD = ROOT / "config" / "grafana" / "gatehouse.json"
SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_OWN = re.compile(r"^(up|scrape_[a-z_]+)$")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2", "start", "end"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")


def base_name(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def promql_metrics(expr):
    """Metric names (as written, suffixes kept) referenced by one PromQL expression."""
    e = _STRING.sub(" ", expr)
    e = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]", " ", e)   # Grafana variables
    e = re.sub(r"\{[^}]*\}", " ", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                        # ranges and subqueries
    e = _GROUPING.sub(" ", e)                                # by (...), on (...), group_left (...)
    e = re.sub(r"\boffset\s+-?[\w.]+|@\s*[\w.()]+", " ", e)
    names = set()
    for m in _IDENT.finditer(e):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in KEYWORDS:
            continue
        names.add(ident)
    return names


def template_query_metrics(q):
    """Metric names in a Grafana templating query (label_values, query_result, metrics, or PromQL)."""
    q = q.strip()
    m = re.match(r"^label_values\((.*)\)$", q, re.S)
    if m:
        args = m.group(1)
        # label_values(label) has no metric; label_values(expr, label) has one.
        if "," not in _STRING.sub("", re.sub(r"\{[^}]*\}", "", args)):
            return set()
        return promql_metrics(args.rsplit(",", 1)[0])
    if re.match(r"^label_names\(\s*\)$", q):
        return set()
    m = re.match(r"^(query_result|metrics)\((.*)\)$", q, re.S)
    if m:
        return promql_metrics(m.group(2)) if m.group(1) == "query_result" else set()
    return promql_metrics(q)


def dashboard_exprs(doc):
    """(where, kind, text) for each query in a dashboard: panel targets' expr and templating queries."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            for k, v in node.items():
                if k == "expr" and isinstance(v, str) and v.strip():
                    found.append((title, "promql", v))
                elif k == "templating" and isinstance(v, dict):
                    for var in v.get("list", []):
                        if var.get("type") != "query":
                            continue
                        q = var.get("query")
                        q = q.get("query") if isinstance(q, dict) else q
                        if isinstance(q, str) and q.strip():
                            found.append(("variable " + str(var.get("name")), "template", q))
                else:
                    walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(doc, "dashboard")
    return found


def rules_exprs(path):
    import yaml  # only needed for --rules
    doc = yaml.safe_load(Path(path).read_text())
    out = []
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            out.append((r.get("alert") or r.get("record"), "promql", r["expr"]))
    return out


def scrape_names(source):
    """Base metric names in a Prometheus text exposition (a URL or a file)."""
    if re.match(r"^https?://", source):
        with urllib.request.urlopen(source, timeout=10) as r:
            text = r.read().decode()
    else:
        text = Path(source).read_text()
    names = set()
    for line in text.splitlines():
        m = re.match(r"^#\s*TYPE\s+(\S+)\s+\S+", line)
        if m:
            names.add(m.group(1))
        elif line and not line.startswith("#"):
            names.add(base_name(re.split(r"[{\s]", line, 1)[0]))
    return names


GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")


def emit_rules(exprs, path):
    """Writes each PromQL query as a recording rule (Grafana's interval variables as 5m)."""
    rules = []
    for i, (where, kind, q) in enumerate(exprs):
        if kind == "template":
            m = re.match(r"^(?:label_values|query_result)\((.*)\)$", q.strip(), re.S)
            if not m or q.strip().startswith("label_values") and "," not in m.group(1):
                continue
            q = m.group(1).rsplit(",", 1)[0] if q.strip().startswith("label_values") else m.group(1)
        rules.append({"record": f"dashboard:query_{i}", "expr": GRAFANA_INTERVALS.sub("5m", q),
                      "labels": {"where": where[:200]}})
    Path(path).write_text(json.dumps({"groups": [{"name": "dashboard-queries", "rules": rules}]}, indent=1))
    return len(rules)


def lint(doc, name):
    """Structural problems of a dashboard, as messages."""
    errs = []
    if not isinstance(doc.get("panels"), list) or not doc["panels"]:
        return [f"{name}: no panels"]
    for k in ("uid", "title", "schemaVersion"):
        if k not in doc:
            errs.append(f"{name}: missing {k}")
    variables = {v.get("name") for v in doc.get("templating", {}).get("list", [])}
    ids, cells = set(), {}
    for p in doc["panels"]:
        t = p.get("title", "?")
        if p.get("id") in ids:
            errs.append(f"panel {t}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24 or g["w"] < 1 or g["h"] < 1:
            errs.append(f"panel {t}: bad gridPos {g}")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errs.append(f"panel {t}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = t
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            errs.append(f"panel {t}: no targets")
        refs = [q.get("refId") for q in targets]
        if len(set(refs)) != len(refs) or None in refs:
            errs.append(f"panel {t}: missing or duplicate refId {refs}")
        for q in [p] + targets:
            uid = (q.get("datasource") or {}).get("uid", "")
            m = re.match(r"^\$\{?(\w+)\}?$", uid)
            if m and m.group(1) not in variables:
                errs.append(f"panel {t}: datasource variable {uid} is not defined")
        if any(not (q.get("expr") or "").strip() for q in targets):
            errs.append(f"panel {t}: a target has no expr")
    return errs


def self_test():
    cases = {
        'sum by (route, le) (rate(gatehouse_request_duration_seconds_bucket{route=~"$route",le!="x"}[$__rate_interval]))':
            {"gatehouse_request_duration_seconds_bucket"},
        'sum(rate(a_total{x="y(z)"}[5m])) / ignoring(source) group_left sum(rate(b_total[5m] offset 1h)) > 0.05':
            {"a_total", "b_total"},
        'histogram_quantile(0.99, sum(rate(h_bucket[5m])) without (instance)) * 1e3': {"h_bucket"},
        'time() - max(last_ts_seconds) or vector(0)': {"last_ts_seconds"},
        'label_replace(up, "dst", "$1", "src", "(.*)") and on(job) x_info == bool 1': {"up", "x_info"},
        'max_over_time(state{s="open"}[1h:5m]) unless absent(other_metric)': {"state", "other_metric"},
        'count by (upstream) (gatehouse_upstream_endpoint_healthy{upstream=~"${upstream:regex}"})':
            {"gatehouse_upstream_endpoint_healthy"},
        'sum(rate(x_sum[5m])) / sum(rate(x_count[5m]))': {"x_sum", "x_count"},
    }
    bad = 0
    for expr, want in cases.items():
        got = promql_metrics(expr)
        if got != want:
            bad += 1
            print(f"self-test FAILED: {expr}\n  want {sorted(want)}\n  got  {sorted(got)}", file=sys.stderr)
    tcases = {'label_values(gatehouse_build_info{job="g"}, instance)': {"gatehouse_build_info"},
              "label_values(instance)": set(), "query_result(topk(5, sum by (route) (r_total)))": {"r_total"}}
    for q, want in tcases.items():
        got = template_query_metrics(q)
        if got != want:
            bad += 1
            print(f"self-test FAILED (template): {q}\n  want {sorted(want)}\n  got  {sorted(got)}", file=sys.stderr)
    if {base_name(n) for n in ("a_bucket", "a_sum", "a_count", "b_total")} != {"a", "b_total"}:
        bad += 1
        print("self-test FAILED: base_name", file=sys.stderr)
    print(f"grafana_metrics self-test: {len(cases) + len(tcases) + 1 - bad} passed, {bad} failed")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboards", nargs="*", help=f"Grafana dashboard JSON files (default {DEFAULT_DASHBOARD})")
    ap.add_argument("--rules", action="append", default=[], help="also scan this Prometheus rule file")
    ap.add_argument("--check-list", help="file of allowed metric base names, one per line (# comments)")
    ap.add_argument("--check-scrape", action="append", default=[], help="URL or file of a /metrics exposition; repeatable")
    ap.add_argument("--emit-rules", help="write the queries as a Prometheus rule file (for promtool check rules)")
    ap.add_argument("--lint", action="store_true", help="check the dashboards' structure")
    ap.add_argument("--self-test", action="store_true", help="test the PromQL name extraction and exit")
    a = ap.parse_args()
    if a.self_test:
        return self_test()

    exprs, lint_errs = [], []
    for d in a.dashboards or ([] if a.rules else [str(DEFAULT_DASHBOARD)]):
        try:
            doc = json.loads(Path(d).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{d}: not valid JSON: {e}", file=sys.stderr)
            return 1
        exprs += [(f"{d}: {w}", k, q) for w, k, q in dashboard_exprs(doc)]
        if a.lint:
            lint_errs += [f"{d}: {e}" for e in lint(doc, d)]
    if a.lint:
        for e in lint_errs:
            print(e, file=sys.stderr)
        print(f"dashboard lint: {len(lint_errs)} problems")
        return 1 if lint_errs else 0
    for r in a.rules:
        exprs += [(f"{r}: {w}", k, q) for w, k, q in rules_exprs(r)]

    used = {}  # base name -> where
    for where, kind, q in exprs:
        for n in (promql_metrics(q) if kind == "promql" else template_query_metrics(q)):
            used.setdefault(base_name(n), where)

    if a.emit_rules:
        n = emit_rules(exprs, a.emit_rules)
        print(f"wrote {n} queries as recording rules to {a.emit_rules}")
        return 0
    if not a.check_list and not a.check_scrape:
        for n in sorted(used):
            print(n)
        return 0

    known = set()
    if a.check_list:
        for line in Path(a.check_list).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                known.add(base_name(line))
    for s in a.check_scrape:
        try:
            known |= scrape_names(s)
        except OSError as e:
            print(f"cannot read {s}: {e}", file=sys.stderr)
            return 1
    missing = sorted(n for n in used if n not in known and not PROMETHEUS_OWN.match(n))
    for n in missing:
        print(f"unknown metric {n} (used by {used[n]})", file=sys.stderr)
    src = ", ".join(filter(None, [a.check_list] + a.check_scrape))
    print(f"{len(used)} metric names queried in {len(exprs)} queries; {len(missing)} not in {src}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
