import { afterEach, describe, expect, test, vi } from "vitest";

import { LLMGuardError } from "./errors.ts";
import { errorResponse, FakeServer, jsonResponse, mintTokens, rejectionOf, USAGE_BODY } from "./fake-server.test-util.ts";
import { getUsage, mergeUsage, parseRateLimit, type Usage } from "./usage.ts";

afterEach(() => {
  vi.useRealTimers();
});

const NOW = 1_800_000_000_000;

function headers(fields: Record<string, string>): Headers {
  return new Headers(fields);
}

describe("parseRateLimit", () => {
  test("reads the request limit and the token window of a chat reply", () => {
    const usage = parseRateLimit(
      headers({
        "ratelimit-policy": '"chat";q=60;w=60, "tokens";q=100000;w=86400',
        ratelimit: '"chat";r=57;t=41, "tokens";r=93120;t=52000',
      }),
      NOW,
    );
    expect(usage).toEqual({
      requests: { limit: 60, remaining: 57, reset: 41, window: 60, resetAt: NOW + 41_000 },
      tokens: { limit: 100_000, remaining: 93_120, reset: 52_000, window: 86_400, resetAt: NOW + 52_000_000 },
      degraded: false,
    });
  });

  test("takes the members by name, in any order, quoted or not, with spacing as it comes", () => {
    const usage = parseRateLimit(
      headers({
        "ratelimit-policy": 'tokens;w=3600;q=500,"chat"; q=5; w=10,  "other";q=1;w=1',
        ratelimit: '"other";r=0;t=1,tokens;t=7;r=12, "chat";r=4;t=2',
      }),
      NOW,
    );
    expect(usage.requests).toMatchObject({ limit: 5, remaining: 4, reset: 2, window: 10 });
    expect(usage.tokens).toMatchObject({ limit: 500, remaining: 12, reset: 7, window: 3600 });
  });

  test("a member whose name only starts like one is not taken for it", () => {
    const usage = parseRateLimit(headers({ "ratelimit-policy": '"chatty";q=5;w=10', ratelimit: '"chatty";r=4;t=2' }), NOW);
    expect(usage).toEqual({});
  });

  test("leaves out what the fields do not say", () => {
    // The request limit alone (TOKENS_PER_IP=off, or a reply nothing was reserved for).
    const alone = parseRateLimit(headers({ "ratelimit-policy": '"chat";q=60;w=60', ratelimit: '"chat";r=59;t=3' }), NOW);
    expect(Object.keys(alone).sort()).toEqual(["degraded", "requests"]);
    // A policy without what is left (an older server), or neither field.
    expect(parseRateLimit(headers({ "ratelimit-policy": '"chat";q=60;w=60' }), NOW)).toEqual({});
    expect(parseRateLimit(headers({}), NOW)).toEqual({});
    expect(parseRateLimit(headers({ "ratelimit-policy": "garbage;;=,", ratelimit: '"chat";r=x;t=' }), NOW)).toEqual({});
  });

  test("X-LLMGuard-Degraded says degraded, and so near the cap", () => {
    expect(parseRateLimit(headers({ "x-llmguard-degraded": "80" }), NOW)).toEqual({ degraded: true, nearCap: true });
  });

  test("works on any object with get(), such as a fetch Response's headers", () => {
    const response = new Response("", { headers: { "ratelimit-policy": '"chat";q=2;w=60', ratelimit: '"chat";r=1;t=30' } });
    expect(parseRateLimit(response.headers).requests?.remaining).toBe(1);
  });
});

describe("getUsage", () => {
  test("GETs /api/usage with a token and answers in camelCase with resetAt", async () => {
    vi.useFakeTimers({ now: NOW, toFake: ["Date"] });
    const server = new FakeServer({ "/api/usage": () => jsonResponse({ ...USAGE_BODY, near_cap: true }) });
    const usage = await getUsage({ client: server.client() });
    expect(usage).toEqual({
      requests: { limit: 60, remaining: 57, reset: 41, window: 60, resetAt: NOW + 41_000 },
      tokens: { limit: 100_000, remaining: 93_120, reset: 52_000, window: 86_400, resetAt: NOW + 52_000_000 },
      degraded: false,
      nearCap: true,
    });
    const [request] = server.requestsTo("/api/usage");
    expect(request?.method).toBe("GET");
    expect(request?.token).toBe("token-1");
    expect(request?.credentials).toBe("omit");
    expect(request?.body).toBeUndefined();
  });

  test("tokens is null when the server has no token window", async () => {
    const server = new FakeServer({ "/api/usage": () => jsonResponse({ ...USAGE_BODY, tokens: null }) });
    expect((await getUsage({ client: server.client() })).tokens).toBeNull();
  });

  test("does not spend a use of a single-use token", async () => {
    const server = new FakeServer({
      "/api/token": mintTokens({ maxUses: 1 }),
      "/api/usage": () => jsonResponse(USAGE_BODY),
      "/api/chat": () => jsonResponse({ role: "assistant", content: "ok" }),
    });
    const client = server.client();
    await getUsage({ client });
    await getUsage({ client });
    await client.post("/api/chat", { messages: [] });
    // One token for all three: the two reads never counted as uses.
    expect(server.requestsTo("/api/token")).toHaveLength(1);
    expect(server.requests.map((request) => request.token)).toEqual([undefined, "token-1", "token-1", "token-1"]);
  });

  test("retries once with a fresh token after a 401", async () => {
    const server = new FakeServer({
      "/api/usage": (_request, index) => (index === 0 ? errorResponse(401, "Unauthorized") : jsonResponse(USAGE_BODY)),
    });
    expect((await getUsage({ client: server.client() })).requests?.remaining).toBe(57);
    expect(server.requestsTo("/api/usage").map((request) => request.token)).toEqual(["token-1", "token-2"]);
  });

  test("refusals are typed errors", async () => {
    const server = new FakeServer({
      "/api/usage": () => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "12" } }),
    });
    const error = await rejectionOf(getUsage({ client: server.client() }));
    expect(error).toBeInstanceOf(LLMGuardError);
    expect(error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 12 });
  });

  test("an answer that is not llmguard's is InvalidResponse", async () => {
    for (const body of ["<html>", "[]", "null", '{"ok": true}']) {
      const server = new FakeServer({ "/api/usage": () => new Response(body, { status: 200 }) });
      await expect(getUsage({ client: server.client() })).rejects.toMatchObject({ code: "InvalidResponse" });
    }
  });

  test("a signal aborts it", async () => {
    const server = new FakeServer({ "/api/usage": () => new Promise<Response>(() => undefined) });
    const controller = new AbortController();
    const pending = getUsage({ client: server.client(), signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: "Aborted" });
  });
});

describe("mergeUsage", () => {
  const window = (remaining: number) => ({ limit: 100, remaining, reset: 10, window: 60, resetAt: NOW });
  const current: Usage = { requests: window(50), tokens: window(40), degraded: false, nearCap: true };

  test("a reply's numbers replace the fetched ones; what it does not say stays", () => {
    expect(mergeUsage(current, { requests: window(49), degraded: false })).toEqual({ ...current, requests: window(49) });
    expect(mergeUsage(current, { degraded: true, nearCap: true })).toEqual({ ...current, degraded: true });
  });

  test("a reply that says nothing changes nothing", () => {
    expect(mergeUsage(current, {})).toBe(current);
    expect(mergeUsage(null, {})).toBeNull();
  });

  test("before any fetch, a reply is enough to know", () => {
    expect(mergeUsage(null, { requests: window(3), degraded: false })).toEqual({ requests: window(3), tokens: null, degraded: false, nearCap: false });
  });
});
