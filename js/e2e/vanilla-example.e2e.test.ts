// examples/vanilla/index.html in Chromium, served from its own origin as a user's page would be,
// importing the SDK from a real `llmguard serve --demo` (cross-origin: CORS is part of the test).
import { fileURLToPath } from "node:url";

import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";

import { launchChromium, type RunningServer, serveStatic, startLLMGuard, type StaticSite } from "./servers.ts";

const folder = fileURLToPath(new URL("../../examples/vanilla/", import.meta.url));
let site: StaticSite;
let siteOrigin: string;
let proxy: RunningServer;
let browser: Browser;

beforeAll(async () => {
  site = await serveStatic(folder);
  siteOrigin = site.origin;
  [proxy, browser] = await Promise.all([startLLMGuard({ env: { ALLOWED_ORIGIN: siteOrigin } }), launchChromium()]);
});

afterAll(async () => {
  await browser?.close();
  await proxy?.stop();
  await site?.close();
});

test("a plain HTML page streams a reply through the SDK served at /sdk.js", async () => {
  const tab = await browser.newPage();
  const problems: string[] = [];
  tab.on("pageerror", (error) => problems.push(error.message));
  tab.on("console", (message) => message.type() === "error" && problems.push(message.text()));
  await tab.goto(`${siteOrigin}/?proxy=${encodeURIComponent(proxy.url)}`);

  await tab.getByPlaceholder("Your question").fill("Hello from a plain page");
  await tab.getByRole("button", { name: "Send" }).click();

  // Partly there while the button still says the reply is in progress...
  await expect.poll(async () => ((await tab.locator("#reply").textContent()) ?? "").length).toBeGreaterThan(0);
  expect(await tab.getByRole("button", { name: "Send" }).isDisabled()).toBe(true);
  // ...then complete.
  await expect.poll(async () => tab.getByRole("button", { name: "Send" }).isEnabled(), { timeout: 15_000 }).toBe(true);
  const reply = (await tab.locator("#reply").textContent()) ?? "";
  expect(reply).toContain("offline demo");
  expect(reply).toContain("Hello from a plain page");
  expect(await tab.locator("#error").textContent()).toBe("");
  expect(problems).toEqual([]);
  // The token and the chat came from the page's origin, which the proxy allowed.
  expect(proxy.logs()).toMatch(new RegExp(`POST /api/chat 200 .*origin=${siteOrigin}`));
});
