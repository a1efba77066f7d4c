import { describe, expect, test, vi } from "vitest";

import { chat, streamChat } from "./chat.ts";
import { Client, configure, getAuthHeaders, getClient, getToken } from "./client.ts";
import { isLLMGuardError, type LLMGuardError } from "./errors.ts";
import {
  BASE_URL,
  deferred,
  errorResponse,
  FakeServer,
  jsonResponse,
  rejectionOf,
  replyItems,
  settle,
  sseResponse,
  tokenResponse,
} from "./fake-server.test-util.ts";

const reply = () => jsonResponse({ role: "assistant", content: "Hi!", usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } });

/** Answers /api/chat with 401 for the tokens in `refused`, and a reply otherwise. */
function refusing(...refused: string[]) {
  return new FakeServer({
    "/api/chat": (request) =>
      request.token !== undefined && refused.includes(request.token)
        ? errorResponse(401, "Unauthorized", { message: "The token has expired.", headers: { "www-authenticate": 'Bearer error="invalid_token"' } })
        : reply(),
  });
}

describe("requests", () => {
  test("token and chat requests omit cookies; the chat request carries the token as a bearer and JSON", async () => {
    const server = new FakeServer({ "/api/chat": reply });
    await chat("Hello", { client: server.client() });
    const [mint, request] = server.requests;
    expect(mint?.path).toBe("/api/token");
    expect(mint?.credentials).toBe("omit");
    expect(request?.url).toBe(`${BASE_URL}/api/chat`);
    expect(request?.method).toBe("POST");
    expect(request?.credentials).toBe("omit");
    expect(request?.headers.get("authorization")).toBe("Bearer token-1");
    expect(request?.headers.get("content-type")).toBe("application/json");
  });

  test("ten parallel chats: exactly one token mint, every chat with that token", async () => {
    const mint = deferred<Response>();
    const server = new FakeServer({ "/api/token": () => mint.promise, "/api/chat": reply });
    const client = server.client();
    const replies = Promise.all(Array.from({ length: 10 }, (_, index) => chat(`Question ${index}`, { client })));
    await settle();
    mint.resolve(tokenResponse("shared"));
    expect(await replies).toEqual(Array.from({ length: 10 }, () => "Hi!"));
    expect(server.requestsTo("/api/token")).toHaveLength(1);
    const chats = server.requestsTo("/api/chat");
    expect(chats).toHaveLength(10);
    expect(chats.every((request) => request.token === "shared")).toBe(true);
  });

  test("later chats reuse the cached token", async () => {
    const server = new FakeServer({ "/api/chat": reply });
    const client = server.client();
    for (let turn = 0; turn < 3; turn++) await chat("Hello", { client });
    expect(server.requestsTo("/api/token")).toHaveLength(1);
    expect(server.requestsTo("/api/chat").map((request) => request.token)).toEqual(["token-1", "token-1", "token-1"]);
  });
});

