import { defineConfig } from "vite";

// Two builds of src/index.ts:
// - the npm package (`vite build`): library mode, ESM, dependencies left to the app's bundler;
// - the browser build (`vite build --mode browser`): one minified ESM file with its dependencies
//   inside, which the Python package serves at /sdk.js. (Library mode never minifies ESM
//   whitespace, so this one is built as an app with a single script entry.)
export default defineConfig(({ mode }) => {
  const browser = mode === "browser";
  const define = {
    // Served from the proxy, the SDK talks to the proxy it came from unless configured.
    __LLMGUARD_BROWSER_BUILD__: JSON.stringify(browser),
  };
  if (browser) {
    return {
      define,
      build: {
        target: "es2022",
        outDir: "dist/browser",
        emptyOutDir: true,
        minify: true,
        modulePreload: false,
        rollupOptions: {
          input: "src/index.ts",
          preserveEntrySignatures: "strict",
          output: { format: "es", entryFileNames: "sdk.js" },
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
      lib: { entry: "src/index.ts", formats: ["es"], fileName: () => "index.js" },
      rollupOptions: { external: ["eventsource-parser"] },
    },
  };
});
