// The SDK in Node against real `llmguard serve --demo` processes: the demo's fake provider
// streams its reply word by word (about 40 ms a word), offline.
import { afterAll, beforeAll, describe, expect, test } from "vitest";

import { chat, Client, createChatSession, isRateLimitError, LLMGuardError, streamChat } from "../src/index.ts";
import type { ChatStatus } from "../src/index.ts";
import { startLLMGuard, type RunningServer } from "./servers.ts";

let server: RunningServer;
let limited: RunningServer;

beforeAll(async () => {
  [server, limited] = await Promise.all([
    startLLMGuard(),
    startLLMGuard({ env: { RATE_LIMIT_MAX: "2", RATE_LIMIT_WINDOW: "1 minute", JWT_MAX_USES: "1" } }),
  ]);
});

afterAll(async () => {
  await Promise.all([server?.stop(), limited?.stop()]);
});

/** A client on the demo's own origin (Node sends no Origin unless told to). */
function clientFor(target: RunningServer, counts?: Map<string, number>): Client {
  const origin = target.url.replace("127.0.0.1", "localhost");
  return new Client({
    baseUrl: target.url,
    headers: { origin },
    fetch: (input, init) => {
      const path = new URL(String(input)).pathname;
      counts?.set(path, (counts.get(path) ?? 0) + 1);
      return fetch(input, init);
    },
  });
}

test("chat() answers through the proxy", async () => {
  const answer = await chat("Are you there?", { client: clientFor(server) });
  expect(answer).toContain("offline demo");
  expect(answer).toContain("Are you there?");
});

test("streamChat() delivers deltas while the reply is still being written", async () => {
  const started = performance.now();
  const stream = streamChat([{ role: "user", content: "Stream please" }], { client: clientFor(server) });
  const arrivals: number[] = [];
  let text = "";
  for await (const delta of stream) {
    arrivals.push(performance.now() - started);
    text += delta;
  }
  const result = await stream.result;
  const finishedAt = performance.now() - started;

  expect(result.text).toBe(text);
  expect(result.finishReason).toBe("stop");
  expect(result.usage?.completion_tokens).toBe(arrivals.length);
  expect(result.messageId).toMatch(/^msg_/);
  expect(arrivals.length).toBeGreaterThan(20); // word by word
  // The first word was in hand long before the last: nothing was buffered to the end.
  expect(finishedAt - (arrivals[0] ?? finishedAt)).toBeGreaterThan(500);
});

test("a session keeps the conversation over several turns", async () => {
  const session = createChatSession({ client: clientFor(server) });
  const statuses: ChatStatus[] = [session.status];
  session.subscribe(() => {
    const { status } = session.getSnapshot();
    if (statuses.at(-1) !== status) statuses.push(status);
  });

  for (const text of ["first question", "second question", "third question"]) await session.send(text);

  const { messages, status, error } = session.getSnapshot();
  expect(status).toBe("ready");
  expect(error).toBeUndefined();
  expect(messages.map((message) => message.role)).toEqual(["user", "assistant", "user", "assistant", "user", "assistant"]);
  // The demo echoes the latest user message: each reply answers its own turn.
  expect(messages[1]?.content).toContain("first question");
  expect(messages[3]?.content).toContain("second question");
  expect(messages[5]?.content).toContain("third question");
  expect(statuses.slice(0, 5)).toEqual(["ready", "submitted", "streaming", "ready", "submitted"]);
});

test("stop() mid-stream ends the reply and keeps what arrived", async () => {
  const session = createChatSession({ client: clientFor(server) });
  const sent = session.send("Please stop me");
  await new Promise<void>((resolve) => {
    const unsubscribe = session.subscribe(() => {
      if (session.getSnapshot().status === "streaming") {
        unsubscribe();
        resolve();
      }
    });
  });
  session.stop();
  await sent;

  const { messages, status, error } = session.getSnapshot();
  expect(status).toBe("ready");
  expect(error).toBeUndefined();
  const partial = messages[1]?.content ?? "";
  expect(partial.length).toBeGreaterThan(0);
  expect(partial).not.toContain("same token, origin and budget guards"); // the reply's last words
  // The proxy saw the browser leave: the request is logged as cut short (499, estimated tokens).
  await expect.poll(() => /POST \/api\/chat 499 .*tokens=~/.test(server.logs()), { timeout: 5000 }).toBe(true);
});

describe("limits", () => {
  test("a forced 429 is a typed error with retryAfter, in a session too", async () => {
    const client = clientFor(limited);
    await chat("one", { client });
    await chat("two", { client });
    const refusal = await chat("three", { client }).catch((error: unknown) => error);
    expect(refusal).toBeInstanceOf(LLMGuardError);
    expect(isRateLimitError(refusal)).toBe(true);
    const error = refusal as LLMGuardError;
    expect(error.code).toBe("RateLimitExceeded");
    expect(error.status).toBe(429);
    expect(error.retryAfter).toBeGreaterThan(0);
    expect(error.retryAfter).toBeLessThanOrEqual(60);

    const session = createChatSession({ client });
    await session.send("four");
    expect(session.status).toBe("error");
    expect(session.error?.code).toBe("RateLimitExceeded");
    expect(session.error?.retryAfter).toBeGreaterThan(0);
  });

  test("single-use tokens (JWT_MAX_USES=1) are re-minted, never reused", async () => {
    const counts = new Map<string, number>();
    const client = clientFor(limited, counts);
    // Refused by the rate limit or not, each chat attempt needed its own token.
    await Promise.allSettled([chat("a", { client }), chat("b", { client }), chat("c", { client })]);
    expect(counts.get("/api/token")).toBe(3);
    expect(counts.get("/api/chat")).toBe(3);
  });
});
