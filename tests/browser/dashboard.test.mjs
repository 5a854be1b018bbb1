// Browser test of gatehouse's System Health Dashboard in headless Chromium (playwright-core,
// Debian's /usr/bin/chromium; no browser download).
//
// Against a running gateway (what CI does):
//   ADMIN_PORT=9901 GATEWAY_URL=http://127.0.0.1:8080 FAILING_UPSTREAM=payment HEALTHY_UPSTREAM=user \
//   ARTIFACT_DIR=artifacts node dashboard.test.mjs
// Optional: ADMIN_URL (instead of ADMIN_PORT, e.g. with a path prefix), TRAFFIC_PATH (default /),
//   TRAFFIC_REQUESTS (default 40), FAILING_TRAFFIC_PATH (if set, that many requests are first sent
//   there, e.g. a route of the failing upstream, so that passive checks and its breaker see failures),
//   EXPECT_BREAKER_STATE (CLOSED|OPEN|HALF_OPEN, or DISABLED
//   for an upstream without a breaker; unset: any of the first three),
//   EXPECT_STATUS (HEALTHY|DEGRADED|DOWN), WAIT_SECONDS (default 20), CHROMIUM (default /usr/bin/chromium).
// Against the mock in this folder (for developing the page): node dashboard.test.mjs --mock
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const MOCK = process.argv.includes("--mock");
let mock = null;
if (MOCK) {
  const { startMock } = await import("./mock-admin.mjs");
  mock = await startMock();
  process.env.ADMIN_PORT = String(mock.adminPort);
  process.env.GATEWAY_URL = `http://127.0.0.1:${mock.gatewayPort}`;
  process.env.FAILING_UPSTREAM ??= "payment";
  process.env.HEALTHY_UPSTREAM ??= "user";
  process.env.EXPECT_BREAKER_STATE ??= "OPEN";
  process.env.EXPECT_STATUS ??= "DEGRADED";
  process.env.FAILING_TRAFFIC_PATH ??= "/payment/charge";
}

const env = process.env;
function need(name) {
  if (!env[name]) { console.error(`dashboard test: set ${name} (see the header of ${path.basename(import.meta.url)})`); process.exit(2); }
  return env[name];
}
const ADMIN_URL = env.ADMIN_URL || `http://127.0.0.1:${need("ADMIN_PORT")}/`;
const GATEWAY_URL = need("GATEWAY_URL").replace(/\/$/, "");
const FAILING = need("FAILING_UPSTREAM");
const HEALTHY = env.HEALTHY_UPSTREAM || null;
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || "artifacts");
const TRAFFIC_PATH = env.TRAFFIC_PATH || "/";
const TRAFFIC_REQUESTS = Number(env.TRAFFIC_REQUESTS || 40);
const WAIT_MS = Number(env.WAIT_SECONDS || 20) * 1000;

let passed = 0, failed = 0;
function ok(name) { passed++; console.log(`ok - ${name}`); }
function fail(name, why) { failed++; console.log(`not ok - ${name}\n    ${why}`); }
async function check(name, fn) {
  try { await fn(); ok(name); } catch (e) { fail(name, e.message.split("\n").slice(0, 6).join("\n    ")); }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const sel = (testid) => `[data-testid="${testid.replace(/"/g, '\\"')}"]`;
const isNumeric = (s) => /\d/.test(s || "") && !/n\/a/.test(s);

/** Polls fn (returning [done, detail]) until done or timeout; returns the last detail. */
async function waitFor(what, fn, timeoutMs = WAIT_MS) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    const [done, detail] = await fn();
    last = detail;
    if (done) return detail;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}; last seen: ${JSON.stringify(detail)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function attrs(page, testid) {
  return page.evaluate((s) => {
    const n = document.querySelector(s);
    return n ? { text: n.textContent.trim(), state: n.dataset.state ?? null, status: n.dataset.status ?? null, healthy: n.dataset.healthy ?? null } : null;
  }, sel(testid));
}

async function sendTraffic(p = TRAFFIC_PATH) {
  let answered = 0, statuses = {};
  for (let i = 0; i < TRAFFIC_REQUESTS; i++) {
    try {
      const r = await fetch(GATEWAY_URL + p);
      await r.arrayBuffer();
      answered++;
      statuses[r.status] = (statuses[r.status] || 0) + 1;
    } catch { /* counted below */ }
  }
  assert(answered > 0, `no request to ${GATEWAY_URL + p} got an answer`);
  return statuses;
}

const userDataDir = mkdtempSync(path.join(os.tmpdir(), "gatehouse-chromium-"));
mkdirSync(ARTIFACT_DIR, { recursive: true });
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
} catch (e) {
  console.error(`dashboard test: cannot launch Chromium: ${e.message}`);
  rmSync(userDataDir, { recursive: true, force: true });
  await mock?.close();
  process.exit(1);
}

