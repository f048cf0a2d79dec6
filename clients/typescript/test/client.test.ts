/** The TypeScript client against a real `lapse serve` (test/server.ts): no mocks. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { Lapse, LapseError, type LapseEvent, type PresenceState } from "../src/index.js";
import { verifyWebhook, WebhookVerificationError } from "../src/webhooks.js";
import { ADMIN_KEY, type Running, startLapse, WEBHOOK_SECRET } from "./server.js";

let server: Running;
let lapse: Lapse;
const room = () => `room-${crypto.randomUUID().slice(0, 12)}`;
const until = async (check: () => boolean, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
};

beforeAll(async () => {
  server = await startLapse();
  lapse = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY });
});
afterAll(async () => {
  await server?.stop();
});

describe("sessions", () => {
  it("live and end with their summary", async () => {
    const id = room();
    const s = await lapse.createSession({ kind: "study", id, host: "ana", title: "Algebra" });
    expect([s.id, s.status, s.host]).toEqual([id, "pending", "ana"]);
    expect((await lapse.join(id, "ben")).user).toBe("ben");
    await lapse.heartbeat(id, "ben");
    await lapse.activity(id, "notes", { user: "ben", count: 3 });
    const ana = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, actor: "ana" });
    expect((await ana.start(id)).status).toBe("active");
    const ended = await ana.end(id);
    expect(ended.session.status).toBe("completed");
    expect(ended.summary.counters).toEqual({ notes: 3 });
    expect((await lapse.getSession(id)).ended_by).toBe("ana");
  });

  it("refuse with a LapseError carrying the problem code", async () => {
    const missing = await lapse.getSession("no-such-room").catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(LapseError);
    expect([(missing as LapseError).status, (missing as LapseError).code]).toEqual([404, "not_found"]);
    const id = room();
    await lapse.createSession({ kind: "study", id, host: "ana" });
    const taken = await lapse.createSession({ kind: "study", id, host: "ana" }).catch((e: LapseError) => e);
    expect((taken as LapseError).code).toBe("conflict");
  });

  it("are created once when a create is retried after a lost answer", async () => {
    let calls = 0;
    const keys: string[] = [];
    // The first answer is lost on the way back: lapse wrote it, the caller never heard.
    const flaky: typeof fetch = async (input, init) => {
      calls++;
      keys.push(new Headers(init?.headers).get("idempotency-key") ?? "");
      const response = await fetch(input, init);
      if (calls === 1) throw new TypeError("fetch failed");
      return response;
    };
    const client = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, fetch: flaky });
    const s = await client.createSession({ kind: "study", host: "retry-host" });
    expect(calls).toBe(2);
    expect(keys[0]).toBe(keys[1]);
    const listed = await lapse.listSessions({ host: "retry-host" });
    expect(listed.sessions.map((x) => x.id)).toEqual([s.id]);
  });

  it("follow the rules as the manual clock moves", async () => {
    const id = room();
    await lapse.createSession({ kind: "study", id, host: "dee" });
    // The default `study` kind deletes a room nobody used within 30 minutes.
    await lapse.advanceClock("31m");
    const gone = await lapse.getSession(id).catch((e: LapseError) => e);
    expect((gone as LapseError).code).toBe("not_found");
    const page = await lapse.events({ session: id });
    const last = page.events[page.events.length - 1]!;
    expect([last.type, last.rule]).toEqual(["session.deleted", "delete-unused"]);
  });
});

describe("events", () => {
  it("stream from a stored cursor, nothing repeated or lost", async () => {
    const id = room();
    await lapse.createSession({ kind: "study", id, host: "eve" });
    const first = await lapse.sessionEvents(id);
    const cursor = first.events[0]!.seq;
    await lapse.join(id, "fay");
    const seen: LapseEvent[] = [];
    for await (const event of lapse.streamEvents({ session: id, after: cursor })) {
      seen.push(event);
      if (event.data.user === "fay") break;
    }
    expect(seen.map((e) => [e.type, e.data.user])).toEqual([
      ["participant.joined", "eve"],
      ["participant.joined", "fay"],
    ]);
    expect(seen.every((e) => e.seq > cursor)).toBe(true);
  });

  it("follow commits live until aborted", async () => {
    const id = room();
    await lapse.createSession({ kind: "study", id, host: "gil" });
    const stop = new AbortController();
    const types: string[] = [];
    const following = (async () => {
      for await (const event of lapse.streamEvents({ session: id, type: ["session.started", "session.cancelled"], signal: stop.signal })) {
        types.push(event.type);
      }
    })().catch(() => {});
    await lapse.start(id);
    await lapse.cancel(id);
    await until(() => types.length === 2);
    stop.abort();
    await following;
    expect(types).toEqual(["session.started", "session.cancelled"]);
  });
});

describe("presence", () => {
  it("beats several sessions in one request and stops when the session is over", async () => {
    const [a, b] = [room(), room()];
    await lapse.createSession({ kind: "study", id: a, host: "hal" });
    await lapse.createSession({ kind: "study", id: b, host: "hal" });
    let batches = 0;
    const counting: typeof fetch = (input, init) => {
      if (String(input).endsWith("/v1/heartbeats")) batches++;
      return fetch(input, init);
    };
    const client = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, fetch: counting });
    const states: Record<string, PresenceState[]> = { [a]: [], [b]: [] };
    const pa = client.presence(a, "hal", { every: "100ms", onChange: (s) => states[a]!.push(s) });
    const pb = client.presence(b, "hal", { every: "100ms", onChange: (s) => states[b]!.push(s) });
    await until(() => pa.state === "online" && pb.state === "online");
    const before = batches;
    await new Promise((r) => setTimeout(r, 350));
    const during = batches - before;
    expect(during).toBeGreaterThan(0);
    expect(during).toBeLessThanOrEqual(8); // together: not one request per session per beat

    await lapse.cancel(a);
    await until(() => pa.state === "ended");
    expect(states[a]).toEqual(["online", "ended"]);
    expect(pb.state).toBe("online");
    pb.stop();
  });

  it("sends nothing while the page is hidden and beats once it shows", async () => {
    const listeners: (() => void)[] = [];
    const page = {
      visibilityState: "visible" as "visible" | "hidden",
      addEventListener: (_: string, f: () => void) => listeners.push(f),
    };
    (globalThis as { document?: unknown }).document = page;
    try {
      const id = room();
      await lapse.createSession({ kind: "study", id, host: "ida" });
      let beats = 0;
      const counting: typeof fetch = (input, init) => {
        if (String(input).endsWith("/v1/heartbeats")) beats++;
        return fetch(input, init);
      };
      const client = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, fetch: counting });
      const p = client.presence(id, "ida", { every: "100ms" });
      await until(() => p.state === "online");
      page.visibilityState = "hidden";
      await new Promise((r) => setTimeout(r, 150));
      const hidden = beats;
      await new Promise((r) => setTimeout(r, 300));
      expect(beats).toBe(hidden);
      page.visibilityState = "visible";
      for (const f of listeners) f();
      await until(() => beats > hidden, 2_000);
      p.stop();
    } finally {
      delete (globalThis as { document?: unknown }).document;
    }
  });
});

describe("webhooks", () => {
  it("verify with the endpoint's secret, and refuse a tampered body", async () => {
    const id = room();
    await lapse.createSession({ kind: "study", id, host: "jo" });
    let delivery: { headers: Record<string, string>; body: string } | undefined;
    await until(() => (delivery = server.received.find((r) => r.body.includes(`"${id}"`))) !== undefined);
    const event = verifyWebhook(delivery!.headers, delivery!.body, WEBHOOK_SECRET);
    expect([event.type, event.session_id]).toEqual(["session.created", id]);
    expect(delivery!.headers["webhook-id"]).toBe(event.id);
    expect(() => verifyWebhook(delivery!.headers, delivery!.body.replace('"jo"', '"mo"'), WEBHOOK_SECRET)).toThrow(
      WebhookVerificationError,
    );
  });
});

describe("policy", () => {
  it("previews new rules against live sessions, explains one under both, and reloads the file", async () => {
    const id = room();
    await lapse.createSession({ kind: "coding", id, host: "pol" });
    await lapse.advanceClock("2h");
    const hour = '[kinds.coding]\n[[kinds.coding.rules]]\nname = "expire-inactive"\non = "idle"\nafter = "1h"\ndo = "expire"\n';
    const preview = await lapse.previewPolicy(hour);
    const change = preview.changes.find((c) => c.kind === "coding" && c.rule === "expire-inactive");
    expect(change?.change).toBe("changed");
    expect(change?.fire_now.map((f) => f.session)).toContain(id);
    const one = await lapse.previewPolicy(hour, { session: id });
    expect([one.explain?.current[0]?.due, one.explain?.new[0]?.due]).toEqual([false, true]);

    const bad = await lapse
      .previewPolicy('[kinds.coding]\n[[kinds.coding.rules]]\nname = "bad"\non = "idle"\nafter = "soon"\ndo = "expire"\n')
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(LapseError);
    const problem = (bad as LapseError).problem;
    expect([(bad as LapseError).code, problem.kind, problem.rule]).toEqual(["invalid_config", "coding", "bad"]);

    // The test server's file still holds the built-in rules: in force again, nothing fires.
    const reloaded = await lapse.reloadConfig();
    expect(reloaded.reloaded).toBe(true);
    expect(reloaded.rules_version).toBeGreaterThan(1);
    expect((await lapse.getSession(id)).status).toBe("pending");
  });
});
