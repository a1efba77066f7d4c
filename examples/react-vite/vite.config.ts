import { defineConfig } from "vite";

// Two pages: index.html (the one-line <ChatWidget />) and custom.html (useChat with its own markup).
export default defineConfig({
  // Vite's own transform compiles the TSX: no React plugin is needed to build.
  oxc: { jsx: { runtime: "automatic" } },
  resolve: {
    // @llmguard/sdk is linked from ../../js, which has a React of its own in its node_modules:
    // one React for the app and the SDK, or hooks fail.
    dedupe: ["react", "react-dom"],
  },
  build: {
    rollupOptions: {
      input: { widget: "index.html", custom: "custom.html" },
    },
  },
});
