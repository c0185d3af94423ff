import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

// The SDK is used from its TypeScript sources (clients/typescript, whose own node_modules hold
// its dependencies), so the app and the SDK are always built together.
const sdk = fileURLToPath(new URL("../clients/typescript/src/index.ts", import.meta.url));

export default defineConfig({
  resolve: { alias: { "@chatsphere/client": sdk } },
  build: { outDir: "dist", target: "es2022", sourcemap: true },
  server: {
    // `npm run dev` against the stack of scripts/dev on port 8000.
    proxy: {
      "/auth": "http://127.0.0.1:8000",
      "/chat": "http://127.0.0.1:8000",
      "/ws": { target: "ws://127.0.0.1:8000", ws: true },
    },
  },
});
