// The ecosystem's own clients in Chromium against a real `llmguard serve --demo`: the official `openai`
// npm package on /v1/chat/completions (its async apiKey is getToken) and the Vercel AI SDK's useChat on
// /api/chat (its transport's headers are getAuthHeaders). Both pages are the React example's
// (examples/react-vite: openai.html and ai-sdk.html), built here with Vite and served from an origin of
// their own, which the proxy allows through ALLOWED_ORIGIN: every request is cross-origin, so the
// browser preflights it, x-stainless-* headers and all. The demo's fake provider echoes the last user
// message in its reply, word by word (about 40 ms a word): a reply long enough to be seen streaming.

import type { Browser, Locator, Page, Request } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";

import {
  buildReactExample,
  launchChromium,
  type RunningServer,
  serveStatic,
  startLLMGuard,
  type StaticSite,
  temporaryFolder,
} from "./servers.ts";

// The demo reply's first and last words: a reply that has the last ones is complete.
const REPLY_START = "Hello from llmguard's offline demo!";
const REPLY_END = "budget guards in front of it.";
const JWT = /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/;

let build: { path: string; remove: () => Promise<void> };
let site: StaticSite;
let siteOrigin: string;
let proxy: RunningServer;
let browser: Browser;

beforeAll(async () => {
  build = await temporaryFolder("llmguard-react-vite-");
  site = await serveStatic(build.path);
  siteOrigin = site.origin;
  [proxy, browser] = await Promise.all([
    startLLMGuard({ env: { ALLOWED_ORIGIN: siteOrigin } }),
    launchChromium(),
    buildReactExample(build.path),
  ]);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await proxy?.stop();
  await site?.close();
  await build?.remove();
});

interface OpenedPage {
  page: Page;
  /** Script errors, console errors (a CORS refusal is one) and failed requests. */
  problems: string[];
  /** The requests the page sent to the proxy's chat routes. */
  chatRequests: Request[];
}

async function open(path: string): Promise<OpenedPage> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems: string[] = [];
  const chatRequests: Request[] = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(error.message));
  page.on("requestfailed", (request) => problems.push(`${request.url()}: ${request.failure()?.errorText ?? "failed"}`));
  page.on("request", (request) => {
    if (/\/(v1\/chat\/completions|api\/chat)$/.test(request.url())) chatRequests.push(request);
  });
  await page.goto(`${siteOrigin}/${path}?proxy=${encodeURIComponent(proxy.url)}`);
  return { page, problems, chatRequests };
}

/** The text of what the locator finds, without waiting for it: "" while there is nothing. */
const text = async (locator: Locator): Promise<string> => (await locator.allTextContents()).join("");
/** What the page's alerts say, without waiting for one: "" when there is none. */
const alerts = async (page: Page): Promise<string> => (await page.getByRole("alert").allTextContents()).join(" ");

/**
 * Wait for the reply to have `words` (its first words, by default), or for the page to show an error:
 * the error's text is then the failure's message. The AI SDK checks every chunk of the stream against
 * its schema, so a chunk it does not accept ends up there too.
 */
async function replyWith(page: Page, reply: Locator, words = ""): Promise<string> {
  await expect
    .poll(
      async () => {
        const shown = await text(reply);
        return (await alerts(page)) !== "" || (shown.length > 0 && shown.includes(words));
      },
      { timeout: 15_000 },
    )
    .toBe(true);
  expect(await alerts(page), "the page's error").toBe("");
  return await text(reply);
}

