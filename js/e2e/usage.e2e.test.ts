// What is left of the limits, against real `llmguard serve --demo` processes: getUsage() and a
// session's usage in Node, and the widget's show-usage line in Chromium, on a page of its own origin
// that loads the proxy's /widget.js (the proxy allows that origin through ALLOWED_ORIGIN).
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

import type { Browser, Page, Response as PageResponse } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";

import { Client, createChatSession, getUsage, parseRateLimit, streamChat } from "../src/index.ts";
import { launchChromium, type RunningServer, serveStatic, startLLMGuard, type StaticSite, temporaryFolder } from "./servers.ts";

// Output capped at 300 tokens, 2000 tokens a day: a demo reply costs enough that the token window,
// not the 60 requests a minute, bounds the widget's count after the first reply.
const LIMITS = { MAX_TOKENS: "300", TOKENS_PER_IP: "2000/day", MONTHLY_TOKEN_CAP: "987654321", MONTHLY_SPEND_CAP_USD: "321.5" };

let folder: { path: string; remove: () => Promise<void> };
let site: StaticSite;
let proxy: RunningServer;
/** The widget's own proxy: the page's counts start from nothing, whatever the Node tests did. */
let widgetProxy: RunningServer;
let singleUse: RunningServer;
let noWindow: RunningServer;
let browser: Browser;

beforeAll(async () => {
  folder = await temporaryFolder("llmguard-usage-page-");
  site = await serveStatic(folder.path);
  [proxy, widgetProxy, singleUse, noWindow, browser] = await Promise.all([
    startLLMGuard({ env: LIMITS }),
    startLLMGuard({ env: { ...LIMITS, ALLOWED_ORIGIN: site.origin } }),
    startLLMGuard({ env: { ...LIMITS, JWT_MAX_USES: "1" } }),
    startLLMGuard({ env: { TOKENS_PER_IP: "off" } }),
    launchChromium(),
  ]);
  // The page: one tag, from the proxy's own /widget.js (which talks to the proxy it came from).
  const page = `<!doctype html><meta charset="utf-8"><title>usage</title><link rel="icon" href="data:,">
<script type="module" src="${widgetProxy.url}/widget.js"></script>
<llmguard-chat heading="Usage" show-usage></llmguard-chat>`;
  await writeFile(join(folder.path, "index.html"), page);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([proxy?.stop(), widgetProxy?.stop(), singleUse?.stop(), noWindow?.stop()]);
  await site?.close();
  await folder?.remove();
});

/** A client of `target` from its demo page's origin (Node sends no Origin unless told to). */
function clientFor(target: RunningServer, counts?: Map<string, number>): Client {
  return new Client({
    baseUrl: target.url,
    headers: { origin: target.url.replace("127.0.0.1", "localhost") },
    fetch: (input, init) => {
      const path = new URL(String(input)).pathname;
      counts?.set(path, (counts.get(path) ?? 0) + 1);
      return fetch(input, init);
    },
  });
}

