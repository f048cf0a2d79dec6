import { LapseError } from "./errors.js";
import type { components } from "./schema.js";
import { sseData } from "./sse.js";

type Schemas = components["schemas"];
export type Session = Schemas["Session"];
export type Participant = Schemas["Participant"];
export type Summary = Schemas["Summary"];
export type LapseEvent = Schemas["Event"];
export type EventPage = Schemas["EventPage"];
export type SessionList = Schemas["SessionList"];
export type Explanation = Schemas["Explanation"];
export type SweepReport = Schemas["SweepReport"];
export type BeatResult = Schemas["BeatResult"];
export type PolicyPreview = Schemas["Preview"];
export type Reloaded = Schemas["Reloaded"];
/** A session as created: `kind` is any kind the server is configured with. */
export type NewSession = Omit<Schemas["NewSession"], "kind"> & { kind: string };
export type SessionPatch = Schemas["SessionPatch"];
export type Status = Session["status"];

export interface LapseOptions {
  /** Where lapse listens, e.g. `http://localhost:8080`. */
  baseUrl: string;
  /** A service or admin key (sent as `X-API-Key`). */
  apiKey?: string;
  /** A user's JWT (sent as `Authorization: Bearer`). */
  token?: string;
  /** The user a service key acts for (`X-Actor`). */
  actor?: string;
  /** Retries of a request refused for now (429, 503) or whose answer was lost; default 2. */
  retries?: number;
  /** A `fetch` of your own (tests, instrumentation); the platform's by default. */
  fetch?: typeof fetch;
}

export interface EventFilter {
  kind?: string;
  /** Event types or globs (`session.*`), as `?type=` takes them. */
  type?: string | string[];
  session?: string;
}

/** Longest wait between retries, whatever `Retry-After` says (ms). */
const MAX_RETRY_WAIT = 5_000;

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

function backoff(error: LapseError | undefined, attempt: number): number {
  if (error?.retryAfter !== undefined) return Math.min(error.retryAfter * 1000, MAX_RETRY_WAIT);
  return Math.min(200 * 2 ** attempt, MAX_RETRY_WAIT);
}

