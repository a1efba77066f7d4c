// The Python package serves the browser build at /sdk.js, and `pip install` must not need
// Node, so the build is committed at llmguard/static/sdk.js.
//   node scripts/browser-build.mjs sync   copy dist/browser/sdk.js there (after `npm run build`)
//   node scripts/browser-build.mjs check  fail unless the committed file equals a fresh build
import { readFileSync, writeFileSync } from "node:fs";

const built = new URL("../dist/browser/sdk.js", import.meta.url);
const committed = new URL("../../llmguard/static/sdk.js", import.meta.url);
const mode = process.argv[2];

const fresh = readFileSync(built, "utf8");
if (mode === "sync") {
  writeFileSync(committed, fresh);
  console.log(`llmguard/static/sdk.js updated (${fresh.length} bytes)`);
} else if (mode === "check") {
  let current = "";
  try {
    current = readFileSync(committed, "utf8");
  } catch {
    // missing: reported below
  }
  if (current !== fresh) {
    console.error("llmguard/static/sdk.js differs from a fresh build of js/: run `npm run build` in js/ and commit it.");
    process.exit(1);
  }
  console.log("llmguard/static/sdk.js matches a fresh build");
} else {
  console.error("usage: browser-build.mjs sync|check");
  process.exit(2);
}
