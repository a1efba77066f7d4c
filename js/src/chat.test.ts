import { describe, expect, test } from "vitest";

import { chat, type ChatOptions, type ChatStream, streamChat } from "./chat.ts";
import { LLMGuardError } from "./errors.ts";
import {
  chatServer,
  controlledStream,
  deltaItem,
  errorResponse,
  FakeServer,
  type Handler,
  jsonResponse,
  rejectionOf,
  REPLY_END,
  REPLY_START,
  replyItems,
  settle,
  soon,
  sseResponse,
  streamed,
  USAGE,
} from "./fake-server.test-util.ts";

const jsonReply = (content = "Paris.") =>
  jsonResponse({ role: "assistant", content, usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 } });

async function deltasOf(stream: ChatStream): Promise<string[]> {
  const deltas: string[] = [];
  for await (const delta of stream) deltas.push(delta);
  return deltas;
}

/** The error thrown while iterating `stream` (fails if the iteration ends normally). */
async function iterationError(stream: ChatStream): Promise<unknown> {
  return rejectionOf(deltasOf(stream));
}

/** A server whose /api/chat streams from a body the test controls. */
function streamingServer() {
  const source = controlledStream();
  const server = new FakeServer({ "/api/chat": () => sseResponse(source.stream) });
  return { server, source };
}

describe("chat", () => {
  test("posts the prompt as one user message, without streaming, and returns the content", async () => {
    const server = new FakeServer({ "/api/chat": () => jsonReply() });
    expect(await chat("What is the capital of France?", { client: server.client() })).toBe("Paris.");
    const [request] = server.requestsTo("/api/chat");
    expect(request?.body).toEqual({ messages: [{ role: "user", content: "What is the capital of France?" }], stream: false });
    expect(request?.headers.get("authorization")).toBe("Bearer token-1");
  });

  test("a conversation is sent as role and content only; system and maxTokens become system and max_tokens", async () => {
    const server = new FakeServer({ "/api/chat": () => jsonReply("Fine.") });
    const conversation = [
      { id: "m1", role: "user" as const, content: "Hi" },
      { id: "m2", role: "assistant" as const, content: "Hello!" },
      { id: "m3", role: "user" as const, content: "How are you?" },
    ];
    await chat(conversation, { client: server.client(), system: "Answer briefly.", maxTokens: 50 });
    expect(server.requestsTo("/api/chat")[0]?.body).toEqual({
      messages: [
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello!" },
        { role: "user", content: "How are you?" },
      ],
      stream: false,
      system: "Answer briefly.",
      max_tokens: 50,
    });
  });

  test("an empty system prompt is still sent", async () => {
    const server = new FakeServer({ "/api/chat": () => jsonReply() });
    await chat("Hi", { client: server.client(), system: "" });
    expect(server.requestsTo("/api/chat")[0]?.body).toMatchObject({ system: "" });
  });

  test("a reply without content: InvalidResponse", async () => {
    const server = new FakeServer({ "/api/chat": () => jsonResponse({ role: "assistant" }) });
    expect(await rejectionOf(chat("Hi", { client: server.client() }))).toMatchObject({ code: "InvalidResponse" });
  });

  test("a 200 reply that is not JSON (a proxy's HTML page): InvalidResponse", async () => {
    const server = new FakeServer({ "/api/chat": () => new Response("<html>Login</html>", { status: 200, headers: { "content-type": "text/html" } }) });
    expect(await rejectionOf(chat("Hi", { client: server.client() }))).toMatchObject({ code: "InvalidResponse" });
  });
});

