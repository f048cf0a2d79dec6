import { fileURLToPath } from "node:url";

import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // The client from this repository, as `npm install lapse-client` would give it.
    alias: { "lapse-client": fileURLToPath(new URL("../../clients/typescript/src/index.ts", import.meta.url)) },
  },
  test: { testTimeout: 20_000, hookTimeout: 30_000, include: ["test/**/*.test.ts"] },
});
