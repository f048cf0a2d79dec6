/**
 * The built package in Deno (from npm's `deno` package), against a real `lapse serve`: the
 * client uses only web-platform APIs (fetch, streams, Web Crypto), and this is where that is
 * checked outside Node.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";

import { ADMIN_KEY, type Running, startLapse } from "./server.js";

const root = resolve(import.meta.dirname, "..");
let server: Running;
let dist: string;

beforeAll(async () => {
  server = await startLapse();
  dist = mkdtempSync(join(tmpdir(), "lapse-client-dist-"));
  execFileSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json", "--outDir", dist], { cwd: root });
});
afterAll(async () => {
  await server?.stop();
});

const script = `
const { Lapse, LapseError } = await import(Deno.args[0]);
const lapse = new Lapse({ baseUrl: Deno.env.get("LAPSE_URL"), apiKey: Deno.env.get("LAPSE_KEY") });
const room = await lapse.createSession({ kind: "study", host: "ana", title: "From Deno" });
await lapse.join(room.id, "ben");
let refused = null;
try {
  await lapse.getSession("no-such-room");
} catch (e) {
  refused = e instanceof LapseError ? e.code : String(e);
}
const stream = lapse.streamEvents({ session: room.id, after: 0 });
const seen = [];
for await (const event of stream) {
  seen.push(event.type);
  if (seen.length === 2) break;
}
console.log(JSON.stringify({ status: room.status, refused, seen }));
`;

it("creates, joins, refuses with a LapseError and streams events in Deno", () => {
  const file = join(dist, "smoke.mjs");
  writeFileSync(file, script);
  const out = execFileSync(
    join(root, "node_modules/.bin/deno"),
    ["run", "--quiet", "--no-prompt", "--allow-net", "--allow-env", "--allow-read", file, join(dist, "index.js")],
    {
      env: {
        ...process.env,
        LAPSE_URL: server.url,
        LAPSE_KEY: ADMIN_KEY,
        DENO_DIR: join(dist, ".deno"),
        DENO_NO_UPDATE_CHECK: "1",
      },
      timeout: 15_000,
    },
  ).toString();
  expect(JSON.parse(out)).toEqual({
    status: "pending",
    refused: "not_found",
    seen: ["session.created", "participant.joined"],
  });
});
