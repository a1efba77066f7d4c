import { defineConfig, type UserConfig } from "vite";

// Three builds:
// - the npm package (`vite build`): library mode, ESM entries for `.`, `./react` (useChat),
//   `./widget` and `./widget/react` (<ChatWidget />), dependencies left to the app's bundler;
// - `vite build --mode browser`: dist/browser/sdk.js, the core SDK as one minified ES module
//   (served by the Python package at /sdk.js);
// - `vite build --mode browser-widget`: dist/browser/widget.js, the SDK plus <llmguard-chat>
//   (served at /widget.js).
// The browser files are built as apps with one script entry: library mode never minifies ESM
// whitespace.
export default defineConfig(({ mode }): UserConfig => {
  const browser = mode === "browser" || mode === "browser-widget";
  const define = {
    // Served from the proxy, the SDK talks to the proxy it came from unless configured.
    __LLMGUARD_BROWSER_BUILD__: JSON.stringify(browser),
  };
  if (browser) {
    const widget = mode === "browser-widget";
    return {
      define,
      build: {
        target: "es2022",
        outDir: "dist/browser",
        emptyOutDir: false,
        minify: true,
        modulePreload: false,
        rollupOptions: {
          input: widget ? "src/widget/register.ts" : "src/index.ts",
          preserveEntrySignatures: "strict",
          output: { format: "es", entryFileNames: widget ? "widget.js" : "sdk.js" },
        },
      },
    };
  }
  return {
    define,
    build: {
      target: "es2022",
      outDir: "dist",
      minify: false,
      lib: {
        entry: {
          index: "src/index.ts",
          react: "src/react/index.ts",
          widget: "src/widget/index.ts",
          "widget-react": "src/widget/react.ts",
        },
        formats: ["es"],
        fileName: (_format, name) => `${name}.js`,
      },
      rollupOptions: { external: ["eventsource-parser", "is-network-error", "marked", "react", "react/jsx-runtime"] },
    },
  };
});
