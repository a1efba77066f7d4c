import { afterEach, describe, expect, test, vi } from "vitest";

import { configure, getToken } from "./client.ts";
import { isLLMGuardError, LLMGuardError } from "./errors.ts";
import {
  BASE_URL,
  deferred,
  errorResponse,
  FakeServer,
  jsonResponse,
  mintTokens,
  rejectionOf,
  settle,
  tokenResponse,
} from "./fake-server.test-util.ts";
import { abortable, TokenCache } from "./token.ts";

afterEach(() => {
  vi.useRealTimers();
});

/** A server whose token mints wait until the test lets them answer. */
function slowMintServer() {
  const answers: ReturnType<typeof deferred<Response>>[] = [];
  const server = new FakeServer({
    "/api/token": () => {
      const answer = deferred<Response>();
      answers.push(answer);
      return answer.promise;
    },
  });
  return { server, answers };
}

describe("minting", () => {
  test("nothing is requested until a token is needed", async () => {
    const server = new FakeServer({});
    server.client();
    await settle();
    expect(server.requests).toEqual([]);
  });

  test("the first token is minted with POST {baseUrl}/api/token, without cookies", async () => {
    const server = new FakeServer({});
    expect(await getToken({ client: server.client() })).toBe("token-1");
    expect(server.requests).toHaveLength(1);
    const [mint] = server.requests;
    expect(mint?.url).toBe(`${BASE_URL}/api/token`);
    expect(mint?.method).toBe("POST");
    expect(mint?.credentials).toBe("omit");
  });

  test("the token is cached across calls", async () => {
    const server = new FakeServer({});
    const client = server.client();
    const tokens = [await getToken({ client }), await getToken({ client }), await getToken({ client })];
    expect(tokens).toEqual(["token-1", "token-1", "token-1"]);
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test("getToken without a client uses the configured one", async () => {
    const server = new FakeServer({});
    configure({ baseUrl: BASE_URL, fetch: server.fetch });
    expect(await getToken()).toBe("token-1");
    expect(await getToken()).toBe("token-1");
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });
});

describe("refresh before expiry", () => {
  test("a token is replaced 30 seconds before it expires, not earlier", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    const start = new Date("2025-03-01T10:00:00Z").getTime();
    vi.setSystemTime(start);
    const server = new FakeServer({ "/api/token": mintTokens({ expiresIn: 900 }) });
    const client = server.client();
    expect(await getToken({ client })).toBe("token-1");

    vi.setSystemTime(start + (900 - 31) * 1000);
    expect(await getToken({ client })).toBe("token-1");
    expect(server.requestsTo("/api/token")).toHaveLength(1);

    vi.setSystemTime(start + (900 - 29) * 1000);
    expect(await getToken({ client })).toBe("token-2");
    expect(server.requestsTo("/api/token")).toHaveLength(2);

    // The new token's life counts from when it was minted.
    vi.setSystemTime(start + (900 - 29 + 600) * 1000);
    expect(await getToken({ client })).toBe("token-2");
    expect(server.requestsTo("/api/token")).toHaveLength(2);
  });

  test("an expired token is never used", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    const start = Date.now();
    const server = new FakeServer({ "/api/token": mintTokens({ expiresIn: 60 }) });
    const client = server.client();
    expect(await getToken({ client })).toBe("token-1");
    vi.setSystemTime(start + 61_000);
    expect(await getToken({ client })).toBe("token-2");
  });
});

