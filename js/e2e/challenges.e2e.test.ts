// Challenges at the token endpoint, in Chromium, against real `llmguard serve --demo` processes:
// the SDK and the widget mint under TOKEN_CHALLENGE=pow with no code of the app's, under a stubbed
// Turnstile (its script and its siteverify served on loopback), and the page stays responsive while
// a hard proof-of-work is solved. The SDK comes from a third origin (a "CDN" serving js/dist/browser
// with CORS, as the proxy serves /sdk.js), so its worker is started the way a cross-origin import
// must start it.
import { writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";

import { launchChromium, type RunningServer, serveStatic, startLLMGuard, type StaticSite, temporaryFolder } from "./servers.ts";

const browserBuild = fileURLToPath(new URL("../dist/browser/", import.meta.url));
const REPLY_END = "budget guards in front of it.";

/** A fake Cloudflare: the stub `api.js` (its tokens come from here) and siteverify, which knows them. */
interface FakeTurnstile {
  origin: string;
  /** The siteverify requests: secret and response token. */
  verified: { secret: string | null; response: string | null; ok: boolean }[];
  close: () => Promise<void>;
}

async function startFakeTurnstile(): Promise<FakeTurnstile> {
  const issued = new Set<string>();
  const used = new Set<string>();
  const verified: FakeTurnstile["verified"] = [];
  let counter = 0;
  const read = async (request: IncomingMessage) => {
    let body = "";
    for await (const part of request) body += String(part);
    return body;
  };
  const server: Server = createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://fake").pathname;
    if (path === "/issue") {
      counter += 1;
      const token = `stub-token-${counter}-${Math.random().toString(36).slice(2)}`;
      issued.add(token);
      response.writeHead(200, { "content-type": "text/plain", "access-control-allow-origin": "*" }).end(token);
    } else if (path === "/api.js") {
      // Explicit rendering as Turnstile does it: a box in the element, the callback once "solved".
      const script = `window.turnstile = {
        render(element, options) {
          const box = document.createElement("div");
          box.className = "stub-turnstile";
          box.textContent = "stub Turnstile " + options.sitekey + " " + options.action;
          element.append(box);
          fetch(${JSON.stringify(`http://127.0.0.1:${(server.address() as AddressInfo).port}/issue`)})
            .then((answer) => answer.text())
            .then((token) => setTimeout(() => options.callback(token), 300));
          return "widget-1";
        },
        remove() {},
      };`;
      response.writeHead(200, { "content-type": "text/javascript" }).end(script);
    } else if (path === "/siteverify" && request.method === "POST") {
      void read(request).then((body) => {
        const fields = request.headers["content-type"]?.includes("json")
          ? new URLSearchParams(Object.entries(JSON.parse(body) as Record<string, string>))
          : new URLSearchParams(body);
        const token = fields.get("response");
        const ok = token !== null && issued.has(token) && !used.has(token) && fields.get("secret") === "test-secret";
        if (ok) used.add(token);
        verified.push({ secret: fields.get("secret"), response: token, ok });
        const answer = ok
          ? { success: true, hostname: "127.0.0.1", action: "llmguard-token", challenge_ts: new Date().toISOString(), "error-codes": [] }
          : { success: false, "error-codes": ["invalid-input-response"] };
        response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
      });
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    verified,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** What openSite() puts on the page's window. */
interface Loader {
  importModule: (url: string) => Promise<unknown>;
}

let browser: Browser;
let cdn: StaticSite;
let site: StaticSite;
let siteFolder: { path: string; remove: () => Promise<void> };
let turnstile: FakeTurnstile;
let pow: RunningServer;
let hard: RunningServer;
let captcha: RunningServer;

beforeAll(async () => {
  siteFolder = await temporaryFolder("llmguard-challenge-site-");
  await writeFile(join(siteFolder.path, "index.html"), "<!doctype html><title>app</title><body></body>");
  [cdn, site, turnstile, browser] = await Promise.all([
    serveStatic(browserBuild, { "access-control-allow-origin": "*" }),
    serveStatic(siteFolder.path),
    startFakeTurnstile(),
    launchChromium(),
  ]);
  const common = { ALLOWED_ORIGIN: site.origin, TOKEN_RATE_LIMIT: "1000/minute" };
  [pow, hard, captcha] = await Promise.all([
    startLLMGuard({ env: { ...common, TOKEN_CHALLENGE: "pow", CHALLENGE_LADDER: "0=100000,1000=refuse" } }),
    startLLMGuard({ env: { ...common, TOKEN_CHALLENGE: "pow", CHALLENGE_LADDER: "0=10000000,80=refuse" } }),
    startLLMGuard({
      env: {
        ...common,
        TOKEN_CHALLENGE: "turnstile",
        CAPTCHA_SITE_KEY: "test-site-key",
        CAPTCHA_SECRET: "test-secret",
        CAPTCHA_VERIFY_URL: `${turnstile.origin}/siteverify`,
        CAPTCHA_SCRIPT_URL: `${turnstile.origin}/api.js`,
      },
    }),
  ]);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([pow?.stop(), hard?.stop(), captcha?.stop(), cdn?.close(), site?.close(), turnstile?.close()]);
  await siteFolder?.remove();
});

/** A fresh page of the app's site, counting the workers it starts; script errors are collected. */
async function openSite(): Promise<{ page: Page; problems: string[] }> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("console", (message) => {
    // Chromium logs every non-2xx answer, the mint's 401 ChallengeRequired included: not a problem.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(error.message));
  await page.addInitScript(() => {
    const Original = window.Worker;
    (window as unknown as { workersStarted: number }).workersStarted = 0;
    window.Worker = class extends Original {
      constructor(url: string | URL, options?: WorkerOptions) {
        super(url, options);
        (window as unknown as { workersStarted: number }).workersStarted += 1;
      }
    };
  });
  await page.goto(site.origin);
  // A string, so that Vitest does not rewrite the import() the way it does in test code.
  await page.evaluate("window.importModule = (url) => import(url)");
  return { page, problems };
}

/** The widget from the CDN's widget.js, pointed at `proxy`. */
async function addWidget(page: Page, proxy: RunningServer): Promise<void> {
  await page.evaluate(
    async ({ cdnOrigin, proxyUrl }) => {
      await (window as unknown as Loader).importModule(`${cdnOrigin}/widget.js`);
      const element = document.createElement("llmguard-chat");
      element.setAttribute("base-url", proxyUrl);
      document.body.append(element);
    },
    { cdnOrigin: cdn.origin, proxyUrl: proxy.url },
  );
}

async function send(page: Page, text: string): Promise<void> {
  const textbox = page.locator("llmguard-chat").getByLabel("Message", { exact: true });
  await textbox.fill(text);
  await textbox.press("Enter");
}

const tokenStatuses = (server: RunningServer) => [...server.logs().matchAll(/POST \/api\/token (\d{3})/g)].map((match) => match[1]);

describe("TOKEN_CHALLENGE=pow", () => {
  test("chat() imported cross-origin mints through the proof-of-work, solved in a worker, with no app code", async () => {
    const { page, problems } = await openSite();
    const answer = await page.evaluate(
      async ({ cdnOrigin, proxyUrl }) => {
        const { chat, configure } = (await (window as unknown as Loader).importModule(`${cdnOrigin}/sdk.js`)) as typeof import("../src/index.ts");
        configure({ baseUrl: proxyUrl });
        return await chat("Are you there?");
      },
      { cdnOrigin: cdn.origin, proxyUrl: pow.url },
    );
    expect(answer).toContain("Are you there?");
    expect(await page.evaluate(() => (window as unknown as { workersStarted: number }).workersStarted)).toBeGreaterThan(0);
    expect(tokenStatuses(pow).slice(-2)).toEqual(["401", "200"]);
    expect(problems).toEqual([]);
    await page.context().close();
  });

  test("the widget mints through it too, showing 'Checking your browser…' meanwhile", async () => {
    const { page, problems } = await openSite();
    await addWidget(page, hard);
    // Every note the panel shows, as it shows it: a lucky solve (the number is random, up to 10 million)
    // can be over before a poll would look.
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { notesSeen: string[] }).notesSeen = seen;
      const root = document.querySelector("llmguard-chat")!.shadowRoot!;
      new MutationObserver(() => {
        const note = root.querySelector<HTMLElement>(".note");
        if (note && !note.hidden && note.textContent && seen.at(-1) !== note.textContent) seen.push(note.textContent);
      }).observe(root, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    await send(page, "Hello from the widget");
    const note = page.locator("llmguard-chat .note");
    await expect.poll(() => page.locator("llmguard-chat .message.assistant").last().textContent(), { timeout: 60_000 }).toContain(REPLY_END);
    expect(await page.evaluate(() => (window as unknown as { notesSeen: string[] }).notesSeen)).toEqual(["Checking your browser…"]);
    expect(await note.isHidden()).toBe(true);
    expect(problems).toEqual([]);
    await page.context().close();
  }, 90_000);

  test("the main thread is not blocked while a hard challenge is solved (a 10 ms timer keeps firing)", async () => {
    const { page } = await openSite();
    const timing = await page.evaluate(
      async ({ cdnOrigin, proxyUrl }) => {
        const { getToken, Client } = (await (window as unknown as Loader).importModule(`${cdnOrigin}/sdk.js`)) as typeof import("../src/index.ts");
        const ticks: number[] = [];
        const timer = setInterval(() => ticks.push(performance.now()), 10);
        const started = performance.now();
        // The solution is a random number up to 10 million: one mint may be found in its first
        // hundred thousand hashes. Mint again (a new client, a new challenge) until there was at
        // least a second of work, so a blocked main thread has nowhere to hide.
        let mints = 0;
        while (performance.now() - started < 1000 && mints < 10) {
          await getToken({ client: new Client({ baseUrl: proxyUrl }) });
          mints += 1;
        }
        const ended = performance.now();
        clearInterval(timer);
        let longestGap = 0;
        let previous = started;
        for (const tick of [...ticks, ended]) {
          longestGap = Math.max(longestGap, tick - previous);
          previous = tick;
        }
        return { mints, mintMs: Math.round(ended - started), ticks: ticks.length, longestGapMs: Math.round(longestGap) };
      },
      { cdnOrigin: cdn.origin, proxyUrl: hard.url },
    );
    console.log(`hard proof-of-work (maxnumber 10000000) in Chromium: ${JSON.stringify(timing)}`);
    // At least a second of work (about 5 million hashes expected per mint), in which a blocked main
    // thread could not hide.
    expect(timing.mintMs).toBeGreaterThan(500);
    expect(timing.longestGapMs).toBeLessThan(200);
    expect(timing.ticks).toBeGreaterThan(timing.mintMs / 10 / 3);
    await page.context().close();
  }, 120_000);
});

describe("TOKEN_CHALLENGE=turnstile (a stub api.js and siteverify on loopback)", () => {
  test("the widget renders the CAPTCHA in its panel, mints with its token and replies", async () => {
    const { page, problems } = await openSite();
    const before = turnstile.verified.length;
    await addWidget(page, captcha);
    await send(page, "Hello, Turnstile");
    // Rendered in the light DOM of the element (shown through the panel's slot), while checking.
    const stub = page.locator("llmguard-chat > div[slot=captcha] .stub-turnstile");
    await expect.poll(() => stub.textContent(), { timeout: 10_000 }).toBe("stub Turnstile test-site-key llmguard-token");
    expect(await page.locator("llmguard-chat .note").textContent()).toBe("Checking your browser…");
    await expect.poll(() => page.locator("llmguard-chat .message.assistant").last().textContent(), { timeout: 20_000 }).toContain(REPLY_END);
    expect(await stub.count()).toBe(0);
    expect(turnstile.verified.slice(before)).toEqual([{ secret: "test-secret", response: expect.stringMatching(/^stub-token-/), ok: true }]);
    expect(problems).toEqual([]);
    await page.context().close();
  });

  test("chat() without attest: ChallengeRequired; with an attest of the app's: minted", async () => {
    const { page } = await openSite();
    const outcome = await page.evaluate(
      async ({ cdnOrigin, proxyUrl, fakeOrigin }) => {
        const { chat, Client, isLLMGuardError } = (await (window as unknown as Loader).importModule(`${cdnOrigin}/sdk.js`)) as typeof import("../src/index.ts");
        let without = "";
        try {
          await chat("no attest", { client: new Client({ baseUrl: proxyUrl }) });
        } catch (error) {
          without = isLLMGuardError(error) ? error.code : String(error);
        }
        const seen: unknown[] = [];
        const client = new Client({
          baseUrl: proxyUrl,
          attest: async (challenge) => {
            seen.push(challenge);
            return await (await fetch(`${fakeOrigin}/issue`)).text();
          },
        });
        const answer = await chat("with attest", { client });
        return { without, seen, answer };
      },
      { cdnOrigin: cdn.origin, proxyUrl: captcha.url, fakeOrigin: turnstile.origin },
    );
    expect(outcome.without).toBe("ChallengeRequired");
    expect(outcome.seen).toEqual([{ kind: "turnstile", siteKey: "test-site-key", action: "llmguard-token", script: `${turnstile.origin}/api.js` }]);
    expect(outcome.answer).toContain("with attest");
    await page.context().close();
  });
});