test("the official openai package streams a reply through /v1/chat/completions", async () => {
  const opened = await open("openai.html");
  const { page } = opened;
  const reply = page.locator(".messages .assistant").last();
  await page.getByRole("textbox", { name: "Message" }).fill("Hello from the OpenAI SDK");
  await page.getByRole("button", { name: "Send" }).click();

  const partial = await replyWith(page, reply);
  expect(partial).not.toContain(REPLY_END);
  expect(await page.getByRole("button", { name: "Send" }).isDisabled()).toBe(true);

  const complete = await replyWith(page, reply, REPLY_END);
  expect(complete.length).toBeGreaterThan(partial.length);
  expect(complete).toContain(REPLY_START);
  expect(complete).toContain("offline demo");
  expect(complete).toContain("You said: “Hello from the OpenAI SDK”");
  expect(await text(page.locator(".messages .user"))).toBe("Hello from the OpenAI SDK");
  await expect.poll(async () => await page.getByRole("button", { name: "Send" }).isEnabled()).toBe(true);
  expect(await alerts(page)).toBe("");

  // One request, sent by the SDK itself: its x-stainless-* headers (which the browser had to get past
  // the CORS preflight, as it had the Authorization header) and llmguard's token as the API key.
  expect(opened.chatRequests.map((request) => request.url())).toEqual([`${proxy.url}/v1/chat/completions`]);
  const [request] = opened.chatRequests;
  const headers = (await request?.allHeaders()) ?? {};
  expect(headers["authorization"]).toMatch(JWT);
  expect(Object.keys(headers).filter((name) => name.startsWith("x-stainless-")).length).toBeGreaterThan(0);
  expect(request?.postDataJSON()).toMatchObject({
    model: "gpt-4.1-mini",
    stream: true,
    messages: [{ role: "user", content: "Hello from the OpenAI SDK" }],
  });
  const response = await request?.response();
  expect(response?.status()).toBe(200);
  expect(response?.headers()["content-type"]).toContain("text/event-stream");
  expect(proxy.logs()).toMatch(/OPTIONS \/v1\/chat\/completions 204 /);
  expect(opened.problems).toEqual([]);
  await page.context().close();
});

test("the Vercel AI SDK's useChat streams a reply from /api/chat", async () => {
  const opened = await open("ai-sdk.html");
  const { page } = opened;
  const reply = page.locator(".messages .assistant").last();
  const stop = page.getByRole("button", { name: "Stop" });
  await page.getByRole("textbox", { name: "Message" }).fill("Hello from the AI SDK");
  const answered = page.waitForResponse(`${proxy.url}/api/chat`, { timeout: 10_000 });
  await page.getByRole("button", { name: "Send" }).click();

  // DefaultChatTransport sends no "stream": true (its body is id, messages, trigger and messageId) and
  // reads whatever comes back as a UI message stream. A JSON reply has no `data:` lines for it: useChat
  // would end quietly with no reply and no error. So first, the reply must be that stream.
  const response = await answered;
  expect(response.status()).toBe(200);
  expect(response.headers()["content-type"], "the content type of the reply to useChat").toContain("text/event-stream");
  expect(response.headers()["x-vercel-ai-ui-message-stream"]).toBe("v1");

  const partial = await replyWith(page, reply);
  expect(partial).not.toContain(REPLY_END);
  expect(await stop.isEnabled()).toBe(true);
  expect(await page.getByRole("textbox", { name: "Message" }).inputValue()).toBe("");

  const complete = await replyWith(page, reply, REPLY_END);
  expect(complete.length).toBeGreaterThan(partial.length);
  expect(complete).toContain(REPLY_START);
  expect(complete).toContain("offline demo");
  expect(complete).toContain("You said: “Hello from the AI SDK”");
  expect(await text(page.locator(".messages .user"))).toBe("Hello from the AI SDK");
  // The finish chunk brings useChat back to "ready": Stop is disabled again.
  await expect.poll(async () => await stop.isDisabled()).toBe(true);
  expect(await alerts(page), "useChat's error").toBe("");

  // One request from DefaultChatTransport, in the AI SDK's own body, with getAuthHeaders' token.
  expect(opened.chatRequests.map((request) => request.url())).toEqual([`${proxy.url}/api/chat`]);
  const [request] = opened.chatRequests;
  expect((await request?.allHeaders())?.["authorization"]).toMatch(JWT);
  expect(request?.postDataJSON()).toMatchObject({
    id: expect.any(String),
    trigger: "submit-message",
    messages: [{ id: expect.any(String), role: "user", parts: [{ type: "text", text: "Hello from the AI SDK" }] }],
  });
  expect(opened.problems).toEqual([]);
  await page.context().close();
});
