// Several tabs of one user: one refresh between them (a shared lock and a
// tab channel), the others adopt its tokens. The fake proxy revokes the
// family on any refresh-token reuse (no grace window unless a test sets
// one), so a race would sign the tabs out.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { memoryStorage, SERVER_CHANGED_MESSAGE, sessionKey } from "../src/tether.js";
import {
  ChannelHub,
  countingLocks,
  FakeClock,
  FakeCluster,
  flush,
  GLOBAL,
  ofType,
  tab,
  token,
} from "./fakes.js";

function appCalls(cluster: FakeCluster, path: string) {
  return cluster.calls.filter((c) => new URL(c.url).pathname === path);
}

function tabs(n: number) {
  const clock = new FakeClock();
  const cluster = new FakeCluster(clock);
  const hub = new ChannelHub();
  const locks = countingLocks();
  const all = Array.from({ length: n }, () =>
    tab(cluster, clock, { channel: hub.channel(), locks }),
  );
  return { clock, cluster, hub, locks, tabs: all };
}

describe("tabs of one user", () => {
  it("a new tab takes over the session of an open one, without a login", async () => {
    const {
      tabs: [a, b],
      cluster,
    } = tabs(2);
    assert.ok(a && b);
    await a.client.login({ username: "alice" });
    assert.equal(await b.client.restore(), true);
    assert.deepEqual(b.client.currentSession, a.client.currentSession);
    assert.equal(cluster.count("POST", "/auth/login"), 1);
    const res = await b.client.get("/x");
    assert.equal(res.status, 200);
  });

  it("restore() without another tab or a stored session leaves the tab logged out", async () => {
    const {
      tabs: [a],
      clock,
    } = tabs(1);
    assert.ok(a);
    const p = a.client.restore();
    await clock.advance(300);
    assert.equal(await p, false);
    assert.equal(a.client.loggedIn, false);
  });

  it("restore() takes a stored session first", async () => {
    const clock = new FakeClock();
    const cluster = new FakeCluster(clock);
    const storage = memoryStorage();
    const a = tab(cluster, clock, { storage });
    await a.client.login({});
    const b = tab(cluster, clock, { storage });
    assert.equal(await b.client.restore(), true);
    assert.equal(b.client.currentSession?.refreshToken, a.client.currentSession?.refreshToken);
  });

  it("two tabs due at once: exactly one refresh, both end with its tokens", async () => {
    const {
      tabs: [a, b],
      cluster,
      clock,
      locks,
    } = tabs(2);
    assert.ok(a && b);
    await a.client.login({});
    await b.client.restore();
    const before = a.client.currentSession?.refreshToken;
    // Both timers fire at 80 s.
    await clock.advance(80_000);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    assert.equal(locks.grants.length, 2, "the second tab took the lock, then found fresh tokens");
    assert.equal(new Set(locks.grants).size, 1, "one lock name for the family");
    const sa = a.client.currentSession;
    const sb = b.client.currentSession;
    assert.notEqual(sa?.refreshToken, before);
    assert.deepEqual(sa, sb);
    assert.equal(ofType(a, "signedout").length + ofType(b, "signedout").length, 0);
    const fromTab = [...ofType(a, "refreshed"), ...ofType(b, "refreshed")].map((e) => e.fromTab);
    assert.deepEqual(fromTab.sort(), [false, true]);
    // Both keep working, and keep sharing one refresh a lifetime later.
    assert.equal((await a.client.get("/x")).status, 200);
    assert.equal((await b.client.get("/y")).status, 200);
    await clock.advance(80_000);
    assert.equal(cluster.count("POST", "/auth/refresh"), 2);
    assert.deepEqual(a.client.currentSession, b.client.currentSession);
  });

  it("three tabs whose server died at once: one refresh, all move", async () => {
    const { tabs: all, cluster } = tabs(3);
    const [a] = all;
    assert.ok(a);
    await a.client.login({});
    for (const t of all.slice(1)) await t.client.restore();
    cluster.server("eu-1").up = false;
    const answers = await Promise.all(all.map((t, i) => t.client.post(`/step/${i}`, {})));
    assert.deepEqual(
      answers.map((r) => r.status),
      [200, 200, 200],
    );
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    for (const t of all) {
      assert.equal(t.client.server?.id, "eu-2");
      assert.equal(
        ofType<{ message: string }>(t, "serverchanged")[0]?.message,
        SERVER_CHANGED_MESSAGE,
      );
      assert.equal(ofType(t, "signedout").length, 0);
    }
  });

  it("with the channel message late, the proxy's grace window keeps both tabs signed in", async () => {
    const {
      tabs: [a, b],
      cluster,
      clock,
      hub,
    } = tabs(2);
    assert.ok(a && b);
    await a.client.login({});
    await b.client.restore();
    hub.delivery = "immediate";
    cluster.graceMs = 10_000;
    await clock.advance(80_000);
    await flush();
    const n = cluster.count("POST", "/auth/refresh");
    assert.ok(n >= 1 && n <= 2, `${n} refreshes`);
    assert.equal(a.client.currentSession?.accessToken, b.client.currentSession?.accessToken);
    assert.equal(ofType(a, "signedout").length + ofType(b, "signedout").length, 0);
  });

  it("a refresh that crossed another tab's message resolves with the shared tokens", async () => {
    const clock = new FakeClock();
    const cluster = new FakeCluster(clock);
    const hub = new ChannelHub();
    const locks = countingLocks();
    const a = tab(cluster, clock, { channel: hub.channel(), locks });
    // The message of A's refresh reaches B only once B's own refresh is on
    // its way (the lock came first): what two real tabs did in Chromium.
    const b = tab(cluster, clock, {
      channel: hub.channel(),
      locks,
      fetch: async (input, init) => {
        if (new URL(String(input)).pathname === "/auth/refresh") hub.release();
        return cluster.fetch(input, init);
      },
    });
    await a.client.login({});
    await b.client.restore();
    await flush();
    cluster.graceMs = 10_000;
    hub.delivery = "held";
    await a.client.refresh();
    const r = await b.client.refresh();
    await flush();
    assert.equal(cluster.count("POST", "/auth/refresh"), 2, "B sent the rotated token");
    assert.equal(r.server.id, a.client.server?.id);
    assert.equal(a.client.currentSession?.refreshToken, b.client.currentSession?.refreshToken);
    assert.equal(ofType(a, "signedout").length + ofType(b, "signedout").length, 0);
  });

  it("a tab counting down goes on at once when another tab got through", async () => {
    const clock = new FakeClock();
    const cluster = new FakeCluster(clock);
    const hub = new ChannelHub();
    const locks = countingLocks();
    const a = tab(cluster, clock, { channel: hub.channel(), locks });
    // Tab b cannot reach the global URL (say, a flaky extension or route).
    const bFetch: typeof fetch = (input, init) =>
      String(input).startsWith(GLOBAL)
        ? Promise.reject(new TypeError("fetch failed"))
        : cluster.fetch(input, init);
    const b = tab(cluster, clock, { channel: hub.channel(), locks, fetch: bFetch });
    await a.client.login({});
    await b.client.restore();
    cluster.server("eu-1").up = false;
    let done: Response | null = null;
    const p = b.client.get("/x").then((r) => {
      done = r;
    });
    await clock.advance(2_000);
    assert.equal(b.client.reconnecting, true);
    assert.equal(done, null);
    assert.equal((await a.client.get("/y")).status, 200);
    await clock.advance(0);
    await p;
    assert.equal(done === null ? 0 : (done as Response).status, 200);
    assert.equal(appCalls(cluster, "/x").at(-1)?.url, "http://eu-2.test/x");
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    assert.deepEqual(ofType(b, "reconnected"), [{ server: cluster.summary("eu-2"), attempts: 1 }]);
    assert.equal(ofType(b, "serverchanged").length, 1);
  });

  it("a critical task in one tab is sent by the tab that refreshes", async () => {
    const {
      tabs: [a, b],
      cluster,
      clock,
    } = tabs(2);
    assert.ok(a && b);
    await a.client.login({});
    await b.client.restore();
    cluster.placeNext = "us-1";
    let release: () => void = () => {};
    const task = b.client.critical(
      () =>
        new Promise<void>((resolve) => {
          release = resolve;
        }),
    );
    await flush();
    await a.client.refresh();
    const flags = cluster
      .find("POST", "/auth/refresh")
      .map((c) => (c.json as Record<string, unknown>).criticalTaskInProgress);
    assert.deepEqual(flags, [true]);
    assert.equal(a.client.server?.id, "eu-1", "kept for the critical task");
    release();
    await task;
    await flush();
    cluster.placeNext = "us-1";
    await a.client.refresh();
    await clock.advance(0);
    assert.equal(b.client.server?.id, "us-1");
    assert.equal(ofType(b, "serverchanged").length, 1);
  });

  it("logout in one tab signs the others out", async () => {
    const {
      tabs: [a, b],
    } = tabs(2);
    assert.ok(a && b);
    await a.client.login({});
    await b.client.restore();
    await a.client.logout();
    await flush();
    assert.deepEqual(ofType(a, "signedout"), [{ reason: "logout" }]);
    assert.deepEqual(ofType(b, "signedout"), [{ reason: "other-tab" }]);
    assert.equal(b.client.loggedIn, false);
  });

  it("tabs of different sessions do not adopt each other's tokens", async () => {
    const {
      tabs: [a],
      cluster,
      clock,
      hub,
      locks,
    } = tabs(1);
    assert.ok(a);
    const other = {
      accessToken: token({ sub: "bob", fam: "fam-2" }),
      refreshToken: token({ sub: "bob", fam: "fam-2", typ: "rt" }),
      expiresIn: 100,
      obtainedAt: clock.now(),
      server: cluster.summary("us-1"),
    };
    assert.notEqual(
      sessionKey(other),
      sessionKey({ ...other, refreshToken: token({ fam: "fam-1" }) }),
    );
    const storage = memoryStorage();
    storage.save(other);
    const b = tab(cluster, clock, { channel: hub.channel(), locks, storage });
    assert.equal(await b.client.restore(), true);
    await a.client.login({});
    await a.client.refresh();
    await flush();
    assert.deepEqual(b.client.currentSession, other);
    assert.equal(ofType(b, "refreshed").length, 0);
  });
});
