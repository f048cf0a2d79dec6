import type { Lapse } from "./client.js";
import { LapseError } from "./errors.js";

/** What a presence reports: beating (`online`), failing to (`offline`), or the session is over. */
export type PresenceState = "online" | "offline" | "ended";

export interface PresenceOptions {
  /** How often to beat: `"30s"`, `"1m"`, or milliseconds. Default 30 s. */
  every?: string | number;
  /** Called when the state changes. */
  onChange?: (state: PresenceState) => void;
}

/** One user's presence in one session, kept by heartbeats until `stop()` or the session ends. */
export interface Presence {
  readonly session: string;
  readonly user: string;
  readonly state: PresenceState | undefined;
  stop(): void;
}

/** `"30s"` / `"2m"` / `"500ms"` / a number of ms. */
export function millis(every: string | number): number {
  if (typeof every === "number") return every;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(every.trim());
  if (!m) throw new Error(`presence interval \`${every}\`: use ms, s, m or h (e.g. "30s")`);
  const n = Number(m[1]);
  return n * ({ ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const)[m[2] as "ms" | "s" | "m" | "h"];
}

/** Refusals after which beating is pointless: the session (or the user's place in it) is gone. */
const OVER = new Set(["not_found", "invalid_transition", "not_self", "forbidden"]);

interface Member {
  session: string;
  user: string;
  every: number;
  due: number;
  state: PresenceState | undefined;
  onChange?: (state: PresenceState) => void;
}

/**
 * All of a client's presences, beating together: each tick sends the beats that are due as
 * one `POST /v1/heartbeats`. While the page is hidden (browsers) nothing is sent; when it
 * shows again every presence beats at once.
 */
export class Beater {
  private members = new Set<Member>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private tick = Infinity;
  private sending = false;

  constructor(private readonly lapse: Lapse) {
    const doc = (globalThis as { document?: Document }).document;
    doc?.addEventListener("visibilitychange", () => {
      if (doc.visibilityState === "visible") void this.beat(true);
    });
  }

  add(session: string, user: string, options: PresenceOptions = {}): Presence {
    const member: Member = { session, user, every: millis(options.every ?? "30s"), due: 0, state: undefined, onChange: options.onChange };
    this.members.add(member);
    this.schedule();
    void this.beat(false);
    const beater = this;
    return {
      session,
      user,
      get state() {
        return member.state;
      },
      stop() {
        beater.members.delete(member);
        beater.schedule();
      },
    };
  }

  private schedule(): void {
    const tick = Math.min(...[...this.members].map((m) => m.every));
    if (tick === this.tick) return;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.tick = tick;
    if (Number.isFinite(tick)) this.timer = setInterval(() => void this.beat(false), Math.max(tick / 2, 50));
  }

  private hidden(): boolean {
    const doc = (globalThis as { document?: Document }).document;
    return doc?.visibilityState === "hidden";
  }

  /** Sends the beats that are due (all of them with `all`), in batches of 1,000. */
  async beat(all: boolean): Promise<void> {
    if (this.sending || this.hidden()) return;
    const now = Date.now();
    const due = [...this.members].filter((m) => all || m.due <= now);
    if (due.length === 0) return;
    this.sending = true;
    try {
      for (let i = 0; i < due.length; i += 1000) {
        const batch = due.slice(i, i + 1000);
        for (const m of batch) m.due = now + m.every;
        try {
          const result = await this.lapse.heartbeats(batch.map((m) => ({ session: m.session, user: m.user })));
          const refused = new Map(result.rejected.map((r) => [r.index, r.code]));
          batch.forEach((m, index) => {
            const code = refused.get(index);
            if (code === undefined) return this.set(m, "online");
            if (OVER.has(code)) {
              this.members.delete(m);
              return this.set(m, "ended");
            }
            this.set(m, "offline");
          });
        } catch (e) {
          // lapse out of reach or refusing for now: keep beating, say so.
          for (const m of batch) this.set(m, "offline");
          if (!(e instanceof LapseError) && !(e instanceof TypeError)) throw e;
        }
      }
    } finally {
      this.sending = false;
      this.schedule();
    }
  }

  private set(m: Member, state: PresenceState): void {
    if (m.state === state) return;
    m.state = state;
    m.onChange?.(state);
  }
}
