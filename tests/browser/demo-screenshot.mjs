// The README's screenshot, taken from the running demo: waits until the dashboard shows every
// reference service's DB pool, traffic on the demo's routes and the trend line, then saves a
// full-page PNG.
// It is also a check: it fails when the demo's dashboard does not show the four services.
//   ADMIN_URL=http://127.0.0.1:9901/ OUT=docs/dashboard.png node demo-screenshot.mjs
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const ADMIN_URL = process.env.ADMIN_URL || "http://127.0.0.1:9901/";
const OUT = path.resolve(process.env.OUT || "artifacts/dashboard-demo.png");
const SERVICES = ["user", "transaction", "payment", "notification"];
const WAIT_MS = Number(process.env.WAIT_SECONDS || 40) * 1000;

const userDataDir = mkdtempSync(path.join(os.tmpdir(), "gatehouse-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 900 },
  timeout: 60_000,
});
let code = 0;
try {
  const page = context.pages()[0] || await context.newPage();
  const resp = await page.goto(ADMIN_URL, { waitUntil: "load", timeout: 30_000 });
  if (!resp || !resp.ok()) throw new Error(`GET ${ADMIN_URL} answered ${resp && resp.status()}`);
  const deadline = Date.now() + WAIT_MS;
  let missing = SERVICES;
  for (;;) {
    missing = [];
    for (const s of SERVICES) {
      if (await page.locator(`[data-testid^="pool-${s}"]`).count() === 0) missing.push(s);
    }
    const routes = await page.locator('[data-testid="routes"] tr').count();
    const trend = await page.locator('[data-testid="trend"] svg').count();
    if (missing.length === 0 && routes > 1 && trend > 0) break;
    if (Date.now() > deadline) {
      throw new Error(`after ${WAIT_MS / 1000}s the dashboard shows no pool for ${missing.join(", ") || "-"} (route rows: ${routes}, trend: ${trend})`);
    }
    await page.waitForTimeout(500);
  }
  await page.screenshot({ path: OUT, fullPage: true });
  console.log(`ok - the demo's dashboard shows the four services' pools; screenshot: ${OUT}`);
} catch (e) {
  console.log(`not ok - demo dashboard screenshot\n    ${e.message}`);
  code = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
