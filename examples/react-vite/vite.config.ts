import { defineConfig } from "vite";

// Four pages: index.html (the one-line <ChatWidget />), custom.html (useChat with its own markup),
// openai.html (the official openai SDK on /v1) and ai-sdk.html (the Vercel AI SDK's useChat on /api/chat).
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
      input: { widget: "index.html", custom: "custom.html", openai: "openai.html", aiSdk: "ai-sdk.html" },
      onwarn(warning, warn) {
        // swr (under @ai-sdk/react) marks its modules "use client", which means nothing in an app that
        // only runs in the browser.
        if (warning.code === "MODULE_LEVEL_DIRECTIVE") return;
        warn(warning);
      },
    },
  },
});
