// The chat widget in Chromium against real `llmguard serve --demo` processes, on the two pages users
// build: the demo server's own page (plain HTML, one <llmguard-chat> tag from /widget.js) and the React
// example (examples/react-vite, built here with Vite and served from its own origin, which the proxy
// allows through ALLOWED_ORIGIN). The offline demo's fake provider echoes the last user message into
// its reply, word by word: that is how these tests get a long streamed reply and a hostile one.
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import type { Browser, BrowserContextOptions, Locator, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";

import {
  buildReactExample,
  launchChromium,
  type RunningServer,
  serveStatic,
  startLLMGuard,
  type StaticSite,
  temporaryFolder,
} from "./servers.ts";

const screenshots = fileURLToPath(new URL("../../docs/screenshots/", import.meta.url));

// The demo reply's last words: a reply that contains them is complete.
const REPLY_END = "budget guards in front of it.";

let build: { path: string; remove: () => Promise<void> };
let site: StaticSite;
let siteOrigin: string;
let proxy: RunningServer;
const limitedProxies = new Map<string, RunningServer>();
let browser: Browser;

beforeAll(async () => {
  build = await temporaryFolder("llmguard-react-vite-");
  site = await serveStatic(build.path);
  siteOrigin = site.origin;
  const allowSite = { ALLOWED_ORIGIN: siteOrigin };
  // Every test opens a fresh context, which mints a token: more than the default 10 mints a minute.
  const chatProxy = { ...allowSite, TOKEN_RATE_LIMIT: "1000/minute" };
  // One chat request per 4 seconds: the second message gets a 429 with a short countdown.
  const limited = { ...allowSite, RATE_LIMIT_MAX: "1", RATE_LIMIT_WINDOW: "4 seconds" };
  let limitedForPage: RunningServer;
  let limitedForReact: RunningServer;
  [proxy, limitedForPage, limitedForReact, browser] = await Promise.all([
    startLLMGuard({ env: chatProxy }),
    startLLMGuard({ env: limited }),
    startLLMGuard({ env: limited }),
    launchChromium(),
    buildReactExample(build.path),
  ]);
  limitedProxies.set("the plain HTML page", limitedForPage);
  limitedProxies.set("the React example", limitedForReact);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([proxy?.stop(), ...[...limitedProxies.values()].map((server) => server.stop())]);
  await site?.close();
  await build?.remove();
});

interface OpenedPage {
  page: Page;
  /** Script errors and console errors (a CSP violation is one). */
  problems: string[];
}

async function open(url: string, options: BrowserContextOptions = {}): Promise<OpenedPage> {
  // A fresh context each time: its own localStorage (the demo page persists its chat) and its own token.
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(error.message));
  await page.goto(url);
  return { page, problems };
}

async function close({ page }: OpenedPage): Promise<void> {
  await page.context().close();
}

const text = async (locator: Locator): Promise<string> => (await locator.textContent()) ?? "";

function expectVisibleFocus(element: Focused): void {
  expect(element.outlineStyle).not.toBe("none");
  expect(element.outlineWidth).toBeGreaterThan(0);
}

interface Focused {
  tag: string;
  text: string;
  outlineStyle: string;
  outlineWidth: number;
}

/** What has the keyboard focus, inside shadow roots too, and how its focus is drawn. */
async function focused(page: Page): Promise<Focused> {
  return await page.evaluate(() => {
    let element = document.activeElement;
    while (element?.shadowRoot?.activeElement) element = element.shadowRoot.activeElement;
    if (!element) return { tag: "", text: "", outlineStyle: "none", outlineWidth: 0 };
    const style = getComputedStyle(element);
    return {
      tag: element.tagName.toLowerCase(),
      text: element.textContent?.trim() ?? "",
      outlineStyle: style.outlineStyle,
      outlineWidth: parseFloat(style.outlineWidth),
    };
  });
}

// The two pages show the same widget: the same tests run on both.
const pages = [
  { name: "the plain HTML page", url: (server: RunningServer) => `${server.url}/` },
  {
    name: "the React example",
    url: (server: RunningServer) => `${siteOrigin}/?proxy=${encodeURIComponent(server.url)}`,
  },
];

