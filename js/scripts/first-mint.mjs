// How long a person's first token takes in Chromium under TOKEN_CHALLENGE=pow: the 401, the
// proof-of-work solved by the SDK (its lazy solver and worker included), the second POST.
//   node scripts/first-mint.mjs [--runs N] [--maxnumber M]     (after `npm run build`)
// Starts `llmguard serve --demo` with TOKEN_CHALLENGE=pow and one ladder step (maxnumber M, by
// default 100000: the default ladder's first step, what a person's first mint pays), serves
// dist/browser from a CDN-like origin of its own and a blank page from another, and mints N times,
// each in a fresh browser context (a first visit: no token, no solver downloaded yet). Prints JSON
// with the median, for bench/challenge.py. Needs /usr/bin/chromium (or CHROMIUM_PATH) and the
// repository's .venv (or LLMGUARD_PYTHON).
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values } = parseArgs({ options: { runs: { type: "string", default: "9" }, maxnumber: { type: "string", default: "100000" } } });
const runs = Number(values.runs);
const maxnumber = Number(values.maxnumber);
const repository = fileURLToPath(new URL("../..", import.meta.url));
const browserBuild = fileURLToPath(new URL("../dist/browser/", import.meta.url));
const python = process.env.LLMGUARD_PYTHON ?? `${repository}.venv/bin/python`;

/** An HTTP server on a free loopback port; resolves to its origin and a close function. */
async function listen(handler) {
  const server = createServer(handler);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((resolve) => server.close(resolve)) };
}

const cdn = await listen((request, response) => {
  const file = normalize(join(browserBuild, new URL(request.url ?? "/", "http://cdn").pathname));
  readFile(file).then(
    (body) =>
      response
        .writeHead(200, { "content-type": extname(file) === ".js" ? "text/javascript" : "application/octet-stream", "access-control-allow-origin": "*" })
        .end(body),
    () => response.writeHead(404).end(),
  );
});
const site = await listen((_request, response) => response.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>app</title>"));

const port = (await listen(() => undefined).then(async ({ origin, close }) => (await close(), origin))).split(":").at(-1);
const server = spawn(python, ["-m", "llmguard", "serve", "--demo", "--port", port], {
  cwd: repository,
  env: {
    PATH: process.env.PATH ?? "",
    TOKEN_CHALLENGE: "pow",
    CHALLENGE_LADDER: `0=${maxnumber},100000=refuse`,
    ALLOWED_ORIGIN: site.origin,
    TOKEN_RATE_LIMIT: "100000/minute",
  },
  stdio: ["ignore", "ignore", "pipe"],
});
let serverOutput = "";
server.stderr.on("data", (data) => (serverOutput += data));
const proxy = `http://127.0.0.1:${port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
});

try {
  for (let waited = 0; ; waited += 50) {
    if (server.exitCode !== null) throw new Error(`llmguard exited:\n${serverOutput}`);
    if (await fetch(`${proxy}/healthz`).then((answer) => answer.ok, () => false)) break;
    if (waited > 20_000) throw new Error(`llmguard did not start:\n${serverOutput}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const times = [];
  for (let run = 0; run < runs; run++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(site.origin);
    // A string: the page imports the SDK like an app's script would.
    const milliseconds = await page.evaluate(`(async () => {
      const { getToken, Client } = await import(${JSON.stringify(`${cdn.origin}/sdk.js`)});
      const started = performance.now();
      await getToken({ client: new Client({ baseUrl: ${JSON.stringify(proxy)} }) });
      return performance.now() - started;
    })()`);
    times.push(Math.round(milliseconds));
    await context.close();
  }
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  console.log(JSON.stringify({ maxnumber, runs, median_ms: median, min_ms: sorted[0], max_ms: sorted.at(-1), times_ms: times, chromium: browser.version() }));
} finally {
  await browser.close();
  server.kill("SIGTERM");
  await Promise.all([cdn.close(), site.close()]);
}
