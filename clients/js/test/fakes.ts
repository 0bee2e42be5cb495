// Fakes for the client's tests: a clock that only moves when told, a tab
// channel hub, a counting lock manager, and a small fake tether cluster
// behind a fake `fetch` (global URL, servers that can die, token rotation
// with reuse detection).

import {
  type ChannelLike,
  type ClientOptions,
  type Clock,
  type LockManagerLike,
  localLocks,
  TetherClient,
} from "../src/tether.js";

/** Lets pending promises, immediates and channel messages run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 30; i++) await new Promise<void>((r) => setImmediate(r));
}

export class FakeClock implements Clock {
  t = 1_800_000_000_000;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    this.seq += 1;
    this.timers.set(this.seq, { at: this.t + Math.max(0, ms), fn });
    return this.seq;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time forward by `ms`, running each timer at its time. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let next: [number, { at: number; fn: () => void }] | null = null;
      for (const entry of this.timers) {
        if (entry[1].at <= end && (next === null || entry[1].at < next[1].at)) next = entry;
      }
      if (next === null) break;
      // Every timer due at that instant fires before any of them goes on
      // (two tabs' timers really do overlap).
      const at = next[1].at;
      this.t = at;
      const due = [...this.timers].filter(([, v]) => v.at === at).sort(([x], [y]) => x - y);
      for (const [id, v] of due) {
        this.timers.delete(id);
        v.fn();
      }
    }
    this.t = end;
    await flush();
  }

  pending(): number {
    return this.timers.size;
  }
}

/** BroadcastChannel semantics: a message goes to every other member, later. */
export class ChannelHub {
  private readonly members = new Set<FakeChannel>();
  /** "microtask", "immediate" (a later macrotask) or "held" (until {@link release}). */
  delivery: "microtask" | "immediate" | "held" = "microtask";
  posted: unknown[] = [];
  private held: (() => void)[] = [];

  /** Delivers the messages held so far, now. */
  release(): void {
    const due = this.held;
    this.held = [];
    for (const d of due) d();
  }

  channel(): FakeChannel {
    const c = new FakeChannel(this);
    this.members.add(c);
    return c;
  }

  send(from: FakeChannel, data: unknown): void {
    this.posted.push(data);
    const copy: unknown = structuredClone(data);
    for (const m of this.members) {
      if (m === from) continue;
      if (this.delivery === "microtask") queueMicrotask(() => m.deliver(copy));
      else if (this.delivery === "held") this.held.push(() => m.deliver(copy));
      else setImmediate(() => m.deliver(copy));
    }
  }

  leave(c: FakeChannel): void {
    this.members.delete(c);
  }
}

export class FakeChannel implements ChannelLike {
  private readonly listeners = new Set<(e: { data: unknown }) => void>();
  constructor(private readonly hub: ChannelHub) {}
  postMessage(message: unknown): void {
    this.hub.send(this, message);
  }
  addEventListener(_type: "message", l: (e: { data: unknown }) => void): void {
    this.listeners.add(l);
  }
  removeEventListener(_type: "message", l: (e: { data: unknown }) => void): void {
    this.listeners.delete(l);
  }
  close(): void {
    this.hub.leave(this);
  }
  deliver(data: unknown): void {
    for (const l of this.listeners) l({ data });
  }
}

/** A lock manager shared by the "tabs" of a test, counting grants. */
export function countingLocks(): LockManagerLike & { grants: string[] } {
  const inner = localLocks();
  const grants: string[] = [];
  return {
    grants,
    request<T>(name: string, cb: () => Promise<T>): Promise<T> {
      return inner.request(name, () => {
        grants.push(name);
        return cb();
      });
    },
  };
}

export interface Call {
  method: string;
  url: string;
  headers: Headers;
  body: string | null;
  json: unknown;
}

interface Server {
  id: string;
  url: string;
  region: string;
  up: boolean;
}

function b64url(s: string): string {
  return Buffer.from(s).toString("base64url");
}

