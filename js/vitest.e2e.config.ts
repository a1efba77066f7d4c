import { defineConfig } from "vitest/config";

// Integration and browser tests: real `llmguard serve --demo` processes, Node's fetch and Debian's Chromium.
export default defineConfig({
  define: { __LLMGUARD_BROWSER_BUILD__: "false" },
  test: {
    include: ["e2e/**/*.e2e.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    fileParallelism: false,
  },
});