describe("getUsage in Node", () => {
  test("after a chat, the numbers have moved by exactly what it was charged", async () => {
    const client = clientFor(proxy);
    const before = await getUsage({ client });
    expect(before.requests).toMatchObject({ limit: 60, remaining: 60, window: 60 });
    expect(before.tokens).toMatchObject({ limit: 2000, remaining: 2000, window: 86_400 });
    expect(before.tokens?.resetAt).toBeGreaterThan(Date.now());
    expect(before).toMatchObject({ degraded: false, nearCap: false });

    const stream = streamChat("How much is left?", { client });
    for await (const _ of stream);
    const result = await stream.result;
    const charged = result.usage?.total_tokens ?? 0;
    expect(charged).toBeGreaterThan(0);
    // The reply's own fields: one request fewer, and the tokens after its hold (its worst case).
    expect(result.rateLimit.requests?.remaining).toBe(59);
    expect(result.rateLimit.tokens?.remaining).toBeLessThanOrEqual(2000 - charged);

    const after = await getUsage({ client });
    expect(after.requests?.remaining).toBe(59);
    expect(after.tokens?.remaining).toBe(2000 - charged);
  });

  test("the answer never carries money or the caps' sizes", async () => {
    const client = clientFor(proxy);
    const raw = await fetch(`${proxy.url}/api/usage`, {
      headers: { origin: proxy.url.replace("127.0.0.1", "localhost"), authorization: `Bearer ${await client.tokens.acquire()}` },
    });
    const text = await raw.text();
    expect(Object.keys(JSON.parse(text)).sort()).toEqual(["degraded", "near_cap", "requests", "tokens"]);
    for (const secret of ["987654321", "321", "$", "usd", "spend"]) expect(text.toLowerCase()).not.toContain(secret);
    expect(parseRateLimit(raw.headers)).toEqual({}); // its own limit is "usage", neither "chat" nor "tokens"
  });

  test("single-use tokens (JWT_MAX_USES=1): reading usage spends none of them", async () => {
    const counts = new Map<string, number>();
    const client = clientFor(singleUse, counts);
    await getUsage({ client });
    await getUsage({ client });
    const session = createChatSession({ client });
    await session.send("one");
    expect(session.error).toBeUndefined();
    // The token minted for the first read served both reads and the chat.
    expect(counts.get("/api/token")).toBe(1);
    expect(counts.get("/api/usage")).toBe(2);
  });

  test("without a token window (TOKENS_PER_IP=off), tokens is null", async () => {
    const usage = await getUsage({ client: clientFor(noWindow) });
    expect(usage.tokens).toBeNull();
    expect(usage.requests?.remaining).toBe(60);
  });

  test("a session with usage: fetched once, then kept up to date by the replies' headers", async () => {
    const counts = new Map<string, number>();
    const session = createChatSession({ client: clientFor(noWindow, counts), usage: true });
    session.subscribe(() => undefined);
    await expect.poll(() => session.usage?.requests?.remaining).toBe(60);
    await session.send("hello");
    await session.send("again");
    expect(session.usage?.requests?.remaining).toBe(58);
    expect(session.usage?.tokens).toBeNull();
    expect(counts.get("/api/usage")).toBe(1);
  });
});

describe("the widget's show-usage line in Chromium", () => {
  async function open(): Promise<{ page: Page; problems: string[] }> {
    const context = await browser.newContext();
    const page = await context.newPage();
    const problems: string[] = [];
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(message.text());
    });
    page.on("pageerror", (error) => problems.push(error.message));
    await page.goto(`${site.origin}/`);
    return { page, problems };
  }

  test("shows what is left under the text box, and it goes down after a message", async () => {
    const { page, problems } = await open();
    const line = page.locator("llmguard-chat").locator(".usage");
    // Before any reply: the requests left alone.
    await expect.poll(() => line.textContent()).toBe("60 messages left today");
    expect(await line.isVisible()).toBe(true);
    const input = page.getByRole("textbox", { name: "Message" });
    // The text box is described by the line: a screen reader reads it with the box.
    const describedBy = await page.evaluate(
      () => document.querySelector("llmguard-chat")?.shadowRoot?.querySelector("textarea")?.getAttribute("aria-describedby"),
    );
    expect(describedBy).toBe("usage");

    // What the reply was charged, as the widget's finish event reports it.
    await page.evaluate(() => {
      document.querySelector("llmguard-chat")?.addEventListener("llmguard-finish", (event) => {
        Object.assign(window, { charged: event.detail.result.usage?.total_tokens });
      });
    });
    const reply = page.waitForResponse((response) => response.url().endsWith("/api/chat"));
    await input.fill("How many are left?");
    await input.press("Enter");
    const response: PageResponse = await reply;
    const charged = await page.waitForFunction(() => (window as unknown as { charged?: number }).charged ?? 0).then((handle) => handle.jsonValue());
    expect(charged).toBeGreaterThan(0);
    const left = parseRateLimit(new Headers(await response.allHeaders()));
    // The smaller of the requests left and the tokens left over this session's one reply.
    const expected = Math.min(left.requests?.remaining ?? Infinity, Math.floor((left.tokens?.remaining ?? 0) / charged));
    // The token window binds here (a demo reply costs more than 2000 tokens / 59), as LIMITS mean it to.
    expect(expected).toBeLessThan(left.requests?.remaining ?? 0);
    await expect.poll(() => line.textContent()).toBe(`${expected} messages left today`);
    expect(problems).toEqual([]);
    await page.context().close();
  });
});
