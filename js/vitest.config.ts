import { defineConfig } from "vitest/config";

// Unit tests: beside the code, no server, no browser.
export default defineConfig({
  define: { __LLMGUARD_BROWSER_BUILD__: "false" },
  test: {
    include: ["src/**/*.test.ts"],
  },
});