describe("401 retry", () => {
  test("a 401 invalidates the token and retries once with a fresh one", async () => {
    const server = refusing("token-1");
    const client = server.client();
    expect(await chat("Hello", { client })).toBe("Hi!");
    expect(server.requestsTo("/api/chat").map((request) => request.token)).toEqual(["token-1", "token-2"]);
    expect(server.requestsTo("/api/token")).toHaveLength(2);

    // The fresh token is the one kept.
    await chat("Again", { client });
    expect(server.requestsTo("/api/token")).toHaveLength(2);
    expect(server.requestsTo("/api/chat").at(-1)?.token).toBe("token-2");
  });

  test("a second 401 is an Unauthorized error, after exactly two chat attempts", async () => {
    const server = refusing("token-1", "token-2", "token-3");
    const error = await rejectionOf(chat("Hello", { client: server.client() }));
    expect(isLLMGuardError(error, "Unauthorized")).toBe(true);
    expect((error as LLMGuardError).status).toBe(401);
    expect((error as LLMGuardError).message).toBe("The token has expired.");
    expect(server.requestsTo("/api/chat")).toHaveLength(2);
    expect(server.requestsTo("/api/token")).toHaveLength(2);
  });

  test("ten parallel chats refused with the same old token share one fresh mint", async () => {
    const server = refusing("token-1");
    const client = server.client();
    const replies = await Promise.all(Array.from({ length: 10 }, () => chat("Hello", { client })));
    expect(replies).toEqual(Array.from({ length: 10 }, () => "Hi!"));
    expect(server.requestsTo("/api/token")).toHaveLength(2);
    const tokens = server.requestsTo("/api/chat").map((request) => request.token);
    expect(tokens.filter((token) => token === "token-1")).toHaveLength(10);
    expect(tokens.filter((token) => token === "token-2")).toHaveLength(10);
  });

  test("streamChat retries after a 401 too", async () => {
    const server = new FakeServer({
      "/api/chat": (request) => (request.token === "token-1" ? errorResponse(401, "Unauthorized") : sseResponse(replyItems(["Hi", "!"]))),
    });
    const result = await streamChat("Hello", { client: server.client() }).result;
    expect(result.text).toBe("Hi!");
    expect(server.requestsTo("/api/chat").map((request) => request.token)).toEqual(["token-1", "token-2"]);
  });

  test.each([
    [403, "Forbidden"],
    [429, "RateLimitExceeded"],
    [502, "UpstreamError"],
  ])("a %i is not retried", async (status, code) => {
    const server = new FakeServer({ "/api/chat": () => errorResponse(status, code) });
    const error = await rejectionOf(chat("Hello", { client: server.client() }));
    expect(isLLMGuardError(error)).toBe(true);
    expect((error as LLMGuardError).code).toBe(code);
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });
});

describe("failures around the request", () => {
  test("a chat request that cannot reach the server: NetworkError, with the cause", async () => {
    const failure = new TypeError("fetch failed");
    const server = new FakeServer({ "/api/chat": () => Promise.reject(failure) });
    const error = await rejectionOf(chat("Hello", { client: server.client() }));
    expect(error).toMatchObject({ code: "NetworkError", cause: failure });
    expect((error as LLMGuardError).status).toBeUndefined();
  });

  test("a fetch that fails for another reason than the network (a bug in a custom fetch): UnexpectedError, with the cause", async () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'headers')");
    const server = new FakeServer({ "/api/chat": () => Promise.reject(bug) });
    const error = await rejectionOf(chat("Hello", { client: server.client() }));
    expect(error).toMatchObject({ code: "UnexpectedError", cause: bug });
  });

  test("a signal aborted while the chat request waits: Aborted, no retry, the fetch was given the signal", async () => {
    const server = new FakeServer({ "/api/chat": () => new Promise<Response>(() => undefined) });
    const controller = new AbortController();
    const pending = rejectionOf(chat("Hello", { client: server.client(), signal: controller.signal }));
    await settle();
    controller.abort();
    expect(await pending).toMatchObject({ code: "Aborted" });
    const requests = server.requestsTo("/api/chat");
    expect(requests).toHaveLength(1);
    expect(requests[0]?.signal?.aborted).toBe(true);
  });

  test("a signal aborted while the token is minted: Aborted, and no chat request is made", async () => {
    const mint = deferred<Response>();
    const server = new FakeServer({ "/api/token": () => mint.promise, "/api/chat": reply });
    const controller = new AbortController();
    const pending = rejectionOf(chat("Hello", { client: server.client(), signal: controller.signal }));
    await settle();
    controller.abort();
    expect(await pending).toMatchObject({ code: "Aborted" });
    mint.resolve(tokenResponse("late"));
    await settle();
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });
});

