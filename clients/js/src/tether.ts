/**
 * tether's browser client: the client's half of the protocol in DESIGN.md
 * §3–§5 and §10, with the same retry rules as the Rust SDK
 * (`docs/client.md`).
 *
 * It logs in through the global URL, sends each request with its access
 * token to the server it is locked to, refreshes before expiry (after asking
 * `/closestToMe`), follows `421` relocks, refreshes on `503 Tether-Relock:
 * refresh`, fails over when its server cannot be reached, and shows the
 * "Reconnecting…" countdown when nothing can. Tabs of one user share one
 * refresh: a Web Lock lets one tab rotate the refresh token and a
 * BroadcastChannel hands the result to the others.
 *
 * One file with no imports and no runtime dependencies, so `tsc` alone
 * builds `dist/tether.js`, usable from `<script type="module">`.
 *
 * Start reading at {@link TetherClient.request}.
 */

/** The message the seed asks a web app to show when its server changed. */
export const SERVER_CHANGED_MESSAGE =
  "Your primary server has changed. Any missing data will be synced within 5 minutes.";

/** A server as the proxy names it (`server` in a refresh answer). */
export interface ServerSummary {
  id: string;
  url: string;
  region: string;
}

/** What the client keeps between requests, and what a storage holds. */
export interface TetherSession {
  accessToken: string;
  refreshToken: string;
  /** Access-token lifetime announced by the proxy, seconds. */
  expiresIn: number;
  /** When the answer carrying the access token arrived, ms since the epoch (the client's clock). */
  obtainedAt: number;
  server: ServerSummary;
}

/**
 * Where the session is kept. The default keeps it in memory only; see the
 * README for why not `localStorage`.
 */
export interface TokenStorage {
  load(): TetherSession | null | Promise<TetherSession | null>;
  /** `null` forgets the session (logout, expired refresh token). */
  save(session: TetherSession | null): void | Promise<void>;
}

/** The in-memory storage (the default): gone when the tab closes. */
export function memoryStorage(): TokenStorage {
  let kept: TetherSession | null = null;
  return {
    load: () => kept,
    save: (s) => {
      kept = s;
    },
  };
}

/** Time, injectable so tests need not wait. */
export interface Clock {
  /** ms since the epoch */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The subset of the Web Locks API the client uses (`navigator.locks`). */
export interface LockManagerLike {
  request<T>(name: string, callback: () => Promise<T>): Promise<T>;
}

/** The subset of `BroadcastChannel` the client uses. */
export interface ChannelLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  removeEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  close?(): void;
}

export interface ClientOptions {
  /** The global URL (geo DNS name), or a function asked before every global call. */
  globalUrl: string | (() => string | Promise<string>);
  /** Refresh when less than this fraction of the access token's lifetime remains. Default 0.2. */
  refreshMargin?: number;
  /** Also refresh on a timer at that point, without waiting for a request. Default true. */
  autoRefresh?: boolean;
  /** The "Reconnecting…" wait, ms. Default 30 000. */
  reconnectWait?: number;
  /** Up to this fraction of `reconnectWait` is added at random, so clients do not return all at once. Default 0.1. */
  reconnectJitter?: number;
  /** Reconnect waits within one call before it fails with `no_server_available`. Default 10. */
  maxReconnectAttempts?: number;
  /** Per attempt, ms. Default 30 000. */
  requestTimeout?: number;
  /** Send an `Idempotency-Key` on writes, reused when the request is re-sent. Default true. */
  idempotency?: boolean;
  /** The methods that get an `Idempotency-Key`. Default POST and PATCH. */
  idempotentMethods?: readonly string[];
  /** Default {@link memoryStorage}. */
  storage?: TokenStorage;
  /** Default `navigator.locks`, else a lock local to this page. `null`: the local lock. */
  locks?: LockManagerLike | null;
  /** Default `new BroadcastChannel(channelName)` when the browser has it. `null`: no tab sharing. */
  channel?: ChannelLike | null;
  /** Default "tether". */
  channelName?: string;
  /** How long `restore()` waits for another tab to hand over its session, ms. Default 300. */
  handoffTimeout?: number;
  /** Default the global `fetch`. */
  fetch?: typeof fetch;
  clock?: Clock;
  /** A number in [0, 1); default `Math.random`. */
  random?: () => number;
}

/** Why a refresh ran. */
export type RefreshCause =
  | "expiry"
  | "manual"
  | "server_unavailable"
  | "unreachable"
  | "invalid_token";

/** The events, by name, and what each carries. */
export interface TetherEvents {
  loggedin: { server: ServerSummary };
  /** A refresh done here (`fromTab: false`) or adopted from another tab (`fromTab: true`). */
  refreshed: {
    server: ServerSummary;
    serverChanged: boolean;
    reason: string;
    cause: RefreshCause | null;
    fromTab: boolean;
  };
  /** Show `message` to the user. */
  serverchanged: { message: string; from: ServerSummary; to: ServerSummary; reason: string };
  /** A `421` moved the client to another server. */
  relocked: { fromUrl: string; to: ServerSummary };
  /** Sent when the wait starts and every second of it: render "Reconnecting… {secondsLeft}". */
  reconnecting: { secondsLeft: number; attempt: number; waitMs: number };
  /** The first success after one or more reconnect waits: hide the countdown. */
  reconnected: { server: ServerSummary | null; attempts: number };
  /** The session ended: `logout` here, `expired` (the proxy refused the refresh token), `other-tab` (logged out or expired in another tab). */
  signedout: { reason: "logout" | "expired" | "other-tab" };
}

export type TetherEventName = keyof TetherEvents;

