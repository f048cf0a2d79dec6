/**
 * A real `lapse serve` for the tests: a temp SQLite database, a manual clock, an admin key,
 * and a webhook receiver of the tests' own, all gone again once it is stopped. The binary is
 * `$LAPSE_BIN`, else the workspace's release build, else its debug build.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo, createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ADMIN_KEY = "test-admin-key";
/** A service key: acts for the user named in `X-Actor`, with that user's rights. */
export const SERVICE_KEY = "test-service-key";
/** The cron secret: valid on `/v1/sweep` only. */
export const CRON_SECRET = "test-cron-secret";
export const WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY3OA==";

const root = resolve(import.meta.dirname, "../../..");

function binary(): string {
  if (process.env.LAPSE_BIN) return process.env.LAPSE_BIN;
  for (const profile of ["release", "debug"]) {
    const path = join(root, "target", profile, "lapse");
    if (existsSync(path)) return path;
  }
  throw new Error("no lapse binary: build it (cargo build -p lapse) or set LAPSE_BIN");
}

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = netServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => done(port));
    });
  });
}

export interface Received {
  headers: Record<string, string>;
  body: string;
}

export interface Running {
  url: string;
  received: Received[];
  stop(): Promise<void>;
}

export async function startLapse(): Promise<Running> {
  const received: Received[] = [];
  const receiver: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      received.push({ headers: req.headers as Record<string, string>, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((done) => receiver.listen(0, "127.0.0.1", done));
  const hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hooks/lapse`;

  const dir = mkdtempSync(join(tmpdir(), "lapse-ts-"));
  const config = join(dir, "lapse.toml");
  writeFileSync(
    config,
    `[server]
cors_origins = ["*"]  # the browser test's page calls lapse from an origin of its own

[rate_limits]
default = "100000/min"

[[webhooks]]
url = "${hook}"
secret_env = "TEST_WEBHOOK_SECRET"
events = ["session.created"]
kinds = ["study"]
`,
  );
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LAPSE_LISTEN: `127.0.0.1:${port}`,
    DATABASE_URL: `sqlite://${join(dir, "lapse.db")}`,
    LAPSE_CLOCK: "manual",
    LAPSE_ADMIN_KEY: ADMIN_KEY,
    LAPSE_SERVICE_KEY: SERVICE_KEY,
    CRON_SECRET,
    TEST_WEBHOOK_SECRET: WEBHOOK_SECRET,
    RUST_LOG: "warn",
  };
  delete env.LAPSE_CONFIG;
  const child: ChildProcess = spawn(binary(), ["serve", "--config", config], { env, stdio: "inherit" });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (i > 300 || child.exitCode !== null) throw new Error("lapse serve did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    received,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
      receiver.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
