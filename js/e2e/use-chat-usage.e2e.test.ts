// useChat({ usage: true }) in Node against a real `llmguard serve --demo`: React renders the hook into a
// happy-dom document made here (not vitest's happy-dom environment, which would replace Node's fetch and
// URL), and the hook talks to the server over real HTTP.
import { Window } from "happy-dom";
import { act, createElement } from "react";
import { afterAll, beforeAll, expect, test } from "vitest";

import { Client } from "../src/index.ts";
import type { UseChatResult } from "../src/react/index.ts";
import { type RunningServer, startLLMGuard } from "./servers.ts";

let server: RunningServer;
const window = new Window({ url: "http://localhost:3000" });

beforeAll(async () => {
  // What react-dom needs of a browser (Node 20 has no navigator), and act() told it is a test.
  Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: true });
  for (const [name, value] of Object.entries({ window, document: window.document, navigator: window.navigator })) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  }
  server = await startLLMGuard({ env: { TOKENS_PER_IP: "20000/day", MAX_TOKENS: "300" } });
});

afterAll(async () => {
  await server?.stop();
  await window.happyDOM.close();
});

test("useChat({ usage: true }): fetched on mount, then each reply moves it, with no more fetches", async () => {
  const { createRoot } = await import("react-dom/client");
  const { useChat } = await import("../src/react/index.ts");
  const counts = new Map<string, number>();
  const client = new Client({
    baseUrl: server.url,
    headers: { origin: server.url.replace("127.0.0.1", "localhost") },
    fetch: (input, init) => {
      const path = new URL(String(input)).pathname;
      counts.set(path, (counts.get(path) ?? 0) + 1);
      return fetch(input, init);
    },
  });
  let chat: UseChatResult | undefined;
  function Chat() {
    chat = useChat({ client, usage: true });
    return null;
  }
  const root = createRoot(window.document.createElement("div") as unknown as Element);
  await act(async () => root.render(createElement(Chat)));

  // The mount's fetch answers inside act(), as the reply below does.
  await act(async () => {
    await expect.poll(() => chat?.usage?.requests?.remaining).toBe(60);
  });
  expect(chat?.usage?.tokens).toMatchObject({ limit: 20_000, remaining: 20_000, window: 86_400 });

  await act(async () => chat?.send("How much is left?"));
  expect(chat?.status).toBe("ready");
  const usage = chat?.usage;
  expect(usage?.requests?.remaining).toBe(59);
  // After this reply's hold (its worst case), so at most what it was charged below the start.
  const charged = 20_000 - (usage?.tokens?.remaining ?? 20_000);
  expect(charged).toBeGreaterThan(0);
  expect(charged).toBeLessThanOrEqual(300 + 200); // the output cap and a short prompt
  expect(usage).toMatchObject({ degraded: false, nearCap: false });
  expect(counts.get("/api/usage")).toBe(1);
  expect(counts.get("/api/chat")).toBe(1);
  await act(async () => root.unmount());
});