export type TetherErrorKind =
  | "config"
  | "not_logged_in"
  | "session_expired"
  | "no_server_available"
  | "connect"
  | "transport"
  | "status"
  | "bad_answer";

/**
 * An error of the client. Every HTTP answer of the app is returned as a
 * `Response`, whatever its status; errors are for when there is none to
 * return, or an SDK call (login, refresh, logout) got one it cannot use.
 */
export class TetherError extends Error {
  readonly kind: TetherErrorKind;
  /** The HTTP status, for `status` and `session_expired`. */
  readonly status: number | undefined;
  /** The parsed JSON error body, if any. */
  readonly body: unknown;

  constructor(
    kind: TetherErrorKind,
    message: string,
    extra: { status?: number; body?: unknown; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "TetherError";
    this.kind = kind;
    this.status = extra.status;
    this.body = extra.body;
  }

  /** Nothing usable answered: worth a reconnect wait. */
  get unreachable(): boolean {
    return (
      this.kind === "connect" ||
      this.kind === "transport" ||
      this.kind === "no_server_available" ||
      (this.kind === "status" && this.status !== undefined && this.status >= 500)
    );
  }
}

/** Per call: a body the client can send again on a retry. */
export interface RequestOptions {
  /** Sent as JSON with `Content-Type: application/json`. */
  json?: unknown;
  /** A body that can be sent twice (not a stream). */
  body?: Exclude<BodyInit, ReadableStream>;
  headers?: HeadersInit;
  signal?: AbortSignal;
  /** Your own key (a retry of an earlier logical request), or `false` for none. */
  idempotencyKey?: string | false;
}

export interface LoginResult {
  server: ServerSummary;
  /** Access-token lifetime, seconds. */
  expiresIn: number;
  /** The app's login answer; its body is unread. */
  response: Response;
}

export interface RefreshResult {
  server: ServerSummary;
  serverChanged: boolean;
  reason: string;
}

/** The `Tether-*` headers of a login answer, read. */
export function parseLoginHeaders(h: Headers): {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
  server: ServerSummary;
} {
  const get = (name: string): string => {
    const v = h.get(name)?.trim();
    if (!v) {
      throw new TetherError(
        "bad_answer",
        `login: header ${name} is missing (is it in the proxy's Access-Control-Expose-Headers?)`,
      );
    }
    return v;
  };
  const accessToken = get("Tether-Access-Token");
  const refreshToken = get("Tether-Refresh-Token");
  const rawExpires = get("Tether-Expires-In");
  const expiresIn = Number(rawExpires);
  if (!/^[0-9]+$/.test(rawExpires) || expiresIn <= 0) {
    throw new TetherError(
      "bad_answer",
      `login: header Tether-Expires-In: ${JSON.stringify(rawExpires)} is not a positive number of seconds`,
    );
  }
  const server = {
    id: get("Tether-Server-Id"),
    url: get("Tether-Server-Url"),
    region: get("Tether-Server-Region"),
  };
  checkUrl(server.url, "login: header Tether-Server-Url");
  return { accessToken, refreshToken, expiresIn, server };
}

/** The ways the client reads one answer of a locked server. */
export type ResponseAction =
  | { kind: "return" }
  | { kind: "relock"; url: string; server: ServerSummary | null }
  | { kind: "refresh" }
  | { kind: "invalid_token" };

/**
 * What to do with an answer (DESIGN.md §4): only answers that prove the
 * request never reached the app are acted on.
 */
export async function classify(res: Response): Promise<ResponseAction> {
  const relock = res.headers.get("Tether-Relock")?.trim() ?? null;
  if (res.status === 421) {
    const body = await jsonOf(res);
    const locked = isRecord(body) ? asServer(body.lockedServer) : null;
    const server = locked && isHttpUrl(locked.url) ? locked : null;
    // The header is the contract; the body's URL is the fallback.
    const url = relock && isHttpUrl(relock) ? relock : (server?.url ?? null);
    return url ? { kind: "relock", url, server } : { kind: "return" };
  }
  if (res.status === 503 && relock?.toLowerCase() === "refresh") {
    return { kind: "refresh" };
  }
  if (res.status === 401) {
    const body = await jsonOf(res);
    const byBody = isRecord(body) && body.error === "invalid_token";
    const byHeader = (res.headers.get("WWW-Authenticate") ?? "").includes("invalid_token");
    return byBody || byHeader ? { kind: "invalid_token" } : { kind: "return" };
  }
  return { kind: "return" };
}

/**
 * An `Idempotency-Key` value: a random UUID (v4) as a Structured Fields
 * string (draft-ietf-httpapi-idempotency-key-header, RFC 8941 §3.3.3),
 * i.e. in double quotes. `getRandomValues` works outside secure contexts,
 * unlike `randomUUID`.
 */
export function newIdempotencyKey(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** `key` as an sf-string: quoted, with `"` and `\` escaped; other characters must be visible ASCII. */
export function sfString(key: string): string {
  if (!/^[\x20-\x7e]*$/.test(key)) {
    throw new TetherError("config", "an Idempotency-Key must be printable ASCII");
  }
  return `"${key.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** Messages between tabs, on the BroadcastChannel. */
type TabMessage =
  | { t: "tether"; type: "session"; key: string; session: TetherSession; reason: string }
  | { t: "tether"; type: "signedout"; key: string }
  | { t: "tether"; type: "hello"; from: string }
  | { t: "tether"; type: "critical"; key: string; from: string; active: boolean };

/** What one `request` call has spent of its retries. */
interface Spent {
  relock: boolean;
  refresh: boolean;
  invalidToken: boolean;
  connectFailures: number;
  reconnectWaits: number;
}

/** How long another tab's "critical task running" is believed without news, ms. */
const CRITICAL_STALE_MS = 10 * 60 * 1000;

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as Parameters<typeof globalThis.clearTimeout>[0]),
};