describe("options", () => {
  test("headers as an object are sent with the token and chat requests", async () => {
    const server = new FakeServer({ "/api/chat": reply });
    await chat("Hello", { client: server.client({ headers: { "x-app-session": "abc" } }) });
    expect(server.requests.map((request) => request.headers.get("x-app-session"))).toEqual(["abc", "abc"]);
  });

  test("headers as a function (sync or async) are asked for on every request", async () => {
    let session = 0;
    const server = new FakeServer({ "/api/chat": reply });
    const headers = vi.fn(async () => {
      session += 1;
      return { "x-app-session": `session-${session}` };
    });
    const client = server.client({ headers });
    await chat("Hello", { client });
    await chat("Again", { client });
    expect(server.requests.map((request) => `${request.path} ${request.headers.get("x-app-session")}`)).toEqual([
      "/api/token session-1",
      "/api/chat session-2",
      "/api/chat session-3",
    ]);

    const syncServer = new FakeServer({ "/api/chat": reply });
    await chat("Hello", { client: syncServer.client({ headers: () => ({ "x-tenant": "acme" }) }) });
    expect(syncServer.requests.map((request) => request.headers.get("x-tenant"))).toEqual(["acme", "acme"]);
  });

  test("extra headers cannot replace the SDK's bearer token", async () => {
    const server = new FakeServer({ "/api/chat": reply });
    await chat("Hello", { client: server.client({ headers: { authorization: "Bearer not-a-token" } }) });
    expect(server.requestsTo("/api/chat")[0]?.token).toBe("token-1");
  });

  test.each(["https://proxy.test/llm", "https://proxy.test/llm/", "https://proxy.test/llm///"])(
    "baseUrl %s: requests go to https://proxy.test/llm/api/...",
    async (baseUrl) => {
      const server = new FakeServer({ "/api/chat": reply }, { baseUrl: "https://proxy.test/llm" });
      const client = new Client({ baseUrl, fetch: server.fetch });
      expect(client.baseUrl).toBe("https://proxy.test/llm");
      await chat("Hello", { client });
      expect(server.requests.map((request) => request.url)).toEqual(["https://proxy.test/llm/api/token", "https://proxy.test/llm/api/chat"]);
    },
  );
});

describe("fetch and the default client", () => {
  test("importing the SDK without a global fetch works; the global fetch is looked up per call", async () => {
    const original = Object.getOwnPropertyDescriptor(globalThis, "fetch");
    vi.resetModules();
    Reflect.deleteProperty(globalThis, "fetch");
    try {
      expect(typeof globalThis.fetch).toBe("undefined");
      const sdk = await import("./index.ts");
      const client = new sdk.Client({ baseUrl: BASE_URL });

      const server = new FakeServer({ "/api/chat": reply });
      Object.defineProperty(globalThis, "fetch", { value: server.fetch, configurable: true, writable: true });
      expect(await sdk.chat("Hello", { client })).toBe("Hi!");
      expect(server.requests).toHaveLength(2);
    } finally {
      if (original) Object.defineProperty(globalThis, "fetch", original);
      vi.resetModules();
    }
    expect(typeof globalThis.fetch).toBe("function");
  });

  test("configure() points chat at a server; configuring again starts a new token cache", async () => {
    const first = new FakeServer({ "/api/chat": reply });
    configure({ baseUrl: BASE_URL, fetch: first.fetch });
    await chat("Hello");
    await chat("Hello");
    expect(first.requestsTo("/api/chat")).toHaveLength(2);
    expect(first.requestsTo("/api/token")).toHaveLength(1);

    const second = new FakeServer({ "/api/chat": reply });
    configure({ baseUrl: BASE_URL, fetch: second.fetch });
    await chat("Hello");
    expect(second.requests.map((request) => request.path)).toEqual(["/api/token", "/api/chat"]);
    expect(first.requests).toHaveLength(3);
  });

  test("getClient() returns the same client until configure() replaces it", () => {
    const before = getClient();
    expect(getClient()).toBe(before);
    configure({ baseUrl: "https://elsewhere.test/" });
    const after = getClient();
    expect(after).not.toBe(before);
    expect(after.baseUrl).toBe("https://elsewhere.test");
  });
});

describe("tokens for other libraries", () => {
  test("getToken() suits the openai SDK's apiKey: a cached token, the same one until it must change", async () => {
    const server = new FakeServer({});
    const client = server.client();
    const first = await getToken({ client });
    expect(first).toBe("token-1");
    expect(await getToken({ client })).toBe(first);
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test("getAuthHeaders() is the AI SDK transport's headers: a bearer authorization with the token", async () => {
    const server = new FakeServer({});
    expect(await getAuthHeaders({ client: server.client() })).toEqual({ authorization: "Bearer token-1" });
  });
});