const pageErrors = [];
try {
  const page = context.pages()[0] || await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(`console.error: ${m.text()}`); });
  page.on("requestfailed", (r) => { if (!/admin\/status/.test(r.url())) pageErrors.push(`request failed: ${r.url()}`); });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(ADMIN_URL).origin)) external.push(r.url()); });

  await check(`page loads from ${ADMIN_URL}`, async () => {
    const resp = await page.goto(ADMIN_URL, { waitUntil: "load", timeout: 30_000 });
    assert(resp && resp.ok(), `GET ${ADMIN_URL} answered ${resp && resp.status()}`);
    await waitFor("the first successful refresh", async () => {
      const a = await attrs(page, "last-updated");
      return [a && a.state === "ok", a];
    });
  });

  await check("overall status shown", async () => {
    // The first health checks run a second after start: until then every endpoint is
    // unverified and the status may be DOWN; wait for the expected one.
    const want = env.EXPECT_STATUS ? env.EXPECT_STATUS.toLowerCase() : null;
    const a = await waitFor("overall status", async () => {
      const a = await attrs(page, "overall-status");
      return [a && ["healthy", "degraded", "down"].includes(a.status) && (!want || a.status === want), a];
    });
    assert(/HEALTHY|DEGRADED|DOWN/.test(a.text), `status badge text is ${JSON.stringify(a.text)}`);
    if (env.EXPECT_STATUS) assert(a.text.includes(env.EXPECT_STATUS.toUpperCase()), `expected ${env.EXPECT_STATUS}, shown ${a.text}`);
    const reason = await attrs(page, "status-reason");
    assert(reason && reason.text && reason.text !== "n/a", `status reason missing: ${JSON.stringify(reason)}`);
  });

  if (env.FAILING_TRAFFIC_PATH) {
    await check(`traffic to the failing upstream (${env.FAILING_TRAFFIC_PATH}) is answered`, async () => {
      console.log(`    ${JSON.stringify(await sendTraffic(env.FAILING_TRAFFIC_PATH))}`);
    });
  }

  await check(`failing upstream "${FAILING}" marked down`, async () => {
    const a = await waitFor(`upstream-${FAILING} to be down`, async () => {
      const a = await attrs(page, `upstream-${FAILING}`);
      return [a && a.state === "down", a];
    });
    assert(a.text.includes("DOWN"), `upstream-${FAILING} shows ${JSON.stringify(a.text)}`);
    const eps = await page.$$eval(`${sel("upstream-" + FAILING)} [data-testid^="endpoint-"]`,
      (ns) => ns.map((n) => ({ id: n.dataset.testid, healthy: n.dataset.healthy, text: n.textContent })));
    assert(eps.length > 0, `no endpoint rows under upstream-${FAILING}`);
    for (const e of eps) assert(e.healthy === "false" && /down/.test(e.text), `${e.id} is not shown down: ${JSON.stringify(e)}`);
  });

  if (env.FAILING_TRAFFIC_PATH && !MOCK) {
    await check(`the failing route "${FAILING}" is named with its 5xx share`, async () => {
      const t = await waitFor(`route-${FAILING} row`, async () => {
        const n = await page.$(sel("route-" + FAILING));
        const text = n ? await n.textContent() : null;
        return [text != null && /5xx (?!0\.00%)/.test(text), text];
      });
      assert(/5xx/.test(t), `route-${FAILING}: ${t}`);
    });
  }

  await check(`breaker of "${FAILING}" shown`, async () => {
    const a = await waitFor(`breaker-${FAILING} state`, async () => {
      const a = await attrs(page, `breaker-${FAILING}`);
      const want = env.EXPECT_BREAKER_STATE ? env.EXPECT_BREAKER_STATE.toLowerCase() : null;
      return [a && (want ? a.state === want : ["closed", "open", "half_open"].includes(a.state)), a];
    });
    assert(/CLOSED|HALF_OPEN|OPEN/.test(a.text), `breaker-${FAILING} text ${JSON.stringify(a.text)}`);
    assert(/error rate/.test(a.text), `breaker-${FAILING} shows no error rate: ${JSON.stringify(a.text)}`);
  });

  if (HEALTHY) {
    await check(`healthy upstream "${HEALTHY}" marked up`, async () => {
      const a = await waitFor(`upstream-${HEALTHY} to be up`, async () => {
        const a = await attrs(page, `upstream-${HEALTHY}`);
        return [a && a.state === "up", a];
      });
      assert(a.text.includes("UP"), `upstream-${HEALTHY} shows ${JSON.stringify(a.text)}`);
      const eps = await page.$$eval(`${sel("upstream-" + HEALTHY)} [data-testid^="endpoint-"]`, (ns) => ns.map((n) => n.dataset.healthy));
      assert(eps.length > 0 && eps.every((h) => h === "true"), `endpoints of ${HEALTHY}: ${JSON.stringify(eps)}`);
    });
  }

  await check("request rate and latency present and changing after traffic (page refreshes itself)", async () => {
    await page.evaluate(() => { window.__noReload = true; });
    const read = async () => {
      const o = {};
      for (const k of ["rps", "total-requests", "error-rate", "p50", "p99"]) o[k] = (await attrs(page, k))?.text;
      return o;
    };
    // Read "before" from a refresh that happened after every earlier request.
    const n0 = Number((await page.getAttribute(sel("last-updated"), "data-refreshes")) || 0);
    await waitFor("a refresh", async () => [Number(await page.getAttribute(sel("last-updated"), "data-refreshes")) > n0 + 1, null]);
    const before = await read();
    const statuses = await sendTraffic();
    const after = await waitFor("rps / total-requests to change after traffic", async () => {
      const a = await read();
      return [a.rps !== before.rps || a["total-requests"] !== before["total-requests"], a];
    });
    // Give latency a refresh to catch up if only the counters changed first.
    const final = await waitFor("rps, error rate and latency to be numbers", async () => {
      const a = await read();
      return [isNumeric(a.rps) && isNumeric(a["error-rate"]) && isNumeric(a.p99) && isNumeric(a.p50), a];
    });
    assert(await page.evaluate(() => window.__noReload === true), "the page reloaded instead of refreshing itself");
    console.log(`    traffic ${JSON.stringify(statuses)}: before ${JSON.stringify(before)} after ${JSON.stringify(after)} now ${JSON.stringify(final)}`);
  });

  await check("no script errors and no external requests (self-contained)", async () => {
    assert(pageErrors.length === 0, pageErrors.join("; "));
    assert(external.length === 0, `external requests: ${external.join(", ")}`);
  });

  await page.screenshot({ path: path.join(ARTIFACT_DIR, "dashboard.png"), fullPage: true });
  console.log(`    screenshot: ${path.join(ARTIFACT_DIR, "dashboard.png")}`);

  await check("readable on a phone (no horizontal overflow at 390px)", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const w = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
    await page.screenshot({ path: path.join(ARTIFACT_DIR, "dashboard-phone.png"), fullPage: true });
    assert(w.scroll <= w.inner, `page is ${w.scroll}px wide in a ${w.inner}px viewport`);
  });

  if (MOCK) {
    await check("mock: routes with their rates, 4xx and auth figures, and a sparkline", async () => {
      const pay = await page.textContent(sel("route-payment")), user = await page.textContent(sel("route-user"));
      assert(/5xx 100\.0%/.test(pay) && /5xx 0\.00%/.test(user) && /4xx 8\.00%/.test(user), `routes: ${pay} | ${user}`);
      assert((await page.textContent(sel("client-error-rate"))) === "4.00%", "4xx rate");
      assert((await page.textContent(sel("auth-failures"))) === "0.25", "auth failures/s");
      const spark = await page.$eval(sel("trend"), (n) => ({ points: n.dataset.points, errors: n.querySelectorAll("[data-error]").length }));
      assert(spark.points === "6" && spark.errors === 3, `sparkline ${JSON.stringify(spark)}`);
    });
    await check("mock: a service failing every operation shows its error rate, endpoint and age", async () => {
      const t = await page.textContent(sel("pool-payment-127.0.0.1:3004"));
      assert(/ops errors 100\.0%/.test(t) && /127\.0\.0\.1:3004/.test(t) && /4 s ago/.test(t), `pool row ${t}`);
    });
    await check("mock: a card with healthy endpoints but an OPEN breaker is not UP", async () => {
      const a = await attrs(page, "upstream-ledger");
      assert(a && a.state === "breaker-open" && /BREAKER OPEN/.test(a.text) && !/✓ UP/.test(a.text), `upstream-ledger ${JSON.stringify(a)}`);
    });
    await check("mock: reloads and events shown newest first, reload errors shown", async () => {
      const r0 = await page.textContent(sel("reload-0")), r1 = await page.textContent(sel("reload-1"));
      assert(/9f2c41d0ab77/.test(r0) && /failure/.test(r1) && /unknown upstream/.test(r1), `reload-0=${r0} reload-1=${r1}`);
      const c0 = await page.textContent(sel("reload-changes-0"));
      assert(/routes \+orders ~users/.test(c0) && /pending restart: runtime/.test(c0), `reload changes ${c0}`);
      const ev = await page.$$eval(`${sel("events")} li`, (ns) => ns.map((n) => n.dataset.kind));
      assert(ev.join() === "breaker,health,reload", `event order ${ev}`);
    });
    await check("mock: early status with missing fields renders n/a behind a path prefix", async () => {
      const p = await context.newPage();
      const errs = [];
      p.on("pageerror", (e) => errs.push(e.message));
      await p.goto(new URL("sparse/", ADMIN_URL).href);
      await waitFor("sparse status", async () => [(await attrs(p, "overall-status"))?.status === "healthy", null]);
      const t = async (id) => (await attrs(p, id))?.text;
      assert((await t("p99")) === "n/a" && (await t("uptime")) === "n/a", `p99=${await t("p99")} uptime=${await t("uptime")}`);
      assert((await t("rps")) === "1.50", `rps=${await t("rps")}`);
      assert((await attrs(p, "upstream-user"))?.state === "up", "upstream-user not up from endpoints alone");
      assert(errs.length === 0, errs.join("; "));
      await p.close();
    });
    await check("mock: a failing status endpoint is shown as an error", async () => {
      const p = await context.newPage();
      await p.goto(new URL("broken/", ADMIN_URL).href);
      const a = await waitFor("connection error", async () => { const a = await attrs(p, "last-updated"); return [a?.state === "error", a]; });
      assert(/HTTP 500/.test(a.text), a.text);
      await p.close();
    });
  }
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  await mock?.close();
}

console.log(`dashboard: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