/** A lock local to this page: what `navigator.locks` gives across tabs, within one. */
export function localLocks(): LockManagerLike {
  const tails = new Map<string, Promise<unknown>>();
  return {
    request<T>(name: string, callback: () => Promise<T>): Promise<T> {
      const prev = tails.get(name) ?? Promise.resolve();
      const run = prev.then(callback, callback);
      const tail = run.then(
        () => undefined,
        () => undefined,
      );
      tails.set(name, tail);
      void tail.then(() => {
        if (tails.get(name) === tail) tails.delete(name);
      });
      return run;
    },
  };
}

function defaultLocks(): LockManagerLike {
  const nav = (globalThis as { navigator?: { locks?: LockManager } }).navigator;
  const locks = nav?.locks;
  if (locks) {
    return { request: (name, cb) => locks.request(name, () => cb()) as Promise<never> };
  }
  return localLocks();
}

function defaultChannel(name: string): ChannelLike | null {
  if (typeof BroadcastChannel === "undefined") return null;
  return new BroadcastChannel(name) as unknown as ChannelLike;
}

/**
 * A client of one user in one tab.
 *
 * ```ts
 * const client = new TetherClient({ globalUrl: "https://api.example.com" });
 * client.on("serverchanged", (e) => showBanner(e.message));
 * await client.login({ username: "alice", password: "…" });
 * const res = await client.post("/orders", { sku: "book" });
 * ```
 */
export class TetherClient {
  private readonly opts: {
    refreshMargin: number;
    autoRefresh: boolean;
    reconnectWait: number;
    reconnectJitter: number;
    maxReconnectAttempts: number;
    requestTimeout: number;
    idempotency: boolean;
    idempotentMethods: ReadonlySet<string>;
    handoffTimeout: number;
  };
  private readonly globalUrl: () => string | Promise<string>;
  private readonly storage: TokenStorage;
  private readonly locks: LockManagerLike;
  private readonly channel: ChannelLike | null;
  private readonly fetcher: typeof fetch;
  private readonly clock: Clock;
  private readonly random: () => number;
  /** Names this tab on the channel. */
  private readonly tabId: string;

  private session: TetherSession | null = null;
  private criticalCount = 0;
  /** Other tabs of this session running a critical task, by tab id: when they said so. */
  private readonly remoteCritical = new Map<string, number>();
  private readonly listeners = new Map<string, Set<(e: never) => void>>();
  private refreshTimer: unknown = null;
  /** The reconnect wait in progress, shared by every call that needs one. */
  private waiting: { done: Promise<void>; skip: () => void } | null = null;
  /** Reconnect waits since the last success. */
  private waitsSinceSuccess = 0;
  private readonly onMessage = (event: { data: unknown }) => this.receive(event.data);
  private handoff: ((s: TetherSession) => void) | null = null;
  private closed = false;

  constructor(options: ClientOptions) {
    const g = options.globalUrl;
    if (typeof g === "string") checkUrl(g, "globalUrl");
    this.globalUrl = typeof g === "string" ? () => g : g;
    const margin = options.refreshMargin ?? 0.2;
    if (!(margin >= 0 && margin < 1)) {
      throw new TetherError("config", `refreshMargin ${margin} is not in [0, 1)`);
    }
    const jitter = options.reconnectJitter ?? 0.1;
    if (!(jitter >= 0 && jitter <= 1)) {
      throw new TetherError("config", `reconnectJitter ${jitter} is not in [0, 1]`);
    }
    this.opts = {
      refreshMargin: margin,
      autoRefresh: options.autoRefresh ?? true,
      reconnectWait: nonNegative("reconnectWait", options.reconnectWait ?? 30_000),
      reconnectJitter: jitter,
      maxReconnectAttempts: nonNegative("maxReconnectAttempts", options.maxReconnectAttempts ?? 10),
      requestTimeout: nonNegative("requestTimeout", options.requestTimeout ?? 30_000),
      idempotency: options.idempotency ?? true,
      idempotentMethods: new Set(
        (options.idempotentMethods ?? ["POST", "PATCH"]).map((m) => m.toUpperCase()),
      ),
      handoffTimeout: nonNegative("handoffTimeout", options.handoffTimeout ?? 300),
    };
    this.storage = options.storage ?? memoryStorage();
    this.locks = options.locks === null ? localLocks() : (options.locks ?? defaultLocks());
    this.channel =
      options.channel === undefined
        ? defaultChannel(options.channelName ?? "tether")
        : options.channel;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TetherError("config", "no fetch available");
    // Called unbound, browsers throw "Illegal invocation".
    this.fetcher = options.fetch ? f : (input, init) => globalThis.fetch(input, init);
    this.clock = options.clock ?? realClock;
    this.random = options.random ?? Math.random;
    this.tabId = newIdempotencyKey();
    this.channel?.addEventListener("message", this.onMessage);
  }

