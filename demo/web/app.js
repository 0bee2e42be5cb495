// The live page of `tether demo --serve` (docs/demo.md). It polls the
// demo's /api/state and renders it, and is itself a tether client: it
// logs in through the cluster with clients/js (served as /tether.js) and
// runs create order → add item → checkout against the sample app, showing
// the "server changed" banner and the "Reconnecting…" countdown.
// window.tetherDemo exposes what the end-to-end test reads.
import { TetherClient } from "/tether.js";

const NEARNESS = { eu: ["eu", "us", "ap"], us: ["us", "eu", "ap"], ap: ["ap", "us", "eu"] };
const COLOR = { eu: "var(--eu)", us: "var(--us)", ap: "var(--ap)" };
const params = new URLSearchParams(location.search);
const USER = params.get("user") || "carol";
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const regionOf = (serverId) => (serverId || "").split("-")[0];
const color = (region) => COLOR[region] || "var(--muted)";

/** What the end-to-end test reads. Times are performance.now() ms. */
const demo = {
  user: USER,
  state: null,
  client: null,
  server: null,
  loggedIn: false,
  workflows: [],
  banners: [],
  countdowns: [],
  signedOut: [],
  errors: [],
  killedAt: null,
  killed: null,
};
window.tetherDemo = demo;

let state = null;
let stateAt = 0;
let since = 0;
/** Regions this page killed and has not seen restarted yet (before the next poll says so). */
const killedHere = new Set();
let near = params.get("near") || "eu";
let paused = params.get("workflows") === "off";

// ---------------------------------------------------------------- state

async function poll() {
  try {
    const r = await fetch(`/api/state?since=${since}`, { cache: "no-store" });
    if (r.ok) {
      state = await r.json();
      stateAt = performance.now();
      demo.state = state;
      for (const reg of state.regions) if (reg.alive) killedHere.delete(reg.code);
      render();
    }
  } catch {
    // The demo process is gone; keep the last picture.
  }
}

async function pollLoop() {
  for (;;) {
    await poll();
    await sleep(500);
  }
}

function alive(code) {
  const r = state?.regions.find((x) => x.code === code);
  return !!r && r.alive && !killedHere.has(code);
}

/**
 * The page's "geo DNS": the nearest region whose proxy is up, by the
 * demo's state (fetched again when it is more than a second old).
 */
async function globalUrl() {
  if (!state || performance.now() - stateAt > 1000) await poll();
  const order = NEARNESS[near] || NEARNESS.eu;
  const pick = order.find(alive) || order[0];
  return state.regions.find((r) => r.code === pick).proxyUrl;
}

// ---------------------------------------------------------------- render

const regionEls = new Map();

function regionCard(reg) {
  const el = document.createElement("div");
  el.className = "region";
  el.style.setProperty("--c", color(reg.code));
  el.dataset.region = reg.code;
  el.innerHTML = `
    <div class="region-head"><div class="region-code">${reg.code}</div><span class="pill"></span></div>
    <div class="server">server <b>${reg.serverId}</b> · <span class="mono">${reg.proxyUrl.replace("http://", "")}</span></div>
    <div class="kv"><span>load</span><b class="load">–</b></div>
    <div class="meter"><div></div></div>
    <div class="kv"><span>clients locked here</span><b class="nlocked">0</b></div>
    <div class="clients"></div>
    <div class="decisions"></div>
    <div class="buttons">
      <button class="danger kill" data-kill="${reg.code}">Kill proxy</button>
      <button class="start" data-start="${reg.code}">Restart</button>
    </div>`;
  el.querySelector(".kill").addEventListener("click", () => kill(reg.code, reg.serverId));
  el.querySelector(".start").addEventListener("click", () => action(`/api/regions/${reg.code}/start`));
  $("regions").appendChild(el);
  return el;
}

