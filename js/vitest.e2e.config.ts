import { defineConfig } from "vitest/config";

// Browser end-to-end tests: real `llmguard serve --demo` processes and Debian's Chromium.
export default defineConfig({
  test: {
    include: ["e2e/**/*.e2e.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    fileParallelism: false,
  },
});