describe.each(pages)("the widget on $name", ({ name, url }) => {
  const input = (page: Page) => page.getByRole("textbox", { name: "Message" });
  const send = (page: Page) => page.getByRole("button", { name: "Send" });
  const stop = (page: Page) => page.getByRole("button", { name: "Stop" });
  const reply = (page: Page) => page.locator("llmguard-chat .message.assistant").last();

  async function ask(page: Page, message: string): Promise<void> {
    await input(page).fill(message);
    await input(page).press("Enter");
  }

  async function waitForPartialReply(page: Page, containing = ""): Promise<string> {
    await expect
      .poll(async () => {
        const shown = await text(reply(page));
        return shown.length > 0 && shown.includes(containing);
      })
      .toBe(true);
    return await text(reply(page));
  }

  async function waitForCompleteReply(page: Page): Promise<string> {
    await expect.poll(async () => (await text(reply(page))).includes(REPLY_END), { timeout: 15_000 }).toBe(true);
    await expect.poll(async () => await stop(page).isHidden()).toBe(true);
    return await text(reply(page));
  }

  test("a reply appears partially before it completes", async () => {
    const opened = await open(url(proxy));
    const { page } = opened;
    await ask(page, `Hello from ${name}`);

    const partial = await waitForPartialReply(page);
    expect(partial).not.toContain(REPLY_END);
    expect(await stop(page).isVisible()).toBe(true);
    expect(await page.locator("llmguard-chat [role=log]").getAttribute("aria-busy")).toBe("true");

    const complete = await waitForCompleteReply(page);
    expect(complete.length).toBeGreaterThan(partial.length);
    expect(complete).toContain(`You said: “Hello from ${name}”`);
    expect(await text(page.locator("llmguard-chat .message.user"))).toBe(`Hello from ${name}`);
    expect(await page.locator("llmguard-chat [role=log]").getAttribute("aria-busy")).toBe("false");
    expect(opened.problems).toEqual([]);
    await close(opened);
  });

  test("Stop mid-reply stops it, keeps what arrived, and the chat goes on", async () => {
    const opened = await open(url(proxy));
    const { page } = opened;
    await ask(page, "Please stop me");
    await waitForPartialReply(page);
    await stop(page).click();

    const stopped = await text(reply(page));
    expect(stopped.length).toBeGreaterThan(0);
    // A second later (25 more words, had it gone on) the reply has not grown.
    await page.waitForTimeout(1_000);
    expect(await text(reply(page))).toBe(stopped);
    expect(stopped).not.toContain(REPLY_END);
    expect(await send(page).isVisible()).toBe(true);
    expect(await send(page).isEnabled()).toBe(true);

    await ask(page, "Then carry on");
    await waitForPartialReply(page, "Then carry on");
    expect(await page.locator("llmguard-chat .message.assistant").count()).toBe(2);
    expect(opened.problems).toEqual([]);
    await close(opened);
  });

  test("a 429 shows a live countdown, with Send disabled until it ends", async () => {
    const limitedProxy = limitedProxies.get(name);
    if (!limitedProxy) throw new Error(`no rate-limited server for ${name}`);
    const opened = await open(url(limitedProxy));
    const { page } = opened;
    // The limiter's windows start on multiples of 4 s (epoch time). Begin in a window's first second
    // (waiting for the next one if need be), so the refusal comes early in a window and its countdown
    // has several seconds to show.
    const intoWindow = Date.now() % 4_000;
    if (intoWindow > 1_000) await page.waitForTimeout(4_000 - intoWindow + 50);
    // The one request of the window, stopped early (it counts all the same)...
    await ask(page, "Use up the allowance");
    await waitForPartialReply(page);
    await stop(page).click();
    // ...so the next one is refused.
    await ask(page, "One too many");

    const error = page.locator("llmguard-chat [part=error]");
    await expect.poll(async () => await text(error)).toMatch(/Try again in \d+ s\./);
    expect(await text(page.getByRole("alert"))).toContain("exceeded the allowed number of requests");

    // Watch the countdown to its end: each second shown once, going down, with Send disabled meanwhile.
    const shown: number[] = [];
    const deadline = Date.now() + 12_000;
    while (!(await text(error)).includes("You can send again now.") && Date.now() < deadline) {
      const seconds = /Try again in (\d+) s\./.exec(await text(error))?.[1];
      if (seconds !== undefined && Number(seconds) !== shown.at(-1)) {
        shown.push(Number(seconds));
        expect(await send(page).isDisabled()).toBe(true);
      }
      await page.waitForTimeout(100);
    }
    expect(await text(error)).toContain("You can send again now.");
    expect(shown[0]).toBeGreaterThanOrEqual(2);
    expect(shown[0]).toBeLessThanOrEqual(4); // the window is 4 seconds
    expect(shown).toEqual(Array.from({ length: shown[0] ?? 0 }, (_, index) => (shown[0] ?? 0) - index));
    expect(await send(page).isEnabled()).toBe(true);
    // And the server agrees: the next message is answered.
    await ask(page, "Back again");
    await waitForPartialReply(page, "Back again");
    expect(await error.isHidden()).toBe(true);
    expect(limitedProxy.logs()).toMatch(/POST \/api\/chat 429/);
    await close(opened);
  });

  test("a reply with an HTML image and a javascript: link executes nothing", async () => {
    const opened = await open(url(proxy));
    const { page } = opened;
    const hostile = `Look <img src=x onerror="window.__pwned=1"> and [click](javascript:window.__pwned=2)`;
    await ask(page, hostile);
    // The echo of the message is near the start of the reply: once the words after it are on screen,
    // stop, and look at a still DOM.
    await waitForPartialReply(page, "This reply streams");
    await stop(page).click();
    const shown = await text(reply(page));

    // The HTML is shown as the text it is; the link keeps its words and loses its target.
    expect(shown).toContain(`You said: “Look <img src=x onerror="window.__pwned=1"> and click”.`);
    expect(shown).not.toContain("javascript:");
    const inWidget = await page.evaluate(() => {
      const root = document.querySelector("llmguard-chat")?.shadowRoot;
      return {
        images: root?.querySelectorAll("img").length ?? -1,
        links: [...(root?.querySelectorAll("a") ?? [])].map((link) => link.getAttribute("href")),
        imagesInPage: document.querySelectorAll("img").length,
      };
    });
    expect(inWidget).toEqual({ images: 0, links: [], imagesInPage: 0 });

    // Clicking the word "click" in the reply does nothing.
    const word = await reply(page).evaluate((bubble) => {
      const walker = document.createTreeWalker(bubble, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const at = node.textContent?.indexOf("click") ?? -1;
        if (at < 0) continue;
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + "click".length);
        const box = range.getBoundingClientRect();
        return { x: box.x + box.width / 2, y: box.y + box.height / 2, under: node.parentElement?.tagName ?? "" };
      }
      return undefined;
    });
    expect(word).toBeDefined();
    expect(word?.under).not.toBe("A");
    const pagesBefore = page.context().pages().length;
    await page.mouse.click(word?.x ?? 0, word?.y ?? 0);
    await page.waitForTimeout(300); // a navigation or a popup would have started by now
    expect(page.context().pages().length).toBe(pagesBefore);
    expect(page.url()).toBe(url(proxy));
    expect(await page.evaluate(() => (window as { __pwned?: unknown }).__pwned)).toBeUndefined();
    expect(opened.problems).toEqual([]); // no blocked script either: nothing tried to run
    await close(opened);
  });

  test("the keyboard alone can chat: Tab, Enter, Shift+Enter, Escape, visible focus", async () => {
    const opened = await open(url(proxy));
    const { page } = opened;
    const keyboard = page.keyboard;

    // From the top of the page, Tab reaches the message box in a few presses.
    let presses = 0;
    while ((await focused(page)).tag !== "textarea" && presses < 6) {
      await keyboard.press("Tab");
      presses += 1;
    }
    expect((await focused(page)).tag).toBe("textarea");
    expectVisibleFocus(await focused(page));

    // Shift+Enter is a new line, Enter sends.
    await keyboard.type("First line");
    await keyboard.press("Shift+Enter");
    await keyboard.type("second line");
    expect(await input(page).inputValue()).toBe("First line\nsecond line");
    expect(await page.locator("llmguard-chat .message.user").count()).toBe(0);
    await keyboard.press("Enter");
    expect(await text(page.locator("llmguard-chat .message.user"))).toBe("First line\nsecond line");
    expect(await input(page).inputValue()).toBe("");

    // Escape stops the reply.
    await waitForPartialReply(page);
    await keyboard.press("Escape");
    await expect.poll(async () => await stop(page).isHidden()).toBe(true);
    const stopped = await text(reply(page));
    await page.waitForTimeout(500);
    expect(await text(reply(page))).toBe(stopped);
    expect(stopped).not.toContain(REPLY_END);

    // While a reply streams, Tab from the message box reaches Stop, with a visible focus ring; Enter presses it.
    await keyboard.type("Once more");
    await keyboard.press("Enter");
    await waitForPartialReply(page, "Once more");
    await keyboard.press("Tab");
    const onStop = await focused(page);
    expect(onStop).toMatchObject({ tag: "button", text: "Stop" });
    expectVisibleFocus(onStop);
    await keyboard.press("Enter");
    await expect.poll(async () => await stop(page).isHidden()).toBe(true);
    expect(await text(reply(page))).not.toContain(REPLY_END);

    // Back in the message box (Stop hands the focus back), Tab reaches Send, with a visible focus ring.
    expect((await focused(page)).tag).toBe("textarea");
    await keyboard.type("And the Send button");
    await keyboard.press("Tab");
    const onSend = await focused(page);
    expect(onSend).toMatchObject({ tag: "button", text: "Send" });
    expectVisibleFocus(onSend);
    expect(opened.problems).toEqual([]);
    await close(opened);
  });

  test("the focus stays in the widget when Send or Stop hides under it", async () => {
    const opened = await open(url(proxy));
    const { page } = opened;
    const keyboard = page.keyboard;
    const focusInWidget = async () => ["textarea", "button"].includes((await focused(page)).tag);

    // A reply ends by itself while Stop has the focus: Stop hides.
    await input(page).focus();
    await keyboard.type("Wait for the end");
    await keyboard.press("Enter");
    await waitForPartialReply(page);
    await keyboard.press("Tab");
    expect((await focused(page)).text).toBe("Stop");
    await waitForCompleteReply(page);
    expect.soft(await focusInWidget(), "focus after the reply ended under Stop").toBe(true);

    // Enter on the Send button: Send hides as the reply starts. Escape must still stop it.
    await input(page).focus();
    await keyboard.type("Sent with the button");
    await keyboard.press("Tab");
    expect((await focused(page)).text).toBe("Send");
    await keyboard.press("Enter");
    await waitForPartialReply(page, "Sent with the button");
    expect.soft(await focusInWidget(), "focus after Send was pressed").toBe(true);
    await keyboard.press("Escape");
    await expect.poll(async () => await stop(page).isHidden(), { timeout: 1_000 }).toBe(true);
    expect(await text(reply(page))).not.toContain(REPLY_END);
    await close(opened);
  });
});