function query(params: object): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params) as [string, unknown][]) {
    if (v === undefined) continue;
    q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

const seg = encodeURIComponent;

/** A fresh idempotency key: a UUID where the platform has Web Crypto (Node 19+, browsers, Deno, edge). */
function newKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/** The lapse API (SPEC §6), a method per route. Works wherever `fetch` does. */
export class Lapse {
  readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly retries: number;
  private readonly fetch: typeof fetch;

  constructor(options: LapseOptions) {
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.retries = options.retries ?? 2;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.headers = { accept: "application/json" };
    if (options.apiKey) this.headers["x-api-key"] = options.apiKey;
    if (options.token) this.headers.authorization = `Bearer ${options.token}`;
    if (options.actor) this.headers["x-actor"] = options.actor;
  }

  /**
   * Sends one request. POSTs carry an `Idempotency-Key` (the same on every retry), so a
   * retried POST acts once; GET and DELETE are retried as they are.
   */
  async request<T>(method: string, path: string, body?: unknown, idempotencyKey?: string): Promise<T> {
    const headers: Record<string, string> = { ...this.headers };
    if (body !== undefined) headers["content-type"] = "application/json";
    const key = method === "POST" ? (idempotencyKey ?? newKey()) : undefined;
    if (key) headers["idempotency-key"] = key;
    for (let attempt = 0; ; attempt++) {
      let error: LapseError | undefined;
      try {
        const response = await this.fetch(`${this.baseUrl}${path}`, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        if (response.ok) {
          const text = await response.text();
          return (text ? JSON.parse(text) : undefined) as T;
        }
        error = await LapseError.from(response);
        if (!error.retryable || attempt >= this.retries) throw error;
      } catch (e) {
        if (e instanceof LapseError) throw e;
        // The request or its answer was lost: retry what is safe to retry.
        if (attempt >= this.retries || method === "PATCH") throw e;
      }
      await sleep(backoff(error, attempt));
    }
  }

  // Sessions
  createSession(session: NewSession, options: { idempotencyKey?: string } = {}): Promise<Session> {
    return this.request("POST", "/v1/sessions", session, options.idempotencyKey);
  }
  getSession(id: string): Promise<Session> {
    return this.request("GET", `/v1/sessions/${seg(id)}`);
  }
  listSessions(filter: { kind?: string; status?: Status; host?: string; participant?: string; limit?: number; cursor?: string } = {}): Promise<SessionList> {
    return this.request("GET", `/v1/sessions${query(filter)}`);
  }
  updateSession(id: string, patch: SessionPatch): Promise<Session> {
    return this.request("PATCH", `/v1/sessions/${seg(id)}`, patch);
  }
  deleteSession(id: string): Promise<void> {
    return this.request("DELETE", `/v1/sessions/${seg(id)}`);
  }
  start(id: string): Promise<Session> {
    return this.request("POST", `/v1/sessions/${seg(id)}/start`);
  }
  /** Completes the session: `{success, session, summary}`. */
  end(id: string): Promise<Schemas["Ended"]> {
    return this.request("POST", `/v1/sessions/${seg(id)}/end`);
  }
  cancel(id: string): Promise<Session> {
    return this.request("POST", `/v1/sessions/${seg(id)}/cancel`);
  }
  reopen(id: string): Promise<Session> {
    return this.request("POST", `/v1/sessions/${seg(id)}/reopen`);
  }
  summary(id: string): Promise<Summary> {
    return this.request("GET", `/v1/sessions/${seg(id)}/summary`);
  }
  explain(id: string): Promise<Explanation> {
    return this.request("GET", `/v1/sessions/${seg(id)}/explain`);
  }

  // Participants and presence
  join(id: string, user: string, options: { role?: "host" | "member"; via?: "invite" | "direct" } = {}): Promise<Participant> {
    return this.request("POST", `/v1/sessions/${seg(id)}/participants`, { user, ...options });
  }
  leave(id: string, user: string): Promise<void> {
    return this.request("DELETE", `/v1/sessions/${seg(id)}/participants/${seg(user)}`);
  }
  heartbeat(id: string, user: string): Promise<void> {
    return this.request("POST", `/v1/sessions/${seg(id)}/heartbeat`, { user });
  }
  /** Many beats in one request (at most 1,000). */
  heartbeats(beats: { session: string; user: string }[]): Promise<BeatResult> {
    return this.request("POST", "/v1/heartbeats", { beats });
  }
  activity(id: string, type: string, options: { user?: string; count?: number } = {}): Promise<void> {
    return this.request("POST", `/v1/sessions/${seg(id)}/activity`, { type, ...options });
  }

  // Events
  /** One page of events after `after`; call again with `page.next_after`. */
  events(filter: EventFilter & { after?: number; limit?: number } = {}): Promise<EventPage> {
    return this.request("GET", `/v1/events${query(filter)}`);
  }
  sessionEvents(id: string, page: { after?: number; limit?: number } = {}): Promise<EventPage> {
    return this.request("GET", `/v1/sessions/${seg(id)}/events${query(page)}`);
  }

  /**
   * Follows the event stream (server-sent events) as an async iterator. After a drop it
   * reconnects and resumes after the last `seq` it gave; start from a stored cursor with
   * `after`. Ends when `signal` aborts (or the loop breaks).
   */
  async *streamEvents(filter: EventFilter & { after?: number; signal?: AbortSignal } = {}): AsyncGenerator<LapseEvent> {
    const { after, signal, ...rest } = filter;
    let last = after;
    for (let attempt = 0; !signal?.aborted; attempt++) {
      const headers: Record<string, string> = { ...this.headers, accept: "text/event-stream" };
      if (last !== undefined) headers["last-event-id"] = String(last);
      try {
        const response = await this.fetch(`${this.baseUrl}/v1/events${query(rest)}`, { headers, signal });
        if (!response.ok || !response.body) {
          const error = await LapseError.from(response);
          if (!error.retryable) throw error;
        } else {
          attempt = 0;
          for await (const data of sseData(response.body, signal)) {
            const event = JSON.parse(data) as LapseEvent;
            last = event.seq;
            yield event;
          }
        }
      } catch (e) {
        if (e instanceof LapseError || signal?.aborted) throw e;
        // The connection dropped: resume from the last seq.
      }
      await sleep(backoff(undefined, attempt), signal);
    }
  }

  // Operations
  sweep(options: { dryRun?: boolean; kind?: string } = {}): Promise<SweepReport> {
    return this.request("POST", `/v1/sweep${query({ dry_run: options.dryRun, kind: options.kind })}`);
  }
  health(): Promise<Record<string, unknown>> {
    return this.request("GET", "/v1/health");
  }
  /**
   * What new rules (TOML: a whole configuration file, or only its `[kinds.*]` tables) would do
   * to the live sessions: whose deadline moves, and which would fire at once (admin). Changes
   * nothing. An invalid candidate is a `LapseError` with code `invalid_config`, its `problem`
   * naming the `kind` and `rule`.
   */
  previewPolicy(config: string, options: { at?: string; session?: string } = {}): Promise<PolicyPreview> {
    const body = options.at === undefined ? { config } : { config, at: options.at };
    return this.request("POST", `/v1/policy/preview${query({ session: options.session })}`, body);
  }
  /**
   * Has lapse read its configuration file again and put its rules in force (admin). Refused
   * with code `rollout_refused` when more than `[rollout] max_immediate` sessions would fire
   * at once, unless `force`.
   */
  reloadConfig(options: { force?: boolean } = {}): Promise<Reloaded> {
    return this.request("POST", `/v1/admin/config/reload${query({ force: options.force })}`);
  }
  stats(): Promise<Record<string, unknown>> {
    return this.request("GET", "/v1/stats");
  }
  /** Moves a manual clock (`LAPSE_CLOCK=manual`) by a duration such as `"30m"`. */
  async advanceClock(by: string): Promise<string> {
    const moved = await this.request<Schemas["Clock"]>("POST", "/v1/admin/clock", { advance: by });
    return moved.now;
  }
}
