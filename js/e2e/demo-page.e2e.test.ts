import { afterAll, beforeAll, expect, test } from "vitest";
import type { Browser, Page } from "playwright-core";

import { launchChromium, startLLMGuard, type RunningServer } from "./servers.ts";

let server: RunningServer;
let browser: Browser;

beforeAll(async () => {
  server = await startLLMGuard();
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

async function openDemo(): Promise<{ page: Page; problems: string[] }> {
  const context = await browser.newContext(); // its own localStorage: the demo page persists its chat
  const page = await context.newPage();
  const problems: string[] = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(error.message));
  await page.goto(`${server.url}/`);
  return { page, problems };
}

const reply = (page: Page) => page.locator(".message.assistant").last();

test("the demo page chats offline with a streamed reply", async () => {
  const { page, problems } = await openDemo();
  await page.getByRole("textbox", { name: "Message" }).fill("Hello from Chromium");
  await page.keyboard.press("Enter");

  // Part of the reply is on screen while the rest is still streaming.
  await expect.poll(async () => (await reply(page).textContent())?.length ?? 0).toBeGreaterThan(0);
  const partial = (await reply(page).textContent()) ?? "";
  expect(await page.getByRole("button", { name: "Stop" }).isVisible()).toBe(true);

  await expect.poll(async () => page.getByRole("button", { name: "Stop" }).isHidden(), { timeout: 15_000 }).toBe(true);
  const complete = (await reply(page).textContent()) ?? "";
  expect(complete.length).toBeGreaterThan(partial.length);
  expect(complete).toContain("offline demo");
  expect(complete).toContain("Hello from Chromium");
  expect(await page.locator(".message.user").textContent()).toBe("Hello from Chromium");
  expect(problems).toEqual([]); // no CSP violation, no script error
  await page.close();
});

test("stop ends the reply mid-stream and keeps what arrived", async () => {
  const { page, problems } = await openDemo();
  await page.getByRole("textbox", { name: "Message" }).fill("Please stop me");
  await page.getByRole("button", { name: "Send" }).click();
  await expect.poll(async () => (await reply(page).textContent())?.length ?? 0).toBeGreaterThan(0);
  await page.getByRole("button", { name: "Stop" }).click();

  const stopped = (await reply(page).textContent()) ?? "";
  await page.waitForTimeout(500);
  expect(await reply(page).textContent()).toBe(stopped);
  expect(stopped).not.toContain("same token, origin and budget guards"); // the reply's last words
  expect(await page.getByRole("button", { name: "Send" }).isVisible()).toBe(true);
  expect(problems).toEqual([]);
  await page.close();
});