  // ---- observing ----------------------------------------------------------

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends TetherEventName>(type: K, listener: (event: TetherEvents[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(listener as (e: never) => void);
    return () => this.off(type, listener);
  }

  off<K extends TetherEventName>(type: K, listener: (event: TetherEvents[K]) => void): void {
    this.listeners.get(type)?.delete(listener as (e: never) => void);
  }

  private emit<K extends TetherEventName>(type: K, event: TetherEvents[K]): void {
    for (const l of [...(this.listeners.get(type) ?? [])]) {
      try {
        (l as (e: TetherEvents[K]) => void)(event);
      } catch (e) {
        // A page's listener must not break the client.
        console.error(`tether: a ${type} listener threw`, e);
      }
    }
  }

  /** The server this tab is locked to, if logged in. */
  get server(): ServerSummary | null {
    return this.session ? { ...this.session.server } : null;
  }

  /** The current session (tokens included), if logged in. */
  get currentSession(): TetherSession | null {
    return this.session ? { ...this.session, server: { ...this.session.server } } : null;
  }

  get loggedIn(): boolean {
    return this.session !== null;
  }

  /** Critical tasks running in this tab. */
  get criticalTasks(): number {
    return this.criticalCount;
  }

  /** Whether a reconnect wait is running. */
  get reconnecting(): boolean {
    return this.waiting !== null;
  }

  // ---- session ------------------------------------------------------------

  /**
   * `POST {global}/auth/login` with the app's own login body (JSON). On a
   * 2xx, locks the client to the server named in the `Tether-*` headers. A
   * non-2xx is a `status` error carrying the app's body. When the global URL
   * cannot be reached, waits (the "Reconnecting…" countdown) and tries again.
   */
  async login(body: unknown): Promise<LoginResult> {
    let waits = 0;
    for (;;) {
      const url = join(await this.global(), "/auth/login");
      let res: Response;
      try {
        res = await this.send("login", "POST", url, {
          body: JSON.stringify(body),
          headers: { "Content-Type": "application/json" },
        });
      } catch (e) {
        if (e instanceof TetherError && e.kind === "connect") {
          waits = await this.reconnectWait(waits, e);
          continue;
        }
        throw e;
      }
      if (!res.ok) {
        throw new TetherError("status", `login: ${res.status}`, {
          status: res.status,
          body: await jsonOf(res),
        });
      }
      const h = parseLoginHeaders(res.headers);
      const session: TetherSession = {
        accessToken: h.accessToken,
        refreshToken: h.refreshToken,
        expiresIn: h.expiresIn,
        obtainedAt: this.clock.now(),
        server: h.server,
      };
      await this.adopt(session);
      this.succeeded();
      this.emit("loggedin", { server: { ...h.server } });
      this.broadcast(session, "login");
      return { server: { ...h.server }, expiresIn: h.expiresIn, response: res };
    }
  }

  /**
   * Takes up a session without logging in: the storage's, else one handed
   * over by another tab of this origin (within `handoffTimeout`). Resolves
   * whether the client is now logged in.
   */
  async restore(): Promise<boolean> {
    if (this.session) return true;
    const stored = await this.storage.load();
    if (stored && isSession(stored)) {
      await this.adopt(stored);
      return true;
    }
    if (!this.channel) return false;
    const got = await new Promise<TetherSession | null>((resolve) => {
      const timer = this.clock.setTimeout(() => {
        this.handoff = null;
        resolve(null);
      }, this.opts.handoffTimeout);
      this.handoff = (s) => {
        this.clock.clearTimeout(timer);
        this.handoff = null;
        resolve(s);
      };
      this.postTab({ t: "tether", type: "hello", from: this.tabId });
    });
    if (!got || this.session) return this.session !== null;
    await this.adopt(got);
    return true;
  }

  /**
   * `POST {global}/auth/logout`: revokes the refresh family (every tab of
   * this session) and forgets the session. A `401` (already revoked or
   * expired) also ends it.
   */
  async logout(): Promise<void> {
    const s = this.current();
    const url = join(await this.global(), "/auth/logout");
    const res = await this.send("logout", "POST", url, {
      body: JSON.stringify({ refreshToken: s.refreshToken }),
      headers: { "Content-Type": "application/json" },
    });
    if (!res.ok && res.status !== 401) {
      throw new TetherError("status", `logout: ${res.status}`, {
        status: res.status,
        body: await jsonOf(res),
      });
    }
    await this.signOut("logout", s);
  }

  /** Refreshes now, whatever the token's age (through the tab lock). */
  async refresh(): Promise<RefreshResult> {
    let waits = 0;
    for (;;) {
      const seen = this.current();
      try {
        const r = await this.refreshFrom(seen, "manual", null);
        const cur = this.current();
        return r ?? { server: { ...cur.server }, serverChanged: false, reason: "from_other_tab" };
      } catch (e) {
        if (e instanceof TetherError && e.unreachable) {
          waits = await this.reconnectWait(waits, e);
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * Runs `task` as a critical task: while any runs (in this tab or another
   * tab of this session), refreshes send `criticalTaskInProgress: true` and
   * the proxy keeps the server (unless it died). Nesting is counted.
   */
  async critical<T>(task: () => Promise<T> | T): Promise<T> {
    this.criticalCount += 1;
    if (this.criticalCount === 1) this.tellCritical(true);
    try {
      return await task();
    } finally {
      this.criticalCount -= 1;
      if (this.criticalCount === 0) this.tellCritical(false);
    }
  }

  /** Ends a running reconnect wait now (a "Retry now" button). */
  reconnectNow(): void {
    this.waiting?.skip();
  }

  /** Stops the refresh timer and leaves the tab channel; the client is unusable after. */
  close(): void {
    this.closed = true;
    this.clearTimer();
    this.waiting?.skip();
    if (this.channel) {
      this.channel.removeEventListener("message", this.onMessage);
      this.channel.close?.();
    }
  }

  // ---- requests -----------------------------------------------------------

  /** `GET path`. */
  get(path: string, options: RequestOptions = {}): Promise<Response> {
    return this.request("GET", path, options);
  }

  /** `POST path` with a JSON body. */
  post(path: string, json?: unknown, options: RequestOptions = {}): Promise<Response> {
    return this.request("POST", path, json === undefined ? options : { ...options, json });
  }

  /** `PATCH path` with a JSON body. */
  patch(path: string, json?: unknown, options: RequestOptions = {}): Promise<Response> {
    return this.request("PATCH", path, json === undefined ? options : { ...options, json });
  }

  /** `DELETE path`. */
  delete(path: string, options: RequestOptions = {}): Promise<Response> {
    return this.request("DELETE", path, options);
  }

  /**
   * Sends `method path` to the locked server with the access token and
   * returns the app's answer, whatever its status. Re-sent (with the same
   * `Idempotency-Key`) only when the answer proves the app never saw it,
   * at most once per kind within one call:
   *
   * - `421` + `Tether-Relock: <url>`: to that URL;
   * - `503` + `Tether-Relock: refresh`: after a refresh naming the server
   *   in `unreachableServerId`;
   * - `401 invalid_token`: after a refresh;
   * - `fetch` failed (connection refused, DNS, CORS, network down): after a
   *   refresh with `unreachableServerId`; when that cannot get through
   *   either, after the "Reconnecting…" wait, and again, up to
   *   `maxReconnectAttempts` waits.
   */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const m = method.toUpperCase();
    const headers = new Headers(options.headers);
    let body: BodyInit | undefined = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
    }
    // One key per logical request, kept across every re-send below.
    if (options.idempotencyKey !== false && !headers.has("Idempotency-Key")) {
      if (options.idempotencyKey !== undefined) {
        headers.set("Idempotency-Key", sfString(options.idempotencyKey));
      } else if (this.opts.idempotency && this.opts.idempotentMethods.has(m)) {
        headers.set("Idempotency-Key", sfString(newIdempotencyKey()));
      }
    }
    const spent: Spent = {
      relock: false,
      refresh: false,
      invalidToken: false,
      connectFailures: 0,
      reconnectWaits: 0,
    };
    let relockUrl: string | null = null;
    for (;;) {
      const session = await this.freshSession(spent);
      const base: string = relockUrl ?? session.server.url;
      relockUrl = null;
      const url = join(base, path);
      headers.set("Authorization", `Bearer ${session.accessToken}`);
      let res: Response;
      try {
        res = await this.send("request", m, url, {
          headers,
          ...(body === undefined ? {} : { body }),
          ...(options.signal ? { signal: options.signal } : {}),
        });
      } catch (e) {
        if (!(e instanceof TetherError && e.kind === "connect")) throw e;
        spent.connectFailures += 1;
        if (spent.connectFailures > 1) {
          // The refresh right after the first failure did not help: the
          // seed's "Reconnecting…" case.
          spent.reconnectWaits = await this.reconnectWait(spent.reconnectWaits, e);
        }
        await this.recover(session, "unreachable", session.server.id, spent);
        continue;
      }
      const action = await classify(res);
      if (action.kind === "relock" && !spent.relock) {
        spent.relock = true;
        const to = this.relock(action.url, action.server);
        this.emit("relocked", { fromUrl: base, to });
        relockUrl = action.url;
        continue;
      }
      if (action.kind === "refresh" && !spent.refresh) {
        spent.refresh = true;
        await this.recoverOnce(session, "server_unavailable", session.server.id, spent);
        continue;
      }
      if (action.kind === "invalid_token" && !spent.invalidToken) {
        spent.invalidToken = true;
        await this.recoverOnce(session, "invalid_token", null, spent);
        continue;
      }
      this.succeeded();
      return res;
    }
  }

  // ---- internals: sending -------------------------------------------------

  private async global(): Promise<string> {
    const g = await this.globalUrl();
    checkUrl(g, "globalUrl");
    return g;
  }

  /**
   * One `fetch`. A rejection is `connect` (nothing usable: the browser does
   * not say whether the request left, see the README on idempotency), a
   * timeout is `transport`; the caller's own abort passes through.
   */
  private async send(
    what: string,
    method: string,
    url: string,
    init: { headers?: HeadersInit; body?: BodyInit; signal?: AbortSignal },
  ): Promise<Response> {
    const timeout = new AbortController();
    const timer = this.clock.setTimeout(
      () => timeout.abort(new TetherError("transport", `${what}: ${url}: timed out`)),
      this.opts.requestTimeout,
    );
    const signal = init.signal ? anySignal([init.signal, timeout.signal]) : timeout.signal;
    try {
      return await this.fetcher(url, {
        method,
        ...(init.headers ? { headers: init.headers } : {}),
        ...(init.body === undefined ? {} : { body: init.body }),
        signal,
        credentials: "omit",
      });
    } catch (e) {
      if (init.signal?.aborted) throw init.signal.reason ?? e;
      if (timeout.signal.aborted) {
        throw new TetherError("transport", `${what}: ${url}: timed out`, { cause: e });
      }
      throw new TetherError("connect", `${what}: ${url}: ${errorText(e)}`, { cause: e });
    } finally {
      this.clock.clearTimeout(timer);
    }
  }

  private async sendJson(what: string, method: string, url: string, body?: unknown) {
    return this.send(
      what,
      method,
      url,
      body === undefined
        ? {}
        : { body: JSON.stringify(body), headers: { "Content-Type": "application/json" } },
    );
  }

  // ---- internals: refresh -------------------------------------------------

  private current(): TetherSession {
    if (!this.session) throw new TetherError("not_logged_in", "not logged in");
    return this.session;
  }

  /** The session, refreshed first when its access token is near expiry. */
  private async freshSession(spent: Spent): Promise<TetherSession> {
    const s = this.current();
    if (!refreshDue(s, this.clock.now(), this.opts.refreshMargin)) return s;
    try {
      await this.refreshFrom(s, "expiry", null);
    } catch (e) {
      if (!(e instanceof TetherError && e.unreachable)) throw e;
      if (this.clock.now() < expiresAt(s)) {
        // Still valid: use it, and try again before the next request.
      } else {
        spent.reconnectWaits = await this.reconnectWait(spent.reconnectWaits, e);
        await this.recover(s, "expiry", null, spent);
      }
    }
    return this.current();
  }

  /** A refresh the proxy asked for; the reconnect waits when it cannot get through. */
  private async recoverOnce(
    seen: TetherSession,
    cause: RefreshCause,
    unreachable: string | null,
    spent: Spent,
  ): Promise<void> {
    try {
      await this.refreshFrom(seen, cause, unreachable);
    } catch (e) {
      if (!(e instanceof TetherError && e.unreachable)) throw e;
      spent.reconnectWaits = await this.reconnectWait(spent.reconnectWaits, e);
      await this.recover(seen, cause, unreachable, spent);
    }
  }

  /** Refreshes; while that cannot get through, waits and tries again. */
  private async recover(
    seen: TetherSession,
    cause: RefreshCause,
    unreachable: string | null,
    spent: Spent,
  ): Promise<void> {
    for (;;) {
      try {
        await this.refreshFrom(seen, cause, unreachable);
        return;
      } catch (e) {
        if (!(e instanceof TetherError && e.unreachable)) throw e;
        spent.reconnectWaits = await this.reconnectWait(spent.reconnectWaits, e);
      }
    }
  }

  /**
   * Refreshes unless the session moved on since `seen` was read: another
   * call of this tab refreshed, or another tab did and handed the result
   * over. The Web Lock is per refresh family, so tabs of one session take
   * turns and the one that waited finds the fresh tokens and stops.
   * Resolves `null` when the session had already moved on.
   */
  private async refreshFrom(
    seen: TetherSession,
    cause: RefreshCause,
    unreachable: string | null,
  ): Promise<RefreshResult | null> {
    return this.locks.request(`tether-refresh:${sessionKey(seen)}`, async () => {
      if (this.channel) {
        // The tab that held the lock posted its tokens before releasing
        // it; let that message be dispatched before looking.
        await nextTask();
      }
      const cur = this.current();
      if (cur.refreshToken !== seen.refreshToken) return null;
      return this.refreshLocked(cur, cause, unreachable);
    });
  }

  /** `GET {global}/closestToMe`, then `POST {global}/auth/refresh`; call with the lock held. */
  private async refreshLocked(
    old: TetherSession,
    cause: RefreshCause,
    unreachable: string | null,
  ): Promise<RefreshResult> {
    const global = await this.global();
    const closest = await this.closest(global);
    const request: Record<string, unknown> = {
      refreshToken: old.refreshToken,
      criticalTaskInProgress: this.criticalAnywhere(),
    };
    if (closest !== null) request.closestServerId = closest;
    if (unreachable !== null) request.unreachableServerId = unreachable;
    const res = await this.sendJson("refresh", "POST", join(global, "/auth/refresh"), request);
    if (res.status === 401) {
      const body = await jsonOf(res);
      await this.signOut("expired", old);
      throw new TetherError("session_expired", "the session has expired or was revoked", {
        status: 401,
        body,
      });
    }
    if (!res.ok) {
      throw new TetherError("status", `refresh: ${res.status}`, {
        status: res.status,
        body: await jsonOf(res),
      });
    }
    const answer = await jsonOf(res);
    const next = readRefresh(answer, this.clock.now());
    if (!this.session || sessionKey(this.session) !== sessionKey(old)) {
      // Logged out (or in again) while the refresh was on the way.
      throw new TetherError("not_logged_in", "the session ended during the refresh");
    }
    if (this.session.refreshToken !== old.refreshToken) {
      // Another tab's refresh of this session was adopted while ours was on
      // the way (its message came after the lock): the proxy's grace window
      // answered ours with the same successors. Keep what the tab holds.
      const now = this.session.server;
      return {
        server: { ...now },
        serverChanged: now.id !== old.server.id,
        reason: isRecord(answer) && typeof answer.reason === "string" ? answer.reason : "",
      };
    }
    const reason = isRecord(answer) && typeof answer.reason === "string" ? answer.reason : "";
    const serverChanged = isRecord(answer) && answer.serverChanged === true;
    await this.adopt(next);
    this.broadcast(next, reason);
    this.emit("refreshed", {
      server: { ...next.server },
      serverChanged,
      reason,
      cause,
      fromTab: false,
    });
    if (serverChanged || next.server.id !== old.server.id) {
      this.emit("serverchanged", {
        message: SERVER_CHANGED_MESSAGE,
        from: { ...old.server },
        to: { ...next.server },
        reason,
      });
    }
    this.succeeded();
    return { server: { ...next.server }, serverChanged, reason };
  }

  /** The closest server's id; a bad or non-2xx answer leaves it out, only a failure to get through is an error. */
  private async closest(global: string): Promise<string | null> {
    const res = await this.sendJson("closestToMe", "GET", join(global, "/closestToMe"));
    if (!res.ok) return null;
    const body = await jsonOf(res);
    return isRecord(body) && typeof body.closestServerId === "string" ? body.closestServerId : null;
  }

  /** After a `421`: the locked server is the one named (or at least its URL). */
  private relock(url: string, server: ServerSummary | null): ServerSummary {
    const s = this.current();
    const to = server ?? { ...s.server, url };
    this.session = { ...s, server: to };
    this.store(this.session);
    return { ...to };
  }

  /** Takes `s` as the session: keeps it, stores it, schedules its refresh. */
  private async adopt(s: TetherSession): Promise<void> {
    this.session = s;
    await this.storage.save(s);
    this.schedule();
  }

  /** Saves without waiting; a failing storage is reported, not fatal. */
  private store(s: TetherSession): void {
    Promise.resolve()
      .then(() => this.storage.save(s))
      .catch((e: unknown) => console.error("tether: cannot store the session", e));
  }

  private async signOut(reason: "logout" | "expired" | "other-tab", old: TetherSession) {
    // Another login replaced the session meanwhile: it stands.
    if (this.session && this.session.refreshToken !== old.refreshToken) return;
    this.session = null;
    this.clearTimer();
    this.remoteCritical.clear();
    await this.storage.save(null);
    if (reason !== "other-tab") {
      this.postTab({ t: "tether", type: "signedout", key: sessionKey(old) });
    }
    this.emit("signedout", { reason });
  }

  // ---- internals: timers and waits ---------------------------------------

  private clearTimer(): void {
    if (this.refreshTimer !== null) {
      this.clock.clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
    }
  }

  /** Arms the refresh timer for the current session. */
  private schedule(): void {
    this.clearTimer();
    const s = this.session;
    if (!s || !this.opts.autoRefresh || this.closed) return;
    const due = expiresAt(s) - s.expiresIn * 1000 * this.opts.refreshMargin;
    this.armAt(due, s);
  }

  private armAt(at: number, s: TetherSession): void {
    const delay = Math.max(0, at - this.clock.now());
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = null;
      void this.timedRefresh(s);
    }, delay);
  }

  private async timedRefresh(s: TetherSession): Promise<void> {
    if (this.session?.refreshToken !== s.refreshToken || this.closed) return;
    try {
      await this.refreshFrom(s, "expiry", null);
    } catch (e) {
      if (!(e instanceof TetherError && e.unreachable)) return;
      if (this.session?.refreshToken !== s.refreshToken) return;
      // Try again while the token lasts; past that, the next request does
      // the reconnect waits.
      const left = expiresAt(s) - this.clock.now();
      if (left > 0 && this.refreshTimer === null) {
        this.armAt(this.clock.now() + Math.min(5_000, left / 2), s);
      }
    }
  }

  /**
   * The "Reconnecting…" wait: `reconnectWait` plus jitter, with a
   * `reconnecting` event at its start and every second. Calls that need a
   * wait while one runs share it. Resolves the caller's new count of waits,
   * or fails with `no_server_available` when they are spent.
   */
  private async reconnectWait(spent: number, last: Error): Promise<number> {
    if (spent >= this.opts.maxReconnectAttempts) {
      throw new TetherError(
        "no_server_available",
        `no server could be reached after ${spent} reconnect waits`,
        { cause: last },
      );
    }
    if (this.closed) throw new TetherError("no_server_available", "the client was closed");
    if (!this.waiting) {
      this.waitsSinceSuccess += 1;
      const attempt = this.waitsSinceSuccess;
      const waitMs = Math.round(
        this.opts.reconnectWait * (1 + this.opts.reconnectJitter * this.random()),
      );
      const end = this.clock.now() + waitMs;
      let timer: unknown = null;
      let finish: () => void = () => {};
      const done = new Promise<void>((resolve) => {
        finish = () => {
          if (timer !== null) this.clock.clearTimeout(timer);
          timer = null;
          this.waiting = null;
          resolve();
        };
      });
      const tick = () => {
        const left = end - this.clock.now();
        if (left <= 0) {
          finish();
          return;
        }
        this.emit("reconnecting", { secondsLeft: Math.ceil(left / 1000), attempt, waitMs });
        timer = this.clock.setTimeout(tick, Math.min(1000, left));
      };
      this.waiting = { done, skip: () => finish() };
      tick();
    }
    await this.waiting?.done;
    return spent + 1;
  }

  /** Something worked: ends the "Reconnecting…" state. */
  private succeeded(): void {
    if (this.waitsSinceSuccess > 0 && this.waiting === null) {
      const attempts = this.waitsSinceSuccess;
      this.waitsSinceSuccess = 0;
      this.emit("reconnected", { server: this.server, attempts });
    }
  }

  // ---- internals: tabs ----------------------------------------------------

  private criticalAnywhere(): boolean {
    if (this.criticalCount > 0) return true;
    const now = this.clock.now();
    for (const [tab, since] of this.remoteCritical) {
      if (now - since < CRITICAL_STALE_MS) return true;
      this.remoteCritical.delete(tab);
    }
    return false;
  }

  private tellCritical(active: boolean): void {
    if (this.session) {
      this.postTab({
        t: "tether",
        type: "critical",
        key: sessionKey(this.session),
        from: this.tabId,
        active,
      });
    }
  }

  private broadcast(s: TetherSession, reason: string): void {
    this.postTab({ t: "tether", type: "session", key: sessionKey(s), session: s, reason });
  }

  private postTab(message: TabMessage): void {
    if (!this.channel || this.closed) return;
    try {
      this.channel.postMessage(message);
    } catch (e) {
      console.error("tether: cannot post to the tab channel", e);
    }
  }

  private receive(data: unknown): void {
    if (!isRecord(data) || data.t !== "tether" || this.closed) return;
    const msg = data as TabMessage;
    const mine = this.session ? sessionKey(this.session) : null;
    switch (msg.type) {
      case "hello":
        if (this.session) this.broadcast(this.session, "handoff");
        return;
      case "session": {
        if (!isSession(msg.session)) return;
        if (!this.session) {
          this.handoff?.(msg.session);
          return;
        }
        if (msg.key !== mine) return;
        const cur = this.session;
        if (
          msg.session.refreshToken === cur.refreshToken ||
          msg.session.obtainedAt < cur.obtainedAt
        ) {
          return;
        }
        // Another tab refreshed this session: take its tokens instead of
        // rotating the refresh token again.
        void this.adopt(msg.session).catch((e: unknown) =>
          console.error("tether: cannot store the session", e),
        );
        // A call counting down can go on now with these tokens.
        this.waiting?.skip();
        this.emit("refreshed", {
          server: { ...msg.session.server },
          serverChanged: msg.session.server.id !== cur.server.id,
          reason: msg.reason,
          cause: null,
          fromTab: true,
        });
        if (msg.session.server.id !== cur.server.id) {
          this.emit("serverchanged", {
            message: SERVER_CHANGED_MESSAGE,
            from: { ...cur.server },
            to: { ...msg.session.server },
            reason: msg.reason,
          });
        }
        this.succeeded();
        return;
      }
      case "signedout":
        if (this.session && msg.key === mine) void this.signOut("other-tab", this.session);
        return;
      case "critical":
        if (msg.key !== mine) return;
        if (msg.active) this.remoteCritical.set(msg.from, this.clock.now());
        else this.remoteCritical.delete(msg.from);
        return;
    }
  }
}

// ---- helpers --------------------------------------------------------------

function nonNegative(name: string, v: number): number {
  if (!(Number.isFinite(v) && v >= 0)) {
    throw new TetherError("config", `${name} ${v} is not a non-negative number`);
  }
  return v;
}

function expiresAt(s: TetherSession): number {
  return s.obtainedAt + s.expiresIn * 1000;
}

/** Less than `margin × lifetime` remains at `now` (or the token expired). */
export function refreshDue(s: TetherSession, now: number, margin: number): boolean {
  const remaining = expiresAt(s) - now;
  return remaining <= 0 || remaining < s.expiresIn * 1000 * margin;
}

/**
 * Names a session across tabs and rotations: the refresh family (`fam`
 * claim of the refresh token, read without verifying: only the proxy
 * needs to trust it), else the subject.
 */
export function sessionKey(s: TetherSession): string {
  const claims = jwtClaims(s.refreshToken) ?? jwtClaims(s.accessToken);
  if (claims && typeof claims.fam === "string") return `fam:${claims.fam}`;
  if (claims && typeof claims.sub === "string") return `sub:${claims.sub}`;
  return "session";
}

function jwtClaims(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "="));
    const v: unknown = JSON.parse(json);
    return isRecord(v) ? v : null;
  } catch {
    return null;
  }
}