describe("streamChat", () => {
  test("yields the deltas in order; result has the text, finish reason, usage and message id", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["Once ", "upon ", "a time."], { messageId: "msg_42" })) });
    const stream = streamChat("Tell me a story", { client: server.client(), system: "Be brief." });
    expect(await deltasOf(stream)).toEqual(["Once ", "upon ", "a time."]);
    expect(await stream.result).toEqual({ text: "Once upon a time.", finishReason: "stop", usage: USAGE, messageId: "msg_42", degraded: null, rateLimit: {} });
    expect(server.requestsTo("/api/chat")[0]?.body).toEqual({
      messages: [{ role: "user", content: "Tell me a story" }],
      stream: true,
      system: "Be brief.",
    });
  });

  test("a reply cut at the output cap reports finishReason length", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["Lorem"], { finishReason: "length" })) });
    expect((await streamChat("Hi", { client: server.client() }).result).finishReason).toBe("length");
  });

  test("each delta is yielded as soon as it arrives, before the rest of the reply exists", async () => {
    const { server, source } = streamingServer();
    const iterator = streamChat("Hi", { client: server.client() })[Symbol.asyncIterator]();
    source.startReply("Hel");
    expect(await soon(iterator.next(), "the first delta")).toEqual({ done: false, value: "Hel" });
    source.deltas("lo");
    expect(await soon(iterator.next(), "the second delta")).toEqual({ done: false, value: "lo" });
    source.endReply();
    expect(await soon(iterator.next(), "the end")).toEqual({ done: true, value: undefined });
  });

  test("awaiting result without iterating works", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["Hi", " there"])) });
    const result = await streamChat("Hi", { client: server.client() }).result;
    expect(result.text).toBe("Hi there");
  });

  test("an error chunk mid-stream: the deltas before it, then the chunk's code and text, in the loop and in result", async () => {
    const server = new FakeServer({
      "/api/chat": () =>
        sseResponse([
          ...REPLY_START,
          deltaItem("Par"),
          { type: "error", errorText: "The AI provider could not answer this request.", code: "UpstreamError" },
          "[DONE]",
        ]),
    });
    const stream = streamChat("Hi", { client: server.client() });
    const seen: string[] = [];
    let thrown: unknown;
    try {
      for await (const delta of stream) seen.push(delta);
    } catch (error) {
      thrown = error;
    }
    expect(seen).toEqual(["Par"]);
    expect(thrown).toBeInstanceOf(LLMGuardError);
    expect(thrown).toMatchObject({ code: "UpstreamError", message: "The AI provider could not answer this request." });
    const fromResult = await rejectionOf(stream.result);
    expect(fromResult).toMatchObject({ code: "UpstreamError", message: "The AI provider could not answer this request." });
  });

  test("an error chunk with a budget code keeps that code", async () => {
    const server = new FakeServer({
      "/api/chat": () => sseResponse([...REPLY_START, { type: "error", errorText: "Budget used up.", code: "TokenBudgetExceeded" }, "[DONE]"]),
    });
    expect(await rejectionOf(streamChat("Hi", { client: server.client() }).result)).toMatchObject({ code: "TokenBudgetExceeded" });
  });

  test.each([
    ["ends with [DONE] but no finish", [...REPLY_START, deltaItem("Hal"), "[DONE]" as const]],
    ["ends without finish or [DONE]", [...REPLY_START, deltaItem("Hal")]],
  ])("a stream that %s: InvalidResponse", async (_, items) => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(items) });
    const stream = streamChat("Hi", { client: server.client() });
    expect(await iterationError(stream)).toMatchObject({ code: "InvalidResponse" });
    expect(await rejectionOf(stream.result)).toMatchObject({ code: "InvalidResponse" });
  });

  test("a connection lost mid-stream: NetworkError", async () => {
    const { server, source } = streamingServer();
    const stream = streamChat("Hi", { client: server.client() });
    source.startReply("Hel");
    await settle();
    source.error(new TypeError("terminated"));
    expect(await iterationError(stream)).toMatchObject({ code: "NetworkError" });
  });

  test("abort(): Aborted in the loop and in result, the fetch signal is aborted and the download stops", async () => {
    const { server, source } = streamingServer();
    const stream = streamChat("Hi", { client: server.client() });
    const iterator = stream[Symbol.asyncIterator]();
    source.startReply("Hel");
    expect((await soon(iterator.next())).value).toBe("Hel");
    stream.abort();
    expect(await rejectionOf(iterator.next())).toMatchObject({ code: "Aborted" });
    expect(await rejectionOf(stream.result)).toMatchObject({ code: "Aborted" });
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(source.cancelled).toBe(true);
  });

  test("an outer AbortSignal: Aborted, and the fetch signal is aborted", async () => {
    const { server, source } = streamingServer();
    const controller = new AbortController();
    const stream = streamChat("Hi", { client: server.client(), signal: controller.signal });
    source.startReply("Hel");
    await settle();
    controller.abort();
    expect(await rejectionOf(stream.result)).toMatchObject({ code: "Aborted" });
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(source.cancelled).toBe(true);
  });

  test("an outer signal aborted before the call: Aborted, and no chat request", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["x"])) });
    const stream = streamChat("Hi", { client: server.client(), signal: AbortSignal.abort() });
    expect(await iterationError(stream)).toMatchObject({ code: "Aborted" });
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });

  test("breaking out of the loop aborts the request", async () => {
    const { server, source } = streamingServer();
    const stream = streamChat("Hi", { client: server.client() });
    source.startReply("Hel", "lo");
    for await (const delta of stream) {
      expect(delta).toBe("Hel");
      break;
    }
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(await rejectionOf(stream.result)).toMatchObject({ code: "Aborted" });
    expect(source.cancelled).toBe(true);
  });

  test("abort() after the reply finished changes nothing", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["Done"])) });
    const stream = streamChat("Hi", { client: server.client() });
    const result = await stream.result;
    stream.abort();
    expect(await stream.result).toBe(result);
    expect(await deltasOf(stream)).toEqual(["Done"]);
  });
});

