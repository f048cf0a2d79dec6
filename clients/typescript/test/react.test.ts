// @vitest-environment jsdom
/** The React hooks, rendered with react-dom in jsdom, against a real `lapse serve`. */
import { act, createElement } from "react";
import { createRoot } from "react-dom/client";
import { afterAll, beforeAll, expect, it } from "vitest";

import { Lapse } from "../src/index.js";
import { LapseProvider, usePresence, useSession } from "../src/react.js";
import { ADMIN_KEY, type Running, startLapse } from "./server.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

let server: Running;
let lapse: Lapse;

beforeAll(async () => {
  server = await startLapse();
  lapse = new Lapse({ baseUrl: server.url, apiKey: ADMIN_KEY });
});
afterAll(async () => {
  await server?.stop();
});

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("timed out");
    await act(() => new Promise((r) => setTimeout(r, 20)));
  }
}

function Room({ id, user }: { id: string; user: string }) {
  const { session, error } = useSession(id);
  const presence = usePresence(id, user, { every: "100ms" });
  return createElement("p", null, error ? error.code : `${session?.status ?? "…"} ${presence ?? "…"}`);
}

it("shows a session's state as it changes, and the user's presence", async () => {
  const id = `room-${crypto.randomUUID().slice(0, 12)}`;
  await lapse.createSession({ kind: "study", id, host: "ana" });
  const container = document.createElement("div");
  const root = createRoot(container);
  await act(async () => {
    root.render(createElement(LapseProvider, { client: lapse }, createElement(Room, { id, user: "ana" })));
  });
  await until(() => container.textContent === "pending online");

  await lapse.start(id);
  await until(() => container.textContent === "active online");
  await lapse.cancel(id);
  await until(() => container.textContent === "cancelled ended");

  await act(async () => root.unmount());
});

it("says so when the session is gone", async () => {
  const container = document.createElement("div");
  const root = createRoot(container);
  await act(async () => {
    root.render(createElement(LapseProvider, { client: lapse }, createElement(Room, { id: "never-was", user: "bo" })));
  });
  await until(() => container.textContent === "not_found");
  await act(async () => root.unmount());
});
