import { defineConfig, type UserConfig } from "vite";

// Three builds:
// - the npm package (`vite build`): library mode, ESM entries for `.`, `./react` (useChat),
//   `./widget` and `./widget/react` (<ChatWidget />), dependencies left to the app's bundler;
// - `vite build --mode browser`: dist/browser/sdk.js, the core SDK as one minified ES module
//   (served by the Python package at /sdk.js), and sdk-pow.js, the proof-of-work solver it imports
//   when a server asks for a challenge (/sdk-pow.js);
// - `vite build --mode browser-widget`: dist/browser/widget.js, the SDK plus <llmguard-chat>
//   (served at /widget.js), sdk-pow.js again, and sdk-captcha.js (/sdk-captcha.js).
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
          // What is loaded only when needed (the proof-of-work solver, the widget's CAPTCHA) is an
          // entry of its own, served beside sdk.js and widget.js (/sdk-pow.js, /sdk-captcha.js) and
          // imported by URL: a dynamic import() of a chunk would bring Vite's preload helper along.
          // Neither imports from the core, so both builds write the same sdk-pow.js.
          input: widget
            ? { widget: "src/widget/register.ts", "sdk-pow": "src/pow.ts", "sdk-captcha": "src/widget/captcha.ts" }
            : { sdk: "src/index.ts", "sdk-pow": "src/pow.ts" },
          preserveEntrySignatures: "strict",
          output: { format: "es", entryFileNames: "[name].js" },
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