test("the React example's own markup with useChat streams a reply", async () => {
  const opened = await open(`${siteOrigin}/custom.html?proxy=${encodeURIComponent(proxy.url)}`);
  const { page } = opened;
  const reply = page.locator(".messages .assistant").last();
  await page.getByRole("textbox", { name: "Message" }).fill("Hello from useChat");
  await page.getByRole("button", { name: "Send" }).click();

  await expect.poll(async () => (await text(reply)).length).toBeGreaterThan(0);
  expect(await text(reply)).not.toContain(REPLY_END);
  expect(await page.getByRole("button", { name: "Stop" }).isEnabled()).toBe(true);
  expect(await page.getByRole("textbox", { name: "Message" }).inputValue()).toBe("");

  await expect.poll(async () => (await text(reply)).includes(REPLY_END), { timeout: 15_000 }).toBe(true);
  expect(await text(reply)).toContain("You said: “Hello from useChat”");
  expect(await text(page.locator(".messages .user"))).toBe("Hello from useChat");
  await expect.poll(async () => await page.getByRole("button", { name: "Stop" }).isDisabled()).toBe(true);
  expect(opened.problems).toEqual([]);
  await close(opened);
});

test("screenshots for the README: light, dark and 375 px wide", async () => {
  await mkdir(screenshots, { recursive: true });
  const opened = await open(`${proxy.url}/`, { viewport: { width: 760, height: 560 }, colorScheme: "light" });
  const { page } = opened;
  const widget = page.locator("llmguard-chat");
  const reply = page.locator("llmguard-chat .message.assistant").last();
  await page.getByRole("textbox", { name: "Message" }).fill("How do I keep my **OpenAI key** out of the browser?");
  await page.keyboard.press("Enter");
  await expect.poll(async () => (await text(reply)).includes(REPLY_END), { timeout: 15_000 }).toBe(true);
  await expect.poll(async () => await page.getByRole("button", { name: "Stop" }).isHidden()).toBe(true);

  await widget.evaluate((element) => element.setAttribute("theme", "light"));
  await page.screenshot({ path: join(screenshots, "widget-light.png") });

  await page.emulateMedia({ colorScheme: "dark" }); // the page around the widget too
  await widget.evaluate((element) => element.setAttribute("theme", "dark"));
  await page.screenshot({ path: join(screenshots, "widget-dark.png") });

  await page.emulateMedia({ colorScheme: "light" });
  await widget.evaluate((element) => element.setAttribute("theme", "light"));
  await page.setViewportSize({ width: 375, height: 720 });
  // The whole page: on a phone the demo page's intro pushes the panel below the fold.
  await page.screenshot({ path: join(screenshots, "widget-mobile.png"), fullPage: true });

  for (const file of ["widget-light.png", "widget-dark.png", "widget-mobile.png"]) {
    expect((await readFile(join(screenshots, file))).subarray(1, 4).toString()).toBe("PNG");
  }
  // 375 px wide: the panel fits without a horizontal scroll bar.
  expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
  expect(opened.problems).toEqual([]);
  await close(opened);
});