function readRefresh(body: unknown, now: number): TetherSession {
  const bad = (d: string) => new TetherError("bad_answer", `refresh: ${d}`, { body });
  if (!isRecord(body)) throw bad("the body is not a JSON object");
  const { accessToken, refreshToken, expiresIn } = body;
  if (typeof accessToken !== "string" || accessToken === "") throw bad("no accessToken");
  if (typeof refreshToken !== "string" || refreshToken === "") throw bad("no refreshToken");
  if (typeof expiresIn !== "number" || !(expiresIn > 0)) throw bad("expiresIn is not positive");
  const server = asServer(body.server);
  if (!server) throw bad("no server {id, url, region}");
  if (!isHttpUrl(server.url)) throw bad(`server.url ${JSON.stringify(server.url)} is not http(s)`);
  return { accessToken, refreshToken, expiresIn, obtainedAt: now, server };
}

function asServer(v: unknown): ServerSummary | null {
  if (!isRecord(v)) return null;
  const { id, url, region } = v;
  if (typeof id !== "string" || typeof url !== "string" || typeof region !== "string") {
    return null;
  }
  return { id, url, region };
}

function isSession(v: unknown): v is TetherSession {
  return (
    isRecord(v) &&
    typeof v.accessToken === "string" &&
    typeof v.refreshToken === "string" &&
    typeof v.expiresIn === "number" &&
    typeof v.obtainedAt === "number" &&
    asServer(v.server) !== null
  );
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === "http:" || u.protocol === "https:") && u.host !== "";
  } catch {
    return false;
  }
}