function render() {
  if (!state) return;
  const crowd = state.crowd;
  $("uptime").textContent = `up ${(crowd.uptimeMs / 1000).toFixed(0)} s`;
  const loads = state.regions.map((r) => r.load || 0);
  const maxLoad = Math.max(1, ...loads);
  for (const reg of state.regions) {
    let el = regionEls.get(reg.code);
    if (!el) {
      el = regionCard(reg);
      regionEls.set(reg.code, el);
    }
    const up = alive(reg.code);
    el.classList.toggle("down", !up);
    const pill = el.querySelector(".pill");
    if (!up) {
      pill.className = "pill down";
      pill.textContent = "killed";
    } else if (!reg.inRegistry) {
      pill.className = "pill warn";
      pill.textContent = "not registered";
    } else if (!reg.healthy) {
      pill.className = "pill warn";
      pill.textContent = "unhealthy";
    } else {
      pill.className = "pill up";
      pill.textContent = "up";
    }
    el.querySelector(".load").textContent = reg.load == null ? "–" : reg.load.toFixed(2);
    el.querySelector(".meter > div").style.width = `${up ? ((reg.load || 0) / maxLoad) * 100 : 0}%`;
    const n = crowd.lockedTo[reg.serverId] || 0;
    const mine = demo.server?.id === reg.serverId;
    el.querySelector(".nlocked").textContent = String(n + (mine ? 1 : 0));
    const dots = el.querySelector(".clients");
    const want = n + (mine ? 1 : 0);
    if (dots.childElementCount !== want || !!dots.querySelector(".you") !== mine) {
      dots.innerHTML = "";
      if (mine) {
        const you = document.createElement("span");
        you.className = "client-dot you";
        you.textContent = "you";
        dots.appendChild(you);
      }
      for (let i = 0; i < n; i++) {
        const d = document.createElement("span");
        d.className = "client-dot";
        dots.appendChild(d);
      }
    }
    const dec = Object.entries(reg.refreshDecisions || {})
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${v}`)
      .join(" · ");
    el.querySelector(".decisions").textContent = up
      ? `refreshes here: ${dec || "none yet"} · requests ${reg.requests}`
      : "process gone (SIGKILL)";
    el.querySelector(".kill").disabled = !up;
    el.querySelector(".start").disabled = up;
  }
  const disc = state.discovery;
  $("disc-dot").className = disc.alive ? "dot" : "dot off";
  $("disc-url").textContent = disc.url.replace("http://", "");
  $("disc-note").textContent = disc.alive
    ? "registry of servers, heartbeats every 500 ms"
    : "stopped: proxies keep serving from their last registry";
  $("disc-stop").disabled = !disc.alive;
  $("disc-start").disabled = disc.alive;

  $("crowd-hint").textContent = `${crowd.clients} Rust SDK clients doing workflows in all three regions`;
  $("c-completed").textContent = crowd.completed;
  $("c-restarted").textContent = crowd.restarted;
  $("c-failed").textContent = crowd.failed;
  const reasons = Object.entries(crowd.relocks);
  const maxR = Math.max(1, ...reasons.map(([, v]) => v));
  $("relocks").innerHTML = reasons.length
    ? reasons
        .map(
          ([k, v]) =>
            `<div class="bar"><span>${k}</span><div class="track"><div class="fill" style="width:${(v / maxR) * 100}%"></div></div><span class="n">${v}</span></div>`,
        )
        .join("")
    : `<div class="hint">none yet: kill a region to see clients move</div>`;
  // Polls can overlap (the loop, a button, the client's global URL):
  // each entry is shown once.
  for (const e of crowd.feed) {
    if (e.seq > since) addFeed(e.kind, e.region, e.text, e.tMs);
  }
  since = Math.max(since, crowd.seq);
}

/** The page's own entries get the demo's clock too (time since it started). */
function demoNow() {
  return state ? state.crowd.uptimeMs + (performance.now() - stateAt) : 0;
}

function addFeed(kind, region, text, tMs) {
  const el = document.createElement("div");
  el.className = `entry ${kind}`;
  if (region) el.style.setProperty("--c", color(region));
  const time = document.createElement("span");
  time.className = "t";
  time.textContent = `+${((tMs ?? demoNow()) / 1000).toFixed(1)} s`;
  const k = document.createElement("span");
  k.className = "k";
  k.textContent = kind;
  const body = document.createElement("span");
  body.textContent = text;
  el.append(time, k, body);
  const feed = $("feed");
  feed.prepend(el);
  while (feed.childElementCount > 150) feed.lastElementChild.remove();
}

// -------------------------------------------------------------- actions

async function action(path) {
  const r = await fetch(path, { method: "POST" });
  await poll();
  return r.ok;
}

async function kill(code, serverId) {
  killedHere.add(code);
  demo.killedAt = performance.now();
  demo.killed = serverId;
  render();
  await action(`/api/regions/${code}/kill`);
}

$("disc-stop").addEventListener("click", () => action("/api/discovery/stop"));
$("disc-start").addEventListener("click", () => action("/api/discovery/start"));

// --------------------------------------------------------------- client

function showServer() {
  const chip = $("me-server");
  const s = demo.server;
  chip.textContent = s ? `${s.id} · ${s.region}` : "—";
  chip.style.setProperty("--c", s ? color(s.region) : "var(--line)");
  render();
}

function setStep(i, cls) {
  for (const el of document.querySelectorAll(".step")) {
    const n = Number(el.dataset.step);
    if (i === -1) el.className = "step";
    else if (n === i) el.className = `step ${cls}`;
  }
}

let bannerTimer = null;
function showBanner(e) {
  demo.banners.push({ at: performance.now(), from: e.from.id, to: e.to.id, reason: e.reason });
  $("banner-text").textContent = e.message;
  $("banner-detail").textContent = `(${e.from.id} → ${e.to.id}, ${e.reason})`;
  $("banner").hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => {
    $("banner").hidden = true;
  }, 20000);
}
$("banner-close").addEventListener("click", () => {
  $("banner").hidden = true;
});

function makeClient() {
  const client = new TetherClient({
    globalUrl,
    reconnectWait: state?.reconnectWaitMs ?? 5000,
    maxReconnectAttempts: 1000,
    requestTimeout: 8000,
  });
  client.on("loggedin", (e) => {
    demo.server = e.server;
    demo.loggedIn = true;
    addFeed("you", e.server.region, `this page logged in as ${USER}, locked to ${e.server.id}`);
    showServer();
  });
  client.on("refreshed", (e) => {
    demo.server = e.server;
    showServer();
  });
  client.on("serverchanged", (e) => {
    demo.server = e.to;
    showBanner(e);
    addFeed("you", e.to.region, `this page moved ${e.from.id} → ${e.to.id} (${e.reason})`);
    showServer();
  });
  client.on("relocked", (e) => {
    demo.server = e.to;
    showServer();
  });
  client.on("reconnecting", (e) => {
    if (!demo.countdowns.length || demo.countdowns.at(-1).ended) {
      demo.countdowns.push({ at: performance.now(), ended: null, seconds: [] });
      addFeed("you", null, `nothing answers: "Reconnecting…" for ${Math.round(e.waitMs / 1000)} s`);
    }
    demo.countdowns.at(-1).seconds.push(e.secondsLeft);
    $("countdown-secs").textContent = `${e.secondsLeft} s`;
    $("countdown-sub").textContent = `attempt ${e.attempt}: no server answers; trying again when the timer ends`;
    $("countdown").hidden = false;
  });
  client.on("reconnected", (e) => {
    const c = demo.countdowns.at(-1);
    if (c && !c.ended) c.ended = performance.now();
    $("countdown").hidden = true;
    if (e.server) {
      demo.server = e.server;
      addFeed("you", e.server.region, `reconnected to ${e.server.id}`);
    }
    showServer();
  });
  client.on("signedout", (e) => {
    demo.signedOut.push({ at: performance.now(), reason: e.reason });
    demo.loggedIn = false;
    addFeed("error", null, `this page was signed out (${e.reason})`);
  });
  return client;
}

async function step(client, i, path, body) {
  setStep(i, "run");
  const r = await client.post(path, body);
  if (!r.ok) {
    setStep(i, "bad");
    throw new Error(`${path}: ${r.status}`);
  }
  setStep(i, "ok");
  return r.json();
}

function remember(server, restarted) {
  const el = document.createElement("span");
  el.style.setProperty("--c", color(server?.region));
  el.title = `${server?.id}${restarted ? " (after a restart)" : ""}`;
  if (restarted) el.className = "restart";
  const h = $("me-history");
  h.appendChild(el);
  while (h.childElementCount > 60) h.firstElementChild.remove();
}

async function workflows(client) {
  let restarted = false;
  for (;;) {
    if (paused) {
      await sleep(300);
      continue;
    }
    const home = client.server?.id;
    try {
      const done = await client.critical(async () => {
        setStep(-1);
        const order = await step(client, 0, "/orders", { userId: USER });
        $("me-order").textContent = `order ${order.orderId}`;
        for (const [i, path, body] of [
          [1, `/orders/${order.orderId}/items`, { sku: "book", qty: 1 }],
          [2, `/orders/${order.orderId}/checkout`, {}],
        ]) {
          await sleep(350);
          // The server died under the workflow: start over on the new one
          // (the earlier writes reach it by replication).
          if (client.server?.id !== home) return false;
          await step(client, i, path, body);
        }
        return client.server?.id === home;
      });
      if (done) {
        demo.workflows.push({ at: performance.now(), server: home, restarted });
        $("me-done").textContent = String(demo.workflows.length);
        remember(client.server, restarted);
        restarted = false;
      } else {
        restarted = true;
        addFeed("you", client.server?.region, `workflow restarted on ${client.server?.id}`);
      }
    } catch (e) {
      demo.errors.push({ at: performance.now(), error: String(e?.message ?? e) });
      addFeed("error", null, `workflow: ${e?.message ?? e}`);
      restarted = true;
      await sleep(1000);
    }
    await sleep(700);
  }
}

async function main() {
  $("me-user").textContent = USER;
  for (const code of ["eu", "us", "ap"]) {
    const o = document.createElement("option");
    o.value = code;
    o.textContent = code.toUpperCase();
    o.selected = code === near;
    $("me-near").appendChild(o);
  }
  $("me-near").addEventListener("change", (e) => {
    near = e.target.value;
  });
  $("me-pause").addEventListener("click", () => {
    paused = !paused;
    $("me-pause").textContent = paused ? "Resume" : "Pause";
  });
  $("me-pause").textContent = paused ? "Resume" : "Pause";
  await poll();
  pollLoop();
  const client = makeClient();
  demo.client = client;
  $("retry-now").addEventListener("click", () => client.reconnectNow());
  // Another tab of this browser may already hold the session.
  for (;;) {
    try {
      if (await client.restore()) {
        demo.server = client.server;
        demo.loggedIn = true;
        addFeed("you", client.server?.region, `joined the session of another tab (${client.server?.id})`);
        showServer();
      } else {
        await client.login({ username: USER, password: "demo" });
      }
      break;
    } catch (e) {
      demo.errors.push({ at: performance.now(), error: `login: ${e?.message ?? e}` });
      addFeed("error", null, `login failed: ${e?.message ?? e}`);
      await sleep(2000);
    }
  }
  workflows(client);
}

main();
