// examples/vanilla/index.html in Chromium, served from its own origin as a user's page would be,
// importing the SDK from a real `llmguard serve --demo` (cross-origin: CORS is part of the test).
import { readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";

import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";

import { launchChromium, startLLMGuard, type RunningServer } from "./servers.ts";

const page = fileURLToPath(new URL("../../examples/vanilla/index.html", import.meta.url));
let site: Server;
let siteOrigin: string;
let proxy: RunningServer;
let browser: Browser;

beforeAll(async () => {
  site = createServer((request, response) => {
    if (request.url?.split("?")[0] !== "/") {
      response.writeHead(404).end();
      return;
    }
    void readFile(page).then((html) => response.writeHead(200, { "content-type": "text/html" }).end(html));
  });
  await new Promise<void>((resolve) => site.listen(0, "127.0.0.1", resolve));
  siteOrigin = `http://localhost:${(site.address() as AddressInfo).port}`;
  [proxy, browser] = await Promise.all([startLLMGuard({ env: { ALLOWED_ORIGIN: siteOrigin } }), launchChromium()]);
});

afterAll(async () => {
  await browser?.close();
  await proxy?.stop();
  await new Promise((resolve) => site?.close(resolve));
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
