// The size budget of the browser build, gzipped: CI fails above it.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGETS = { "dist/browser/sdk.js": 5 * 1024 };

let failed = false;
for (const [file, budget] of Object.entries(BUDGETS)) {
  const bytes = readFileSync(new URL(`../${file}`, import.meta.url));
  const gzipped = gzipSync(bytes, { level: 9 }).length;
  const verdict = gzipped <= budget ? "ok" : "OVER BUDGET";
  console.log(`${file}: ${bytes.length} bytes, ${gzipped} gzipped (budget ${budget}) ${verdict}`);
  failed ||= gzipped > budget;
}
process.exit(failed ? 1 : 0);
