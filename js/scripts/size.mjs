// The size budget of what browsers download, gzipped: CI fails above it.
// - the browser builds the Python package serves: sdk.js (the core: chat, streams, sessions with
//   persistence and the rate-limit countdown, tokens, errors) and widget.js (the core, the
//   <llmguard-chat> element and the markdown parser, marked);
// - what an app bundles from the npm build (`npm run build` first), with React left out, which React
//   apps already have: `useChat` alone must not bring the widget or marked along (the widget has its
//   own entry, `@llmguard/sdk/widget/react`), and `<ChatWidget />` is the widget plus a thin wrapper.
// Measured (gzipped): marked 15.3 KB (micromark 15.7, with GFM 21.4), the core 5.4, the element 5.
// Raised on 2026-12-02 for issue 12 (challenges, presets, degradation): minting through a
// challenge, the "checking" and "degraded" states and the widget's note and CAPTCHA slot add
// 0.6 KB to the core and 0.8 KB to widget.js, which had 0.3 KB left (sdk.js still fits 6 KB). The
// solver itself is not counted with them: it is a lazy chunk, budgeted below. An app built with
// Vite also gets Vite's preload helper (about 0.7 KB) for that lazy import(), once per app; an app
// with any lazy route already has it, and other bundlers add none.
// Raised on 2026-12-02 for issue 13 (usage left, in the browser): getUsage(), parseRateLimit() and a
// session's `usage` (fetched once, then read from each reply's RateLimit fields; Client.get without
// spending a token's use) add 0.6 KB to the core, which had 13 bytes left: sdk.js 6 → 7 KB and an
// app with useChat 7 → 8 KB. The widget's show-usage line (its count, its wording, its style) adds
// 0.4 KB more to widget.js, which had 0.5 KB left: widget.js 27 → 28 KB and an app with <ChatWidget />
// 28 → 29 KB. Measured then: sdk.js 6.6 KB, widget.js 27.5 KB, useChat 7.4 KB, <ChatWidget /> 28.2 KB.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "vite";

const KB = 1024;
const root = fileURLToPath(new URL("..", import.meta.url));

// sdk-pow.js (the proof-of-work solver with its worker) and sdk-captcha.js (the widget's CAPTCHA)
// are downloaded only when a server asks for a challenge: budgeted on their own. sdk-pow.js holds its
// own SHA-256 search twice (the worker's inlined copy and the main thread's fallback; gzip shares
// most of it): 1.8 KB on 2026-12-02, where altcha-lib's crypto.subtle solver was 1.2 KB.
const FILES = {
  "dist/browser/sdk.js": 7 * KB,
  "dist/browser/widget.js": 28 * KB,
  "dist/browser/sdk-pow.js": 2 * KB,
  "dist/browser/sdk-captcha.js": 1 * KB,
};

const APPS = [
  {
    name: "an app with useChat only (@llmguard/sdk/react)",
    code: `export { useChat } from "${root}dist/react.js";`,
    without: ["dist/widget-react.js", "chat-element", "node_modules/marked/"],
    budget: 8 * KB,
  },
  {
    name: "an app with <ChatWidget /> (@llmguard/sdk/widget/react)",
    code: `export { ChatWidget } from "${root}dist/widget-react.js";`,
    budget: 29 * KB,
    without: [],
  },
];

const gzipped = (text) => gzipSync(text, { level: 9 }).length;
let failed = false;
function report(what, bytes, size, budget, problem = "") {
  const verdict = problem || (size <= budget ? "ok" : "OVER BUDGET");
  console.log(`${what}: ${bytes} bytes, ${size} gzipped (budget ${budget}) ${verdict}`);
  failed ||= verdict !== "ok";
}

for (const [file, budget] of Object.entries(FILES)) {
  const bytes = readFileSync(new URL(`../${file}`, import.meta.url));
  report(file, bytes.length, gzipped(bytes), budget);
}

for (const app of APPS) {
  const output = await build({
    configFile: false,
    logLevel: "silent",
    root,
    plugins: [{ name: "app", resolveId: (id) => (id === "app" ? "\0app" : null), load: (id) => (id === "\0app" ? app.code : null) }],
    build: {
      write: false,
      minify: true,
      target: "es2022",
      rollupOptions: { input: "app", external: ["react", "react/jsx-runtime"], preserveEntrySignatures: "strict" },
    },
  });
  const all = (Array.isArray(output) ? output : [output]).flatMap((result) => result.output).filter((item) => item.type === "chunk");
  // What loads with the page: the entry and what it imports statically, not the lazy chunks (the solver).
  const chunks = [];
  const wanted = all.filter((chunk) => chunk.isEntry).map((chunk) => chunk.fileName);
  for (const name of wanted) {
    const chunk = all.find((item) => item.fileName === name);
    if (!chunk || chunks.includes(chunk)) continue;
    chunks.push(chunk);
    wanted.push(...chunk.imports);
  }
  const code = chunks.map((chunk) => chunk.code).join("");
  const modules = chunks.flatMap((chunk) => chunk.moduleIds);
  const unwanted = app.without.filter((part) => modules.some((id) => id.includes(part)));
  report(app.name, Buffer.byteLength(code), gzipped(code), app.budget, unwanted.length ? `BUNDLES ${unwanted.join(", ")}` : "");
}
process.exit(failed ? 1 : 0);
