#!/usr/bin/env bash
# Checks gatehouse's observability assets; exits non-zero on any failure.
#   - config/prometheus/alerts.yml: `promtool check rules` and `promtool test rules` (alerts_test.yml),
#     then a mutation check: each threshold/window changed in a copy must make the tests fail
#     (proves that the tests can fail)
#   - config/prometheus/prometheus.yml: `promtool check config`
#   - config/grafana/gatehouse.json: valid JSON, structure lint, every query parses as PromQL
#     (through promtool), every metric it and the alert rules query is in
#     config/grafana/exported-metrics.txt
# Optional: METRICS_URL=http://127.0.0.1:9901/metrics (space-separated list allowed) also checks the
# names against a real scrape of a running gateway (and services).
# Usage: scripts/check-observability.sh        (from anywhere; needs python3 with PyYAML, promtool)
set -euo pipefail
cd "$(dirname "$0")/.."

PROM=config/prometheus
GRAF=config/grafana
failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; failures=$((failures + 1)); }

if ! command -v promtool >/dev/null 2>&1; then
  step "installing promtool (Debian package prometheus)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null; }
  # Where systemd runs, the package also starts a Prometheus server on :9090: stop and disable
  # it, so that the check leaves nothing running (without systemd it starts nothing).
  command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
promtool --version 2>&1 | head -1
python3 -c 'import yaml' 2>/dev/null || fail "python3 lacks PyYAML (apt-get install python3-yaml)"

step "promtool check rules $PROM/alerts.yml"
promtool check rules "$PROM/alerts.yml" || fail "promtool check rules"

step "promtool test rules $PROM/alerts_test.yml"
(cd "$PROM" && promtool test rules alerts_test.yml) || fail "promtool test rules"

step "mutation check: the alert tests must fail when a threshold or window changes"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# sed expressions applied to alerts.yml, one per line: each must change the file and break a test.
mutations=(
  's/> 0.05$/> 0.07/'
  's/< 0.999$/< 0.99/'
  's/) > 1$/) > 3/'
  's/\[2m\])) == 1$/[1m])) == 1/'
  's/^            or$/            and/'
  's/(gatehouse_upstream_endpoint_healthy) == 0$/(gatehouse_upstream_endpoint_healthy) < 1.5/'
  's/(gatehouse_redis_up) == 0$/(gatehouse_redis_up) == 2/'
  's/fail_open|fail_closed/fail_closed/'
  's/\[15m\])) > 0$/[30m])) > 0/'
  's/^            > 0.8$/            >= 0.8/'
  's/for: 2m$/for: 5m/'
  's/for: 1m$/for: 5m/'
  's/< 14 \* 86400$/< 7 * 86400/'
  's/for: 10m$/for: 20m/'
  's/for: 30m$/for: 45m/'
  's/\[2h\])) > 0$/[1h])) > 0/'
  's/^            unless on (job, instance, name)$/            or on (job, instance, name)/'
)
killed=0
for m in "${mutations[@]}"; do
  mkdir -p "$tmp/m" && cp "$PROM/alerts_test.yml" "$tmp/m/"
  sed "$m" "$PROM/alerts.yml" >"$tmp/m/alerts.yml"
  if cmp -s "$PROM/alerts.yml" "$tmp/m/alerts.yml"; then
    fail "mutation '$m' no longer matches alerts.yml (update the list in $0)"
  elif (cd "$tmp/m" && promtool test rules alerts_test.yml >/dev/null 2>&1); then
    fail "mutation '$m' of alerts.yml still passes alerts_test.yml: the tests do not cover it"
  else
    killed=$((killed + 1))
  fi
done
echo "$killed of ${#mutations[@]} mutations detected by the tests"

step "promtool check config $PROM/prometheus.yml"
promtool check config "$PROM/prometheus.yml" || fail "promtool check config"

step "Grafana dashboard $GRAF/gatehouse.json"
python3 -m json.tool "$GRAF/gatehouse.json" >/dev/null || fail "$GRAF/gatehouse.json is not valid JSON"
python3 scripts/grafana_metrics.py --self-test || fail "grafana_metrics.py self-test"
python3 scripts/grafana_metrics.py --lint "$GRAF/gatehouse.json" || fail "dashboard lint"
python3 scripts/grafana_metrics.py "$GRAF/gatehouse.json" --emit-rules "$tmp/dashboard-queries.yml" &&
  promtool check rules "$tmp/dashboard-queries.yml" >/dev/null || {
    promtool check rules "$tmp/dashboard-queries.yml" || true
    fail "a dashboard query is not valid PromQL"
  }

step "metric names against $GRAF/exported-metrics.txt"
python3 scripts/grafana_metrics.py "$GRAF/gatehouse.json" --rules "$PROM/alerts.yml" \
  --check-list "$GRAF/exported-metrics.txt" || fail "a query uses a metric that gatehouse does not export"
# Every exported metric should be visible somewhere (dashboard), or the list has a stale entry.
unused=$(comm -23 <(grep -v '^#' "$GRAF/exported-metrics.txt" | sed '/^\s*$/d' | sort -u) \
  <(python3 scripts/grafana_metrics.py "$GRAF/gatehouse.json" | sort -u))
[ -z "$unused" ] || fail "exported but shown on no dashboard panel: $unused"

if [ -n "${METRICS_URL:-}" ]; then
  step "metric names against a real scrape: $METRICS_URL"
  args=()
  for u in $METRICS_URL; do args+=(--check-scrape "$u"); done
  python3 scripts/grafana_metrics.py "$GRAF/gatehouse.json" --rules "$PROM/alerts.yml" "${args[@]}" ||
    fail "a query uses a metric missing from the scrape"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "check-observability: $failures check(s) FAILED"
  exit 1
fi
echo "check-observability: all checks passed"