/** A JWT-shaped token (unsigned: the client never verifies). */
export function token(claims: Record<string, unknown>): string {
  return `${b64url('{"alg":"none"}')}.${b64url(JSON.stringify(claims))}.sig`;
}

export const GLOBAL = "http://global.test";

/**
 * The proxy side, as the client sees it: `/auth/login`, `/auth/refresh`
 * (rotation with reuse detection and a grace window), `/closestToMe`,
 * `/auth/logout`, and app requests answered 200, 421 or 503 by the lock
 * rules. `hook` answers first when it returns a response.
 */
export class FakeCluster {
  readonly calls: Call[] = [];
  readonly servers = new Map<string, Server>();
  globalUp = true;
  expiresIn = 100;
  /** Where the next refresh places the client; `null` keeps the current server when it is up. */
  placeNext: string | null = null;
  closest = "eu-1";
  /** Answers before the rules when it returns something; "refuse" fails the connection. */
  hook: ((c: Call) => Response | "refuse" | undefined) | null = null;
  /** Refresh grace window (ms); 0: any reuse revokes. */
  graceMs = 0;

  private n = 0;
  /** Access token → server id. */
  private readonly access = new Map<string, string>();
  /** Current refresh token of the family, and the one before it with when it was rotated. */
  private refreshCurrent: string | null = null;
  private previous: { token: string; at: number; successor: unknown } | null = null;
  private revoked = false;
  private locked = "eu-1";

  constructor(private readonly clock: FakeClock) {
    for (const [id, region] of [
      ["eu-1", "eu"],
      ["eu-2", "eu"],
      ["us-1", "us"],
    ] as const) {
      this.servers.set(id, { id, url: `http://${id}.test`, region, up: true });
    }
  }

  server(id: string): Server {
    const s = this.servers.get(id);
    if (!s) throw new Error(`no server ${id}`);
    return s;
  }

  summary(id: string): { id: string; url: string; region: string } {
    const s = this.server(id);
    return { id: s.id, url: s.url, region: s.region };
  }

  get lockedTo(): string {
    return this.locked;
  }

  /** Calls whose method and URL path match. */
  count(method: string, path: string): number {
    return this.find(method, path).length;
  }

  find(method: string, path: string): Call[] {
    return this.calls.filter((c) => c.method === method && new URL(c.url).pathname === path);
  }

  private mint(server: string): { at: string; rt: string } {
    this.n += 1;
    const at = token({ sub: "alice", fam: "fam-1", srv: server, n: this.n, typ: "at" });
    const rt = token({ sub: "alice", fam: "fam-1", srv: server, n: this.n, typ: "rt" });
    this.access.set(at, server);
    this.refreshCurrent = rt;
    this.locked = server;
    return { at, rt };
  }

  fetch: typeof fetch = async (input, init) => {
    const url = String(input);
    const body = typeof init?.body === "string" ? init.body : null;
    let json: unknown = null;
    try {
      json = body === null ? null : JSON.parse(body);
    } catch {
      json = null;
    }
    const call: Call = {
      method: init?.method ?? "GET",
      url,
      headers: new Headers(init?.headers),
      body,
      json,
    };
    this.calls.push(call);
    await Promise.resolve();
    const hooked = this.hook?.(call);
    if (hooked === "refuse") throw new TypeError("fetch failed");
    if (hooked) return hooked;
    const u = new URL(url);
    const origin = u.origin;
    if (origin === GLOBAL) {
      if (!this.globalUp) throw new TypeError("fetch failed");
      return this.global(call, u.pathname);
    }
    const server = [...this.servers.values()].find((s) => s.url === origin);
    if (!server?.up) throw new TypeError("fetch failed");
    return this.app(call, server);
  };

