// End-to-end: `tether demo --serve` and its live page in Debian's headless
// Chromium (driven by playwright-core; no browser is ever downloaded).
//
//   bash scripts/check-browser.sh      (installs what is missing, builds, runs this)
//
// The page logs in through the demo cluster (its proxies allow the page's
// origin in [cors]) and runs workflows with clients/js. The test kills
// the region the page is locked to and measures, on the page's clock,
// the time from the kill to the "server changed" banner and to the first
// workflow completed on the new server; then two tabs of the same session
// refresh at once and neither is signed out; then every proxy is killed,
// the "Reconnecting…" countdown runs, and a restarted proxy ends it.
// A screenshot goes to target/e2e/demo.png.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const ROOT = new URL("..", import.meta.url).pathname;
const BIN = process.env.TETHER_BIN ?? join(ROOT, "target/debug/tether");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "target/e2e");
const SERVER_CHANGED =
  "Your primary server has changed. Any missing data will be synced within 5 minutes.";

let demo;
let demoLog = "";
let info;
let ctx;
let userDir;
const pageErrors = [];

/** Starts the demo and resolves with its TETHER_DEMO_READY json. */
function startDemo() {
  return new Promise((resolve, reject) => {
    demo = spawn(BIN, ["demo", "--serve", "--page-listen", "127.0.0.1:0"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const timer = setTimeout(() => reject(new Error(`no ready line in 90 s:\n${demoLog}`)), 90_000);
    let buf = "";
    demo.stdout.on("data", (d) => {
      buf += d;
      demoLog += d;
      const m = buf.match(/^TETHER_DEMO_READY (.*)$/m);
      if (m) {
        clearTimeout(timer);
        resolve(JSON.parse(m[1]));
      }
    });
    demo.stderr.on("data", (d) => {
      demoLog += d;
    });
    const fail = (e) => {
      clearTimeout(timer);
      reject(e);
    };
    demo.on("error", (e) => fail(new Error(`cannot start ${BIN}: ${e.message}`)));
    demo.on("exit", (code) => fail(new Error(`demo exited (${code}):\n${demoLog}`)));
  });
}

async function api(path) {
  const r = await fetch(new URL(path, info.page), { method: "POST" });
  assert.ok(r.ok || r.status === 409, `${path}: ${r.status}`);
}

async function openPage(query = "") {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(`${info.page}${query}`);
  await page.waitForFunction(() => window.tetherDemo?.loggedIn === true, null, { timeout: 20_000 });
  return page;
}

before(async () => {
  info = await startDemo();
  userDir = mkdtempSync(join(tmpdir(), "tether-e2e-chromium-"));
  // A persistent context on a fresh profile: its pages are tabs of one
  // browser, sharing BroadcastChannel and Web Locks.
  ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 960 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
});

after(async () => {
  await ctx?.close();
  if (userDir) rmSync(userDir, { recursive: true, force: true });
  if (demo && demo.exitCode === null) {
    const exited = new Promise((r) => demo.once("exit", r));
    demo.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (demo.exitCode === null) demo.kill("SIGKILL");
  }
});

let first;

test("the page fails over when its region dies: banner, then a workflow on the new server", async () => {
  first = await openPage("?near=eu");
  await first.waitForFunction(() => window.tetherDemo.workflows.length >= 2, null, {
    timeout: 30_000,
  });
  const locked = await first.evaluate(() => window.tetherDemo.server);
  assert.ok(locked?.id, "the page is locked to a server");
  await first.click(`[data-kill="${locked.region}"]`);
  await first.waitForSelector("#banner:not([hidden])", { timeout: 15_000 });
  assert.equal(await first.textContent("#banner-text"), SERVER_CHANGED);
  await first.waitForFunction(
    (killed) => {
      const d = window.tetherDemo;
      return d.workflows.some((w) => w.at > d.killedAt && w.server !== killed);
    },
    locked.id,
    { timeout: 15_000 },
  );
  const m = await first.evaluate((killed) => {
    const d = window.tetherDemo;
    const banner = d.banners.find((b) => b.at > d.killedAt);
    const wf = d.workflows.find((w) => w.at > d.killedAt && w.server !== killed);
    return {
      toBanner: banner.at - d.killedAt,
      toWorkflow: wf.at - d.killedAt,
      from: banner.from,
      to: banner.to,
      reason: banner.reason,
      now: d.server.id,
    };
  }, locked.id);
  console.log(
    `e2e: killed ${locked.id}; banner after ${m.toBanner.toFixed(0)} ms (${m.from} → ${m.to}, ${m.reason}); ` +
      `first workflow completed on ${m.to} after ${m.toWorkflow.toFixed(0)} ms`,
  );
  assert.equal(m.from, locked.id);
  assert.notEqual(m.to, locked.id);
  assert.ok(m.toWorkflow < 10_000, `workflow completed ${m.toWorkflow} ms after the kill`);
  // Let the feed and the cards catch up, then keep a picture.
  await first.waitForFunction(
    (region) =>
      document.querySelector(`.region[data-region="${region}"] .pill`)?.textContent === "killed",
    locked.region,
  );
  mkdirSync(ARTIFACTS, { recursive: true });
  await first.screenshot({ path: join(ARTIFACTS, "demo.png"), fullPage: true });
  console.log(`e2e: screenshot ${join(ARTIFACTS, "demo.png")}`);
  await first.click(`[data-start="${locked.region}"]`);
  await first.waitForFunction(
    (region) => window.tetherDemo.state.regions.find((r) => r.code === region).alive,
    locked.region,
    { timeout: 20_000 },
  );
});

test("two tabs of one session refresh at once and neither is signed out", async () => {
  const second = await openPage("?near=eu");
  const sessions = await Promise.all(
    [first, second].map((p) => p.evaluate(() => window.tetherDemo.client.currentSession)),
  );
  assert.equal(
    sessions[0].refreshToken,
    sessions[1].refreshToken,
    "the second tab joined the first tab's session (no second login)",
  );
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all(
      [first, second].map((p) =>
        p.evaluate(() =>
          window.tetherDemo.client.refresh().then(
            () => "ok",
            (e) => `${e.kind ?? ""} ${e.message}`,
          ),
        ),
      ),
    );
    assert.deepEqual(results, ["ok", "ok"], `round ${round}`);
    const after = await Promise.all(
      [first, second].map((p) => p.evaluate(() => window.tetherDemo.client.currentSession)),
    );
    assert.equal(after[0].refreshToken, after[1].refreshToken, "one rotation, shared");
    assert.notEqual(after[0].refreshToken, sessions[0].refreshToken);
  }
  // Both tabs keep working with the shared session.
  for (const p of [first, second]) {
    const n = await p.evaluate(() => window.tetherDemo.workflows.length);
    await p.waitForFunction((n) => window.tetherDemo.workflows.length > n, n, { timeout: 15_000 });
    assert.deepEqual(await p.evaluate(() => window.tetherDemo.signedOut), []);
  }
  await second.close();
});

test("with every proxy down the page counts down, and comes back when one returns", async () => {
  const regions = info.regions.map((r) => r.code);
  for (const code of regions) await api(`api/regions/${code}/kill`);
  await first.waitForSelector("#countdown:not([hidden])", { timeout: 15_000 });
  assert.match(await first.textContent("#countdown"), /Reconnecting… \d+ s/);
  await first.waitForFunction(
    () => (window.tetherDemo.countdowns.at(-1)?.seconds.length ?? 0) >= 3,
    null,
    { timeout: 10_000 },
  );
  const secs = await first.evaluate(() => window.tetherDemo.countdowns.at(-1).seconds);
  assert.ok(secs[0] > secs.at(-1), `the countdown counts down: ${secs}`);
  const n = await first.evaluate(() => window.tetherDemo.workflows.length);
  await api("api/regions/us/start");
  await first.waitForSelector("#countdown", { state: "hidden", timeout: 20_000 });
  await first.waitForFunction((n) => window.tetherDemo.workflows.length > n, n, {
    timeout: 20_000,
  });
  const c = await first.evaluate(() => window.tetherDemo.countdowns.at(-1));
  console.log(`e2e: "Reconnecting…" shown for ${((c.ended - c.at) / 1000).toFixed(1)} s (${secs.join(", ")} …)`);
  for (const code of regions) await api(`api/regions/${code}/start`);
  assert.deepEqual(await first.evaluate(() => window.tetherDemo.signedOut), []);
  assert.deepEqual(pageErrors, []);
});
