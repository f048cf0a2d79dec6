/**
 * Seed 000's routes on lapse, called as the plain functions Next.js calls, against a real
 * `lapse serve` (the client's test setup: a temp database, a manual clock).
 */
import { Lapse } from "lapse-client";
import { afterAll, beforeAll, expect, it } from "vitest";

import { ADMIN_KEY, CRON_SECRET, type Running, SERVICE_KEY, startLapse } from "../../../clients/typescript/test/server";
import { GET as cronSweep } from "../../../deploy/vercel/api/cron/lapse-sweep";
import { POST as endRoom } from "../app/api/study-sessions/[sessionId]/end/route";
import { POST as createRoom } from "../app/api/study-sessions/route";

let server: Running;
let admin: Lapse;

beforeAll(async () => {
  server = await startLapse();
  // The app's service key: lapse checks each call against the user in X-Actor.
  process.env.LAPSE_URL = server.url;
  process.env.LAPSE_SERVICE_KEY = SERVICE_KEY;
  admin = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY });
});
afterAll(async () => {
  await server?.stop();
});

const as = (user: string, body?: unknown) =>
  new Request("http://app.local/api", {
    method: "POST",
    headers: { "x-user": user, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

async function newRoom(host: string): Promise<string> {
  const created = await createRoom(as(host, { title: "Organic chemistry" }));
  expect(created.status).toBe(201);
  return ((await created.json()) as { id: string }).id;
}

it("ends a room with the seed's answer: duration, participants and counts", async () => {
  const id = await newRoom("alice");
  await admin.join(id, "bob");
  await admin.join(id, "carol");
  await new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, actor: "alice" }).start(id);
  await admin.activity(id, "notes", { user: "bob", count: 3 });
  await admin.activity(id, "flashcards", { user: "carol", count: 2 });
  await admin.activity(id, "messages", { user: "bob", count: 40 });
  await admin.advanceClock("45m");

  const params = { params: Promise.resolve({ sessionId: id }) };
  const notHost = await endRoom(as("bob"), params);
  expect(notHost.status).toBe(403);

  const ended = await endRoom(as("alice"), params);
  expect(ended.status).toBe(200);
  const body = (await ended.json()) as Record<string, any>;
  expect(body.success).toBe(true);
  expect(body.session).toMatchObject({ id, status: "COMPLETED", durationMinutes: 45 });
  expect(body.summary).toEqual({ participants: 3, notes: 3, flashcards: 2, messages: 40 });

  // Ending twice is refused as the seed refused it: not IN_PROGRESS any more.
  expect((await endRoom(as("alice"), params)).status).toBe(409);
});

it("needs no cleanup route: unused rooms go after 30 minutes, forgotten ones end at 6 hours", async () => {
  const unused = await newRoom("dan");
  const forgotten = await newRoom("erin");
  await new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY, actor: "erin" }).start(forgotten);

  await admin.advanceClock("31m");
  const gone = await admin.getSession(unused).catch((e: { code: string }) => e);
  expect((gone as { code: string }).code).toBe("not_found");
  expect((await admin.getSession(forgotten)).status).toBe("active");

  await admin.advanceClock("5h 30m");
  const ended = await admin.getSession(forgotten);
  expect([ended.status, ended.ended_by]).toEqual(["completed", "rule:auto-end-abandoned"]);
});

it("Vercel Cron's caller (deploy/vercel) sweeps with the cron secret and refuses anyone else", async () => {
  process.env.CRON_SECRET = CRON_SECRET;
  const cron = (auth?: string) =>
    cronSweep(new Request("http://app.local/api/cron/lapse-sweep", { headers: auth ? { authorization: auth } : {} }));
  expect((await cron()).status).toBe(401);
  expect((await cron("Bearer not-the-secret")).status).toBe(401);

  // A room nobody used: the sweep the cron asks for deletes it once 30 minutes have passed.
  const id = await newRoom("dana");
  await admin.advanceClock("31m");
  const answer = await cron(`Bearer ${CRON_SECRET}`);
  expect(answer.status).toBe(200);
  const report = (await answer.json()) as { dry_run: boolean; applied: { session: string; rule: string }[] };
  expect(report.dry_run).toBe(false);
  expect(report.applied).toContainEqual(expect.objectContaining({ session: id, rule: "delete-unused" }));
});