function checkUrl(s: string, what: string): void {
  if (!isHttpUrl(s)) {
    throw new TetherError("config", `${what}: ${JSON.stringify(s)} is not an http(s) URL`);
  }
}

/** `base` + `path`, with exactly one slash between them. */
export function join(base: string, path: string): string {
  return `${base.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`;
}

async function jsonOf(res: Response): Promise<unknown> {
  try {
    return JSON.parse(await res.clone().text());
  } catch {
    return null;
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A macrotask later: queued messages (the tab channel's) are dispatched first. */
function nextTask(): Promise<void> {
  if (typeof MessageChannel === "undefined") {
    return new Promise((resolve) => globalThis.setTimeout(resolve, 0));
  }
  return new Promise((resolve) => {
    const c = new MessageChannel();
    c.port1.onmessage = () => {
      c.port1.close();
      resolve();
    };
    c.port2.postMessage(null);
  });
}

/** Aborts when any of `signals` does (`AbortSignal.any` where the browser has it). */
function anySignal(signals: AbortSignal[]): AbortSignal {
  const any = (AbortSignal as { any?: (s: AbortSignal[]) => AbortSignal }).any;
  if (any) return any.call(AbortSignal, signals);
  const c = new AbortController();
  for (const s of signals) {
    if (s.aborted) {
      c.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => c.abort(s.reason), { once: true });
  }
  return c.signal;
}
