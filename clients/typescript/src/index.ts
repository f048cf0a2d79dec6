/**
 * lapse-client: sessions, presence, events and webhooks of a lapse server, from TypeScript.
 * No runtime dependency beyond the platform's `fetch` (Node 18+, browsers, Deno, edge).
 *
 * ```ts
 * const lapse = new Lapse({ baseUrl: "http://localhost:8080", apiKey: process.env.LAPSE_KEY, actor: "ana" });
 * const room = await lapse.createSession({ kind: "study" });
 * const presence = lapse.presence(room.id, "ana", { every: "30s", onChange: console.log });
 * for await (const event of lapse.streamEvents({ session: room.id })) console.log(event.type);
 * ```
 */
import { Lapse as Api, type LapseOptions } from "./client.js";
import { Beater, type Presence, type PresenceOptions } from "./presence.js";

export { LapseError } from "./errors.js";
export type {
  BeatResult,
  EventFilter,
  EventPage,
  Explanation,
  LapseEvent,
  LapseOptions,
  NewSession,
  Participant,
  PolicyPreview,
  Reloaded,
  Session,
  SessionList,
  SessionPatch,
  Status,
  Summary,
  SweepReport,
} from "./client.js";
export type { Presence, PresenceOptions, PresenceState } from "./presence.js";
export type { components, paths } from "./schema.js";

/** The lapse API, plus presence: heartbeats kept for you. */
export class Lapse extends Api {
  private beater: Beater | undefined;

  constructor(options: LapseOptions) {
    super(options);
  }

  /**
   * Keeps `user` present in `session`: a heartbeat every `every` (30 s by default), several
   * sessions batched in one request, none while the page is hidden (one as it shows again),
   * and none once the session is over. `onChange` hears `online`, `offline` and `ended`.
   */
  presence(session: string, user: string, options: PresenceOptions = {}): Presence {
    this.beater ??= new Beater(this);
    return this.beater.add(session, user, options);
  }
}