type Call = (options: ChatOptions) => Promise<unknown>;
const calls: [string, Call][] = [
  ["chat", (options) => chat("Hi", options)],
  ["streamChat", (options) => streamChat("Hi", options).result],
];

describe.each(calls)("%s error mapping", (_, call) => {
  const failWith = async (handler: Handler, options: Omit<ChatOptions, "client"> = {}) => {
    const server = new FakeServer({ "/api/chat": handler });
    const error = await rejectionOf(call({ ...options, client: server.client() }));
    expect(error).toBeInstanceOf(LLMGuardError);
    return { error: error as LLMGuardError, server };
  };

  test.each([
    [403, "Forbidden"],
    [413, "PayloadTooLarge"],
    [422, "InvalidRequest"],
    [502, "UpstreamError"],
    [503, "SpendCapReached"],
  ])("%i → %s with its status", async (status, code) => {
    const { error } = await failWith(() => errorResponse(status, code, { message: `${code} happened.` }));
    expect(error).toMatchObject({ code, status, message: `${code} happened.`, retryAfter: undefined });
  });

  test("401 after the retry → Unauthorized", async () => {
    const { error, server } = await failWith(() => errorResponse(401, "Unauthorized"));
    expect(error).toMatchObject({ code: "Unauthorized", status: 401 });
    expect(server.requestsTo("/api/chat")).toHaveLength(2);
  });

  test("429 → RateLimitExceeded with retryAfter", async () => {
    const { error } = await failWith(() =>
      errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "30" }, extra: { retry_after: 30 } }),
    );
    expect(error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 30 });
  });

  test("a network failure → NetworkError", async () => {
    const { error } = await failWith(() => Promise.reject(new TypeError("fetch failed")));
    expect(error.code).toBe("NetworkError");
  });

  test("an abort → Aborted", async () => {
    const controller = new AbortController();
    const { error } = await failWith(() => {
      controller.abort();
      return new Promise<Response>(() => undefined);
    }, { signal: controller.signal });
    expect(error.code).toBe("Aborted");
  });
});

describe("presets and degraded replies", () => {
  test("preset goes in the body of chat() and streamChat(); none, no field", async () => {
    const server = chatServer([() => jsonResponse({ role: "assistant", content: "a" }), streamed("b"), streamed("c")]);
    const client = server.client();
    await chat("one", { client, preset: "support" });
    await streamChat("two", { client, preset: "sales" }).result;
    await streamChat("three", { client }).result;
    const bodies = server.requestsTo("/api/chat").map((request) => request.body as Record<string, unknown>);
    expect(bodies.map((body) => body["preset"])).toEqual(["support", "sales", undefined]);
    expect("preset" in (bodies[2] ?? {})).toBe(false);
  });

  test("the stream's start/finish metadata degraded becomes result.degraded ({threshold, model, maxTokens})", async () => {
    const degraded = { threshold: 0.8, model: "gpt-4.1-nano", max_tokens: 300 };
    const items = replyItems(["short"]);
    const withMetadata = items.map((item) =>
      item !== "[DONE]" && (item["type"] === "start" || item["type"] === "finish")
        ? { ...item, messageMetadata: { ...(item["messageMetadata"] as object), degraded } }
        : item,
    );
    const server = chatServer([() => sseResponse(withMetadata), () => sseResponse([{ type: "start", messageMetadata: { degraded: { threshold: 0.95, model: null, max_tokens: 100 } } }, ...items.slice(1)])]);
    const client = server.client();
    expect((await streamChat("x", { client }).result).degraded).toEqual({ threshold: 0.8, model: "gpt-4.1-nano", maxTokens: 300 });
    // Only the start chunk says so (the finish chunk has its usage only): still degraded, the model unchanged.
    expect((await streamChat("y", { client }).result).degraded).toEqual({ threshold: 0.95, model: null, maxTokens: 100 });
  });

  test("a reply without degraded metadata: degraded is null", async () => {
    const server = chatServer([streamed("full")]);
    expect((await streamChat("x", { client: server.client() }).result).degraded).toBeNull();
  });
});