describe("concurrent callers", () => {
  test("ten parallel getToken calls share one mint", async () => {
    const { server, answers } = slowMintServer();
    const client = server.client();
    const tokens = Promise.all(Array.from({ length: 10 }, () => getToken({ client })));
    await settle();
    expect(answers).toHaveLength(1);
    answers[0]?.resolve(tokenResponse("shared"));
    expect(await tokens).toEqual(Array.from({ length: 10 }, () => "shared"));
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test.each([
    [
      "a refused mint: every waiting caller gets the typed error",
      () => errorResponse(403, "Forbidden", { message: "This origin is not allowed to use this server." }),
      { code: "Forbidden", status: 403, message: "This origin is not allowed to use this server." },
    ],
    [
      "a rate-limited mint: every waiting caller gets its Retry-After",
      () => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "42" }, extra: { retry_after: 42 } }),
      { code: "RateLimitExceeded", status: 429, retryAfter: 42 },
    ],
  ])("%s, from one mint", async (_what, answer, expected) => {
    const { server, answers } = slowMintServer();
    const client = server.client();
    const calls = Array.from({ length: 5 }, () => rejectionOf(getToken({ client })));
    await settle();
    answers[0]?.resolve(answer());
    const errors = await Promise.all(calls);
    for (const error of errors) {
      expect(isLLMGuardError(error)).toBe(true);
      expect(error).toMatchObject(expected);
    }
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test("a failed mint is not remembered: the next call mints again", async () => {
    const server = new FakeServer({
      "/api/token": (_request, index) => (index === 0 ? errorResponse(503, "StorageUnavailable") : tokenResponse("second-try")),
    });
    const client = server.client();
    expect(isLLMGuardError(await rejectionOf(getToken({ client })), "StorageUnavailable")).toBe(true);
    expect(await getToken({ client })).toBe("second-try");
  });

  test("an aborted caller waiting for a shared mint rejects with Aborted; the others still get the token", async () => {
    const { server, answers } = slowMintServer();
    const client = server.client();
    const controller = new AbortController();
    const first = getToken({ client });
    const aborted = rejectionOf(getToken({ client, signal: controller.signal }));
    const last = getToken({ client });
    await settle();
    controller.abort();
    const error = await aborted;
    expect(isLLMGuardError(error, "Aborted")).toBe(true);

    answers[0]?.resolve(tokenResponse("shared"));
    expect(await first).toBe("shared");
    expect(await last).toBe("shared");
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test("an aborted waiter rejects at once, before the mint answers", async () => {
    const { server, answers } = slowMintServer();
    const client = server.client();
    const controller = new AbortController();
    const waiting = getToken({ client, signal: controller.signal });
    await settle();
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: "Aborted" });
    answers[0]?.resolve(tokenResponse("later"));
    expect(await getToken({ client })).toBe("later");
  });

  test("a signal that is already aborted rejects with Aborted", async () => {
    const server = new FakeServer({});
    await expect(getToken({ client: server.client(), signal: AbortSignal.abort() })).rejects.toMatchObject({ code: "Aborted" });
  });
});

describe("max_uses", () => {
  test("max_uses 1: a new token for every request", async () => {
    const server = new FakeServer({ "/api/token": mintTokens({ maxUses: 1 }) });
    const client = server.client();
    const tokens = [];
    for (let request = 0; request < 3; request++) tokens.push(await getToken({ client }));
    expect(tokens).toEqual(["token-1", "token-2", "token-3"]);
  });

  test("max_uses 3: every 4th request mints", async () => {
    const server = new FakeServer({ "/api/token": mintTokens({ maxUses: 3 }) });
    const client = server.client();
    const tokens = [];
    for (let request = 0; request < 7; request++) tokens.push(await getToken({ client }));
    expect(tokens).toEqual(["token-1", "token-1", "token-1", "token-2", "token-2", "token-2", "token-3"]);
    expect(server.requestsTo("/api/token")).toHaveLength(3);
  });

  test("max_uses 1 with parallel callers: no token is handed out twice", async () => {
    const server = new FakeServer({ "/api/token": mintTokens({ maxUses: 1 }) });
    const client = server.client();
    const tokens = await Promise.all(Array.from({ length: 5 }, () => getToken({ client })));
    expect(new Set(tokens).size).toBe(5);
    expect(server.requestsTo("/api/token")).toHaveLength(5);
  });

  test("max_uses null: unlimited", async () => {
    const server = new FakeServer({ "/api/token": mintTokens({ maxUses: null }) });
    const client = server.client();
    for (let request = 0; request < 20; request++) await getToken({ client });
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });
});

describe("bad token answers", () => {
  test("a token endpoint that answers something else than JSON: InvalidResponse", async () => {
    const server = new FakeServer({ "/api/token": () => new Response("<html>welcome</html>", { status: 200 }) });
    expect(await rejectionOf(getToken({ client: server.client() }))).toMatchObject({ code: "InvalidResponse" });
  });

  test("a JSON answer without a token: InvalidResponse", async () => {
    const server = new FakeServer({ "/api/token": () => jsonResponse({ ok: true }) });
    expect(await rejectionOf(getToken({ client: server.client() }))).toMatchObject({ code: "InvalidResponse" });
  });

  test("a token endpoint that cannot be reached: NetworkError", async () => {
    const failure = new TypeError("fetch failed");
    const cache = new TokenCache(() => Promise.reject(failure));
    const error = await rejectionOf(cache.acquire());
    expect(error).toMatchObject({ code: "NetworkError", cause: failure });
  });
});

describe("TokenCache.invalidate", () => {
  test("forgets the refused token, so the next request mints", async () => {
    const server = new FakeServer({});
    const client = server.client();
    const first = await client.tokens.acquire();
    client.tokens.invalidate(first);
    expect(await client.tokens.acquire()).toBe("token-2");
  });

  test("leaves a newer token alone", async () => {
    const server = new FakeServer({});
    const client = server.client();
    await client.tokens.acquire();
    client.tokens.clear();
    expect(await client.tokens.acquire()).toBe("token-2");
    client.tokens.invalidate("token-1");
    expect(await client.tokens.acquire()).toBe("token-2");
    expect(server.requestsTo("/api/token")).toHaveLength(2);
  });
});

describe("abortable", () => {
  test("without a signal: the promise itself", async () => {
    const promise = Promise.resolve(1);
    expect(abortable(promise, undefined)).toBe(promise);
  });

  test("an abort rejects with Aborted while the promise goes on; a later abort changes nothing", async () => {
    const controller = new AbortController();
    const work = deferred<string>();
    const wrapped = abortable(work.promise, controller.signal);
    controller.abort();
    await expect(wrapped).rejects.toBeInstanceOf(LLMGuardError);
    await expect(wrapped).rejects.toMatchObject({ code: "Aborted" });
    work.resolve("done");
    expect(await work.promise).toBe("done");

    const other = new AbortController();
    const finished = abortable(Promise.resolve("value"), other.signal);
    expect(await finished).toBe("value");
    other.abort();
    expect(await finished).toBe("value");
  });
});
