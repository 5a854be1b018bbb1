// A stand-in for gatehouse's admin listener and gateway, for developing the dashboard and its
// browser test before the real gateway serves them. Not used when the test runs against a real
// gateway (CI does that).
//
// Admin port:   GET /                        -> src/admin/dashboard.html
//               GET /admin/status            -> status whose traffic numbers come from the
//                                               requests the gateway port really received
//               GET /sparse/, /sparse/admin/status -> the page behind a path prefix, with an
//                                               "early version" status (most fields missing)
//               GET /broken/, /broken/admin/status -> the page, and a status endpoint that fails
// Gateway port: any request; /payment* answers 503 (the failing upstream), the rest 200.
//
// Run alone: node mock-admin.mjs [adminPort] [gatewayPort]   (0 = pick a free port)
import http from "node:http";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const HTML_PATH = path.join(here, "..", "..", "src", "admin", "dashboard.html");

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server.address().port));
  });
}

/** Starts both mock servers; resolves to { adminPort, gatewayPort, close() }. */
export async function startMock({ adminPort = 0, gatewayPort = 0 } = {}) {
  const started = Date.now();
  const WINDOW = 60;
  const hits = []; // { t, ms, status } within the window
  let total = 0; // requests since start
  const events = [
    { time: new Date(started - 120e3).toISOString(), kind: "reload", message: "config loaded (hash 9f2c41d0ab77)" },
    { time: new Date(started - 90e3).toISOString(), kind: "health", message: "payment 127.0.0.1:3004 -> unhealthy (3 failed checks)" },
    { time: new Date(started - 60e3).toISOString(), kind: "breaker", message: "payment breaker CLOSED -> OPEN (error rate 100%)" },
  ];

  const gateway = http.createServer((req, res) => {
    const t0 = process.hrtime.bigint();
    const failing = req.url.startsWith("/payment");
    req.resume();
    req.on("end", () => {
      res.writeHead(failing ? 503 : 200, { "content-type": "application/json" });
      res.end(failing ? '{"error":"upstream unavailable"}' : '{"ok":true}');
      // Add a little simulated upstream time so that latency percentiles are non-trivial.
      const ms = Number(process.hrtime.bigint() - t0) / 1e6 + 1 + Math.random() * 20;
      hits.push({ t: Date.now(), ms, status: failing ? 503 : 200 });
      total++;
    });
  });

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  }

  function status() {
    const now = Date.now();
    while (hits.length && hits[0].t < now - WINDOW * 1000) hits.shift();
    const lat = hits.map((h) => h.ms).sort((a, b) => a - b);
    const errors = hits.filter((h) => h.status >= 500).length;
    const iso = (t) => new Date(t).toISOString();
    return {
      status: "DEGRADED",
      status_reason: "upstream payment has no healthy endpoint; breaker payment OPEN",
      version: "0.1.0-mock",
      started_at: iso(started),
      uptime_seconds: Math.floor((now - started) / 1000),
      config: { hash: "9f2c41d0ab77e3c1", loaded_at: iso(started - 120e3), path: "/etc/gatehouse.yaml" },
      traffic: {
        window_seconds: WINDOW,
        requests_per_second: hits.length / WINDOW,
        error_rate: hits.length ? errors / hits.length : 0,
        p50_ms: quantile(lat, 0.5), p95_ms: quantile(lat, 0.95), p99_ms: quantile(lat, 0.99),
        total_requests: total,
        client_error_rate: 0.04, auth_failures_per_second: 0.25,
        routes: [
          { route: "user", requests_per_second: 0.67, error_rate: 0, client_error_rate: 0.08, requests: 40 },
          { route: "payment", requests_per_second: 0.67, error_rate: 1, client_error_rate: 0, requests: 40 },
        ],
        trend: [0.2, 0.4, 1.3, 1.1, 0.9, 1.4].map((r, i) => ({ requests_per_second: r, error_rate: i >= 3 ? 0.5 : 0 })),
      },
      upstreams: [
        { name: "user", healthy_endpoints: 2, total_endpoints: 2,
          breaker: { state: "CLOSED", error_rate: 0.002, enabled: true },
          endpoints: [
            { address: "127.0.0.1:3001", weight: 3, healthy: true, since: iso(started - 3600e3), inflight: 1, source: "static" },
            { address: "127.0.0.1:3011", weight: 1, healthy: true, since: iso(started - 600e3), inflight: 0, source: "redis" },
          ] },
        { name: "ledger", healthy_endpoints: 1, total_endpoints: 1,
          breaker: { state: "OPEN", error_rate: 0.8, enabled: true },
          endpoints: [
            { address: "127.0.0.1:3007", weight: 1, healthy: true, since: iso(started - 900e3), inflight: 0, source: "static" },
          ] },
        { name: "payment", healthy_endpoints: 0, total_endpoints: 1,
          breaker: { state: "OPEN", error_rate: 1, enabled: true },
          endpoints: [
            { address: "127.0.0.1:3004", weight: 1, healthy: false, since: iso(started - 90e3), inflight: 0, source: "static" },
          ] },
      ],
      rate_limits: { allowed: total, rejected: 2 },
      redis: { configured: true, up: true },
      reloads: [ // newest first
        { time: iso(started - 120e3), result: "success", hash: "9f2c41d0ab77e3c1", error: null,
          changes: "routes +orders ~users; upstreams ~payment: +127.0.0.1:3005; pending restart: runtime", pending_restart: ["runtime"] },
        { time: iso(started - 200e3), result: "failure", hash: null, error: "gatehouse.yaml:12:7: routes[1].upstream: unknown upstream `paymnt`" },
        { time: iso(started - 300e3), result: "success", hash: "1b2c3d4e5f60", error: null },
      ],
      events: [...events].reverse(), // newest first, as the gateway sends them
      services: [
        { name: "user", db_pool: { in_use: 3, max: 10 } },
        { name: "payment", endpoint: "127.0.0.1:3004", age_seconds: 4, db_pool: { in_use: 9, max: 10 },
          operations: { recent: 40, failed: 40, error_rate: 1 } },
      ],
    };
  }

  const html = () => readFileSync(HTML_PATH); // re-read so that edits show on reload
  const admin = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const send = (code, type, body) => {
      res.writeHead(code, { "content-type": type, "cache-control": "no-store" });
      res.end(body);
    };
    switch (url.pathname) {
      case "/": case "/sparse/": case "/broken/":
        return send(200, "text/html; charset=utf-8", html());
      case "/admin/status":
        return send(200, "application/json", JSON.stringify(status()));
      case "/sparse/admin/status":
        // An early gateway: only some fields, some null, unknown extras.
        return send(200, "application/json", JSON.stringify({
          status: "HEALTHY", uptime_seconds: null, traffic: { requests_per_second: 1.5 },
          upstreams: [{ name: "user", endpoints: [{ address: "127.0.0.1:3001", healthy: true }] }, null, { bogus: 1 }],
          redis: null, reloads: null, extra_field: { x: 1 },
        }));
      case "/broken/admin/status":
        return send(500, "text/plain", "boom");
      default:
        return send(404, "text/plain", "not found");
    }
  });

  const gp = await listen(gateway, gatewayPort);
  const ap = await listen(admin, adminPort);
  return {
    adminPort: ap, gatewayPort: gp,
    close: () => Promise.all([admin, gateway].map((s) => new Promise((r) => { s.closeAllConnections?.(); s.close(r); }))),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const m = await startMock({ adminPort: Number(process.argv[2] ?? 9901), gatewayPort: Number(process.argv[3] ?? 0) });
  console.log(`mock admin:   http://127.0.0.1:${m.adminPort}/`);
  console.log(`mock gateway: http://127.0.0.1:${m.gatewayPort}/  (/payment* answers 503)`);
}
