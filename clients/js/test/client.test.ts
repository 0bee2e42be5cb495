// The client's protocol and retry rules, against the fake cluster and a
// fake clock: nothing here waits for real time.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  newIdempotencyKey,
  SERVER_CHANGED_MESSAGE,
  sfString,
  TetherClient,
  TetherError,
} from "../src/tether.js";
import { type Call, FakeClock, FakeCluster, flush, GLOBAL, ofType, tab } from "./fakes.js";

function setup(extra: Parameters<typeof tab>[2] = {}) {
  const clock = new FakeClock();
  const cluster = new FakeCluster(clock);
  const t = tab(cluster, clock, extra);
  return { clock, cluster, t, client: t.client };
}

async function loggedIn(extra: Parameters<typeof tab>[2] = {}) {
  const s = setup(extra);
  await s.client.login({ username: "alice", password: "demo" });
  return s;
}

function appCalls(cluster: FakeCluster, path: string): Call[] {
  return cluster.calls.filter((c) => new URL(c.url).pathname === path);
}

async function rejection(p: Promise<unknown>): Promise<TetherError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TetherError, `expected a TetherError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a rejection");
}

describe("login and requests", () => {
  it("locks to the server in the Tether headers and sends requests there with the token", async () => {
    const { client, cluster, t } = setup();
    const login = await client.login({ username: "alice", password: "demo" });
    assert.deepEqual(login.server, cluster.summary("eu-1"));
    assert.equal(login.expiresIn, 100);
    assert.deepEqual(await login.response.json(), { userId: "alice" });
    const [loginCall] = cluster.find("POST", "/auth/login");
    assert.equal(loginCall?.url, `${GLOBAL}/auth/login`);
    assert.deepEqual(loginCall?.json, { username: "alice", password: "demo" });
    assert.equal(ofType(t, "loggedin").length, 1);

    const res = await client.get("/orders/1");
    assert.equal(res.status, 200);
    const [call] = appCalls(cluster, "/orders/1");
    assert.equal(call?.url, "http://eu-1.test/orders/1");
    assert.equal(
      call?.headers.get("Authorization"),
      `Bearer ${client.currentSession?.accessToken}`,
    );
    assert.equal(call?.headers.get("Idempotency-Key"), null, "GET carries no key");
  });

  it("gives writes an Idempotency-Key as a quoted Structured Fields string", async () => {
    const { client, cluster } = await loggedIn();
    await client.post("/orders", { sku: "book" });
    await client.patch("/orders/1", { qty: 2 });
    await client.post("/orders", { sku: "pen" });
    const keys = [...appCalls(cluster, "/orders"), ...appCalls(cluster, "/orders/1")].map((c) =>
      c.headers.get("Idempotency-Key"),
    );
    assert.equal(keys.length, 3);
    for (const k of keys) {
      assert.match(
        k ?? "",
        /^"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"$/,
      );
    }
    assert.equal(new Set(keys).size, 3, "one fresh key per logical request");
    const [first] = appCalls(cluster, "/orders");
    assert.equal(first?.headers.get("Content-Type"), "application/json");
    assert.deepEqual(first?.json, { sku: "book" });
  });

  it("sends no key with idempotency off, and the caller's own key when given", async () => {
    const { client, cluster } = await loggedIn({ idempotency: false });
    await client.post("/a", {});
    await client.post("/b", {}, { idempotencyKey: 'my "key"' });
    assert.equal(appCalls(cluster, "/a")[0]?.headers.get("Idempotency-Key"), null);
    assert.equal(appCalls(cluster, "/b")[0]?.headers.get("Idempotency-Key"), '"my \\"key\\""');
  });

  it("reports a login answer without the Tether headers, and a refused login", async () => {
    const { client, cluster } = setup();
    cluster.hook = (c) =>
      c.url.endsWith("/auth/login") ? Response.json({ userId: "alice" }) : undefined;
    const e = await rejection(client.login({}));
    assert.equal(e.kind, "bad_answer");
    assert.match(e.message, /Tether-Access-Token/);
    cluster.hook = (c) =>
      c.url.endsWith("/auth/login")
        ? Response.json({ error: "bad_credentials" }, { status: 401 })
        : undefined;
    const refused = await rejection(client.login({}));
    assert.equal(refused.kind, "status");
    assert.equal(refused.status, 401);
    assert.deepEqual(refused.body, { error: "bad_credentials" });
    assert.equal(client.loggedIn, false);
    await assert.rejects(client.get("/x"), (err: TetherError) => err.kind === "not_logged_in");
  });

  it("returns the app's own errors untouched, without retrying", async () => {
    const { client, cluster } = await loggedIn();
    cluster.hook = (c) => {
      if (c.url.endsWith("/boom")) return Response.json({ error: "oops" }, { status: 500 });
      if (c.url.endsWith("/busy")) {
        return Response.json(
          { error: "upstream_unavailable" },
          { status: 503, headers: { "Retry-After": "30" } },
        );
      }
      if (c.url.endsWith("/denied")) {
        return Response.json({ error: "forbidden" }, { status: 401 });
      }
      return undefined;
    };
    assert.equal((await client.post("/boom", {})).status, 500);
    assert.equal((await client.get("/busy")).status, 503);
    assert.equal((await client.get("/denied")).status, 401);
    assert.equal(appCalls(cluster, "/boom").length, 1);
    assert.equal(appCalls(cluster, "/busy").length, 1);
    assert.equal(appCalls(cluster, "/denied").length, 1);
    assert.equal(cluster.count("POST", "/auth/refresh"), 0);
  });
});

describe("retry rules", () => {
  it("421 + Tether-Relock: re-sends to that URL with the same key, once", async () => {
    const { client, cluster, t } = await loggedIn();
    cluster.hook = (c) => {
      if (c.url === "http://eu-1.test/orders") {
        return Response.json(
          { error: "wrong_server", lockedServer: cluster.summary("eu-2") },
          { status: 421, headers: { "Tether-Relock": "http://eu-2.test" } },
        );
      }
      if (c.url === "http://eu-2.test/orders") return Response.json({ ok: true });
      return undefined;
    };
    const res = await client.post("/orders", { sku: "book" });
    assert.equal(res.status, 200);
    const calls = appCalls(cluster, "/orders");
    assert.deepEqual(
      calls.map((c) => c.url),
      ["http://eu-1.test/orders", "http://eu-2.test/orders"],
    );
    assert.equal(
      calls[0]?.headers.get("Idempotency-Key"),
      calls[1]?.headers.get("Idempotency-Key"),
    );
    assert.equal(calls[1]?.body, calls[0]?.body);
    assert.deepEqual(client.server, cluster.summary("eu-2"));
    assert.deepEqual(ofType(t, "relocked"), [
      { fromUrl: "http://eu-1.test", to: cluster.summary("eu-2") },
    ]);
    assert.equal(cluster.count("POST", "/auth/refresh"), 0);

    // A second 421 within one call is the caller's.
    cluster.hook = (c) =>
      c.url.endsWith("/again")
        ? Response.json(
            { error: "wrong_server" },
            { status: 421, headers: { "Tether-Relock": "http://us-1.test" } },
          )
        : undefined;
    const again = await client.get("/again");
    assert.equal(again.status, 421);
    assert.equal(appCalls(cluster, "/again").length, 2);
  });

  it("503 + Tether-Relock: refresh: refreshes naming the server, re-sends with the same key", async () => {
    const { client, cluster, t } = await loggedIn();
    const rt = client.currentSession?.refreshToken;
    let answered = false;
    cluster.hook = (c) => {
      if (c.url === "http://eu-1.test/orders" && !answered) {
        answered = true;
        cluster.server("eu-1").up = false;
        return Response.json(
          { error: "server_unavailable", action: "refresh" },
          { status: 503, headers: { "Tether-Relock": "refresh", "Retry-After": "1" } },
        );
      }
      return undefined;
    };
    const res = await client.post("/orders", { sku: "book" });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ok: true, served: "eu-2", path: "/orders" });
    const [closest] = cluster.find("GET", "/closestToMe");
    assert.equal(closest?.url, `${GLOBAL}/closestToMe`);
    const [refresh] = cluster.find("POST", "/auth/refresh");
    assert.equal(refresh?.url, `${GLOBAL}/auth/refresh`);
    assert.deepEqual(refresh?.json, {
      refreshToken: rt,
      criticalTaskInProgress: false,
      closestServerId: "eu-1",
      unreachableServerId: "eu-1",
    });
    const calls = appCalls(cluster, "/orders");
    assert.deepEqual(
      calls.map((c) => c.url),
      ["http://eu-1.test/orders", "http://eu-2.test/orders"],
    );
    assert.equal(
      calls[0]?.headers.get("Idempotency-Key"),
      calls[1]?.headers.get("Idempotency-Key"),
    );
    assert.notEqual(calls[0]?.headers.get("Authorization"), calls[1]?.headers.get("Authorization"));
    assert.deepEqual(ofType(t, "serverchanged"), [
      {
        message: SERVER_CHANGED_MESSAGE,
        from: cluster.summary("eu-1"),
        to: cluster.summary("eu-2"),
        reason: "server_down",
      },
    ]);
    assert.equal(
      SERVER_CHANGED_MESSAGE,
      "Your primary server has changed. Any missing data will be synced within 5 minutes.",
    );
    assert.equal(ofType(t, "reconnecting").length, 0);
  });

  it("401 invalid_token from the proxy: refreshes once and re-sends", async () => {
    const { client, cluster } = await loggedIn();
    let once = true;
    cluster.hook = (c) => {
      if (c.url.endsWith("/me") && once) {
        once = false;
        return Response.json(
          { error: "invalid_token", detail: "expired" },
          { status: 401, headers: { "WWW-Authenticate": 'Bearer error="invalid_token"' } },
        );
      }
      return undefined;
    };
    const res = await client.get("/me");
    assert.equal(res.status, 200);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    const refresh = cluster.find("POST", "/auth/refresh")[0]?.json as Record<string, unknown>;
    assert.equal(refresh.unreachableServerId, undefined);
  });

  it("connection failure: refreshes through the global URL with unreachableServerId, re-sends", async () => {
    const { client, cluster, t } = await loggedIn();
    cluster.server("eu-1").up = false;
    const res = await client.post("/orders", { sku: "book" });
    assert.equal(res.status, 200);
    const calls = appCalls(cluster, "/orders");
    assert.deepEqual(
      calls.map((c) => c.url),
      ["http://eu-1.test/orders", "http://eu-2.test/orders"],
    );
    assert.equal(
      calls[0]?.headers.get("Idempotency-Key"),
      calls[1]?.headers.get("Idempotency-Key"),
    );
    const refresh = cluster.find("POST", "/auth/refresh")[0]?.json as Record<string, unknown>;
    assert.equal(refresh.unreachableServerId, "eu-1");
    assert.equal(ofType(t, "serverchanged").length, 1);
    assert.equal(ofType(t, "reconnecting").length, 0, "no wait when the refresh got through");
  });

  it("when nothing answers: a 30 s countdown, a tick a second, then a refresh again", async () => {
    const { client, cluster, clock, t } = await loggedIn();
    cluster.server("eu-1").up = false;
    cluster.globalUp = false;
    const start = clock.now();
    let result: Response | null = null;
    const p = client.post("/orders", { sku: "book" }).then((r) => {
      result = r;
    });
    await clock.advance(0);
    assert.equal(client.reconnecting, true);
    assert.deepEqual(ofType<{ secondsLeft: number }>(t, "reconnecting"), [
      { secondsLeft: 30, attempt: 1, waitMs: 30_000 },
    ]);
    const refreshAttempts = () => cluster.count("GET", "/closestToMe");
    assert.equal(refreshAttempts(), 1);

    await clock.advance(29_999);
    const ticks = ofType<{ secondsLeft: number }>(t, "reconnecting").map((e) => e.secondsLeft);
    assert.deepEqual(
      ticks,
      Array.from({ length: 30 }, (_, i) => 30 - i),
    );
    assert.equal(refreshAttempts(), 1, "no refresh during the wait");
    assert.equal(result, null);

    cluster.globalUp = true;
    await clock.advance(1);
    await p;
    assert.equal(clock.now() - start, 30_000);
    assert.equal(result === null ? 0 : (result as Response).status, 200);
    assert.equal(refreshAttempts(), 2);
    const calls = appCalls(cluster, "/orders");
    assert.equal(calls.at(-1)?.url, "http://eu-2.test/orders");
    assert.equal(new Set(calls.map((c) => c.headers.get("Idempotency-Key"))).size, 1);
    assert.equal(client.reconnecting, false);
    assert.deepEqual(ofType(t, "reconnected"), [{ server: cluster.summary("eu-2"), attempts: 1 }]);
    assert.equal(ofType(t, "serverchanged").length, 1);
  });

  it("adds jitter to the wait and counts down from the rounded-up seconds", async () => {
    const { client, cluster, clock, t } = await loggedIn({
      random: () => 0.5,
      reconnectJitter: 0.1,
    });
    cluster.server("eu-1").up = false;
    cluster.globalUp = false;
    const p = client.get("/x");
    await clock.advance(0);
    assert.deepEqual(ofType(t, "reconnecting")[0], { secondsLeft: 32, attempt: 1, waitMs: 31_500 });
    await clock.advance(31_499);
    assert.equal(cluster.count("GET", "/closestToMe"), 1);
    const last = ofType<{ secondsLeft: number }>(t, "reconnecting").at(-1);
    assert.equal(last?.secondsLeft, 1);
    cluster.globalUp = true;
    await clock.advance(1);
    assert.equal((await p).status, 200);
    assert.equal(cluster.count("GET", "/closestToMe"), 2);
  });

  it("gives up with no_server_available after maxReconnectAttempts waits", async () => {
    const { client, cluster, clock, t } = await loggedIn({ maxReconnectAttempts: 2 });
    cluster.server("eu-1").up = false;
    cluster.globalUp = false;
    const p = rejection(client.get("/x"));
    await clock.advance(61_000);
    const e = await p;
    assert.equal(e.kind, "no_server_available");
    assert.equal(ofType(t, "reconnecting").filter((r) => r.secondsLeft === 30).length, 2);
    assert.equal(cluster.count("GET", "/closestToMe"), 3);
  });

  it("reconnectNow() ends the wait early", async () => {
    const { client, cluster, clock } = await loggedIn();
    cluster.server("eu-1").up = false;
    cluster.globalUp = false;
    const p = client.get("/x");
    await clock.advance(5_000);
    cluster.globalUp = true;
    client.reconnectNow();
    await flush();
    assert.equal((await p).status, 200);
  });

  it("requests in flight together share one refresh and one countdown", async () => {
    const { client, cluster, clock, t } = await loggedIn();
    cluster.server("eu-1").up = false;
    const [a, b, c] = await Promise.all([
      client.get("/a"),
      client.get("/b"),
      client.post("/c", {}),
    ]);
    assert.deepEqual([a.status, b.status, c.status], [200, 200, 200]);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);

    cluster.server("eu-2").up = false;
    cluster.globalUp = false;
    const all = Promise.all([client.get("/d"), client.get("/e")]);
    await clock.advance(0);
    assert.equal(ofType(t, "reconnecting").length, 1, "one countdown for both calls");
    cluster.globalUp = true;
    await clock.advance(30_000);
    const [d, e] = await all;
    assert.deepEqual([d.status, e.status], [200, 200]);
    assert.equal(cluster.count("POST", "/auth/refresh"), 2);
  });
});

describe("refresh", () => {
  it("refreshes on a timer when 20% of the token's lifetime is left, after /closestToMe", async () => {
    const { client, cluster, clock, t } = await loggedIn();
    const first = client.currentSession?.accessToken;
    await clock.advance(79_999);
    assert.equal(cluster.count("POST", "/auth/refresh"), 0);
    await clock.advance(1);
    assert.equal(cluster.count("GET", "/closestToMe"), 1);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    const body = cluster.find("POST", "/auth/refresh")[0]?.json as Record<string, unknown>;
    assert.equal(body.closestServerId, "eu-1");
    assert.equal(body.criticalTaskInProgress, false);
    assert.equal("unreachableServerId" in body, false);
    assert.notEqual(client.currentSession?.accessToken, first);
    assert.deepEqual(ofType(t, "refreshed")[0], {
      server: cluster.summary("eu-1"),
      serverChanged: false,
      reason: "kept",
      cause: "expiry",
      fromTab: false,
    });
    assert.equal(ofType(t, "serverchanged").length, 0);
    // And again, 80 s after the new token arrived.
    await clock.advance(79_999);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    await clock.advance(1);
    assert.equal(cluster.count("POST", "/auth/refresh"), 2);
  });

  it("without the timer, refreshes before a request once the margin is reached", async () => {
    const { client, cluster, clock } = await loggedIn({ autoRefresh: false });
    assert.equal(clock.pending(), 0);
    await clock.advance(85_000);
    assert.equal(cluster.count("POST", "/auth/refresh"), 0);
    const res = await client.get("/x");
    assert.equal(res.status, 200);
    assert.equal(cluster.count("POST", "/auth/refresh"), 1);
    const i = cluster.calls.findIndex((c) => c.url.endsWith("/auth/refresh"));
    const j = cluster.calls.findIndex((c) => c.url.endsWith("/x"));
    assert.ok(i < j, "the refresh came first");
  });

  it("a region move through refresh emits serverchanged with the seed's message", async () => {
    const { client, cluster, t } = await loggedIn();
    cluster.closest = "us-1";
    cluster.placeNext = "us-1";
    const r = await client.refresh();
    assert.deepEqual(r, {
      server: cluster.summary("us-1"),
      serverChanged: true,
      reason: "moved_region",
    });
    assert.equal(
      ofType<{ message: string }>(t, "serverchanged")[0]?.message,
      SERVER_CHANGED_MESSAGE,
    );
    await client.get("/x");
    assert.equal(appCalls(cluster, "/x")[0]?.url, "http://us-1.test/x");
  });

  it("a refused refresh token signs out", async () => {
    const { client, cluster, t } = await loggedIn();
    // Revoked elsewhere (e.g. logout on another device).
    await cluster.fetch(`${GLOBAL}/auth/logout`, { method: "POST" });
    const e = await rejection(client.refresh());
    assert.equal(e.kind, "session_expired");
    assert.equal(e.status, 401);
    assert.deepEqual(ofType(t, "signedout"), [{ reason: "expired" }]);
    assert.equal(client.loggedIn, false);
    const after = await rejection(client.get("/x"));
    assert.equal(after.kind, "not_logged_in");
  });

  it("a refused refresh during a request signs out and rejects the request", async () => {
    const { client, cluster, t } = await loggedIn();
    await cluster.fetch(`${GLOBAL}/auth/logout`, { method: "POST" });
    cluster.server("eu-1").up = false;
    const e = await rejection(client.post("/orders", {}));
    assert.equal(e.kind, "session_expired");
    assert.equal(ofType(t, "signedout").length, 1);
  });

  it("logout revokes the family and signs out", async () => {
    const { client, cluster, clock, t } = await loggedIn();
    const rt = client.currentSession?.refreshToken;
    await client.logout();
    assert.deepEqual(cluster.find("POST", "/auth/logout")[0]?.json, { refreshToken: rt });
    assert.deepEqual(ofType(t, "signedout"), [{ reason: "logout" }]);
    assert.equal(client.loggedIn, false);
    assert.equal(clock.pending(), 0, "no refresh timer left");
  });
});

describe("critical tasks", () => {
  it("count nesting, send criticalTaskInProgress while any runs, and end on a throw", async () => {
    const { client, cluster } = await loggedIn();
    const flags = () =>
      cluster
        .find("POST", "/auth/refresh")
        .map((c) => (c.json as Record<string, unknown>).criticalTaskInProgress);
    assert.equal(client.criticalTasks, 0);
    const v = await client.critical(async () => {
      assert.equal(client.criticalTasks, 1);
      await client.critical(async () => {
        assert.equal(client.criticalTasks, 2);
        await client.refresh();
      });
      assert.equal(client.criticalTasks, 1);
      await client.refresh();
      return 42;
    });
    assert.equal(v, 42);
    assert.equal(client.criticalTasks, 0);
    await client.refresh();
    assert.deepEqual(flags(), [true, true, false]);

    await assert.rejects(
      client.critical(async () => {
        throw new Error("step failed");
      }),
      /step failed/,
    );
    assert.equal(client.criticalTasks, 0);
  });

  it("keep the server when the proxy would move it", async () => {
    const { client, cluster } = await loggedIn();
    cluster.placeNext = "us-1";
    const r = await client.critical(() => client.refresh());
    assert.equal(r.server.id, "eu-1");
    assert.equal(r.reason, "critical_task");
  });
});

describe("helpers", () => {
  it("sfString quotes and escapes; keys are fresh UUIDs", () => {
    assert.equal(sfString("abc"), '"abc"');
    assert.equal(sfString('a"b\\c'), '"a\\"b\\\\c"');
    assert.throws(() => sfString("é"), TetherError);
    assert.notEqual(newIdempotencyKey(), newIdempotencyKey());
  });

  it("rejects bad settings", () => {
    assert.throws(() => new TetherClient({ globalUrl: "ftp://x" }), TetherError);
    assert.throws(
      () => new TetherClient({ globalUrl: GLOBAL, refreshMargin: 1, channel: null }),
      TetherError,
    );
  });
});