  private global(call: Call, path: string): Response {
    switch (path) {
      case "/auth/login": {
        const { at, rt } = this.mint(this.placeNext ?? "eu-1");
        this.placeNext = null;
        const s = this.summary(this.locked);
        return new Response(JSON.stringify({ userId: "alice" }), {
          status: 200,
          headers: {
            "Tether-Access-Token": at,
            "Tether-Refresh-Token": rt,
            "Tether-Expires-In": String(this.expiresIn),
            "Tether-Server-Id": s.id,
            "Tether-Server-Url": s.url,
            "Tether-Server-Region": s.region,
          },
        });
      }
      case "/closestToMe":
        return Response.json({ closestServerId: this.closest, region: "eu", url: "" });
      case "/auth/refresh":
        return this.refresh(call.json as Record<string, unknown>);
      case "/auth/logout":
        this.revoked = true;
        return new Response(null, { status: 204 });
      default:
        return new Response("not found", { status: 404 });
    }
  }

  private refresh(req: Record<string, unknown>): Response {
    const presented = req.refreshToken;
    const invalid = () =>
      Response.json(
        { error: "invalid_token", detail: "refresh token reuse" },
        { status: 401, headers: { "WWW-Authenticate": 'Bearer error="invalid_token"' } },
      );
    if (this.revoked) return invalid();
    if (presented !== this.refreshCurrent) {
      const p = this.previous;
      if (p && p.token === presented && this.clock.now() - p.at <= this.graceMs) {
        return Response.json(p.successor);
      }
      this.revoked = true;
      return invalid();
    }
    const from = this.locked;
    const fromUp = this.server(from).up;
    let target = from;
    let reason = "kept";
    if (!fromUp || req.unreachableServerId === from) {
      if (!fromUp) {
        target = this.placeNext ?? [...this.servers.values()].find((s) => s.up)?.id ?? from;
        reason = "server_down";
      }
    } else if (this.placeNext && req.criticalTaskInProgress !== true) {
      target = this.placeNext;
      reason = "moved_region";
    } else if (req.criticalTaskInProgress === true) {
      reason = "critical_task";
    }
    this.placeNext = null;
    const { at, rt } = this.mint(target);
    const answer = {
      accessToken: at,
      refreshToken: rt,
      tokenType: "Bearer",
      expiresIn: this.expiresIn,
      server: this.summary(target),
      serverChanged: target !== from,
      previousServerId: from,
      reason,
    };
    this.previous = { token: String(presented), at: this.clock.now(), successor: answer };
    return Response.json(answer);
  }

  private app(call: Call, server: Server): Response {
    const auth = call.headers.get("Authorization") ?? "";
    const at = auth.replace(/^Bearer /, "");
    const srv = this.access.get(at);
    if (!srv) {
      return Response.json(
        { error: "invalid_token", detail: "unknown token" },
        { status: 401, headers: { "WWW-Authenticate": 'Bearer error="invalid_token"' } },
      );
    }
    if (srv !== server.id) {
      const locked = this.server(srv);
      if (!locked.up) {
        return Response.json(
          { error: "server_unavailable", action: "refresh" },
          { status: 503, headers: { "Tether-Relock": "refresh", "Retry-After": "1" } },
        );
      }
      return Response.json(
        { error: "wrong_server", lockedServer: this.summary(srv) },
        { status: 421, headers: { "Tether-Relock": locked.url } },
      );
    }
    return Response.json({ ok: true, served: server.id, path: new URL(call.url).pathname });
  }
}

export interface Tab {
  client: TetherClient;
  events: { type: string; detail: unknown }[];
}

/** A client wired to the fakes, recording its events. */
export function tab(
  cluster: FakeCluster,
  clock: FakeClock,
  extra: Partial<ClientOptions> = {},
): Tab {
  const client = new TetherClient({
    globalUrl: GLOBAL,
    fetch: cluster.fetch,
    clock,
    random: () => 0,
    channel: null,
    locks: null,
    ...extra,
  });
  const events: { type: string; detail: unknown }[] = [];
  for (const type of [
    "loggedin",
    "refreshed",
    "serverchanged",
    "relocked",
    "reconnecting",
    "reconnected",
    "signedout",
  ] as const) {
    client.on(type, (detail) => events.push({ type, detail }));
  }
  return { client, events };
}

export function ofType<T = Record<string, unknown>>(t: Tab, type: string): T[] {
  return t.events.filter((e) => e.type === type).map((e) => e.detail as T);
}
