// The Python package serves the browser build at /sdk.js, /widget.js, and the files they import
// only when a server asks for a challenge, /sdk-pow.js and /sdk-captcha.js; `pip install` must
// not need Node, so the build is committed in llmguard/static/.
//   node scripts/browser-build.mjs sync   copy dist/browser/*.js there (after `npm run build`)
//   node scripts/browser-build.mjs check  fail unless the committed files equal a fresh build
import { readFileSync, writeFileSync } from "node:fs";

const FILES = ["sdk.js", "widget.js", "sdk-pow.js", "sdk-captcha.js"];
const mode = process.argv[2];
if (mode !== "sync" && mode !== "check") {
  console.error("usage: browser-build.mjs sync|check");
  process.exit(2);
}

let stale = false;
for (const file of FILES) {
  const fresh = readFileSync(new URL(`../dist/browser/${file}`, import.meta.url), "utf8");
  const committed = new URL(`../../llmguard/static/${file}`, import.meta.url);
  if (mode === "sync") {
    writeFileSync(committed, fresh);
    console.log(`llmguard/static/${file} updated (${Buffer.byteLength(fresh)} bytes)`);
    continue;
  }
  let current = "";
  try {
    current = readFileSync(committed, "utf8");
  } catch {
    // missing: reported below
  }
  if (current === fresh) {
    console.log(`llmguard/static/${file} matches a fresh build`);
  } else {
    console.error(`llmguard/static/${file} differs from a fresh build of js/: run \`npm run sync:browser-build\` in js/ and commit it.`);
    stale = true;
  }
}
process.exit(stale ? 1 : 0);
