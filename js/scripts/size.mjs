// The size budget of the browser build, gzipped: CI fails above it.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

// sdk.js: the core (chat, streams, sessions, tokens, errors). widget.js: the core, the
// <llmguard-chat> element and the markdown parser (marked), without React, which React apps
// already have (the React layer is a thin wrapper around the element).
// Measured (gzipped): marked 15.3 KB (micromark 15.7, with GFM 21.4), the core 4.7, the element 5.
const BUDGETS = { "dist/browser/sdk.js": 5 * 1024, "dist/browser/widget.js": 26 * 1024 };

let failed = false;
for (const [file, budget] of Object.entries(BUDGETS)) {
  const bytes = readFileSync(new URL(`../${file}`, import.meta.url));
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  const verdict = gzipped <= budget ? "ok" : "OVER BUDGET";
  console.log(`${file}: ${bytes.length} bytes, ${gzipped} gzipped (budget ${budget}) ${verdict}`);
  failed ||= gzipped > budget;
}
process.exit(failed ? 1 : 0);
