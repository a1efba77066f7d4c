// @vitest-environment happy-dom
import { act, cleanup, renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, test, vi } from "vitest";

import type { ChatResult } from "../chat.ts";
import type { LLMGuardError } from "../errors.ts";
import {
  chatBodies,
  chatServer,
  controlled,
  errorResponse,
  FakeServer,
  jsonResponse,
  rateLimitHeaders,
  type Reply,
  replyItems,
  sseResponse,
  streamed,
  tokenResponse,
  turns,
  USAGE,
  USAGE_BODY,
} from "../fake-server.test-util.ts";
import type { SessionMessage } from "../session.ts";
import { ChatWidget as WidgetFromItsEntry } from "../widget/react.ts";
import { ChatWidget, useChat, type UseChatOptions, type UseChatResult } from "./index.ts";

afterEach(() => {
  cleanup();
  localStorage.clear();
  vi.useRealTimers();
});

describe("useChat", () => {
  /** The hook on a fake server; `statuses` records the status of every render. */
  function renderChat(replies: Reply[], options: Omit<UseChatOptions, "client"> = {}) {
    const server = chatServer(replies);
    const client = server.client();
    const statuses: string[] = [];
    const hook = renderHook(
      (props: Omit<UseChatOptions, "client">) => {
        const chat = useChat({ ...props, client });
        statuses.push(chat.status);
        return chat;
      },
      { initialProps: options },
    );
    const changes = () => statuses.filter((status, index) => index === 0 || statuses[index - 1] !== status);
    return { server, hook, result: hook.result, changes };
  }

  /** Call `action` on the hook's latest result inside act, without waiting for the reply. */
  function start(result: { current: UseChatResult }, action: (chat: UseChatResult) => Promise<void>): Promise<void> {
    let pending: Promise<void> = Promise.resolve();
    act(() => {
      pending = action(result.current);
    });
    return pending;
  }

  test("starts ready and empty, with initialMessages given ids", () => {
    const { result } = renderChat([], {
      initialMessages: [
        { role: "user", content: "Earlier" },
        { role: "assistant", content: "Answer" },
      ],
    });
    expect(result.current.status).toBe("ready");
    expect(result.current.error).toBeUndefined();
    expect(result.current.input).toBe("");
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Earlier" },
      { role: "assistant", content: "Answer" },
    ]);
    expect(result.current.messages.every((message) => typeof message.id === "string" && message.id !== "")).toBe(true);
  });

  test("preset goes in the body; degraded and isChecking come from the session", async () => {
    const degraded = { threshold: 0.8, model: "gpt-4.1-nano", max_tokens: 300 };
    const cheap: Reply = () => sseResponse([{ type: "start", messageId: "m", messageMetadata: { degraded } }, ...replyItems(["short"]).slice(1)]);
    const { result, server } = renderChat([cheap], { preset: "support" });
    expect(result.current.isChecking).toBe(false);
    expect(result.current.degraded).toBeNull();
    await act(() => result.current.send("Hello"));
    expect((chatBodies(server)[0] as { preset?: string }).preset).toBe("support");
    expect(result.current.degraded).toEqual({ threshold: 0.8, model: "gpt-4.1-nano", maxTokens: 300 });
  });

  test("isChecking is true while the server's CAPTCHA is up (status submitted)", async () => {
    let answer!: (token: string) => void;
    const server = new FakeServer({
      "/api/token": (_request, index) =>
        index === 0
          ? errorResponse(401, "ChallengeRequired", { extra: { challenge: { kind: "hcaptcha", site_key: "k", action: null, script: "s" } } })
          : tokenResponse("t"),
      "/api/chat": () => sseResponse(replyItems(["ok"])),
    });
    const client = server.client();
    const { result } = renderHook(() => useChat({ client, attest: () => new Promise((resolve) => (answer = resolve)) }));
    const sent = start(result, (chat) => chat.send("Hello"));
    await waitFor(() => expect(result.current.isChecking).toBe(true));
    expect(result.current.status).toBe("submitted");
    await act(async () => {
      answer("token");
      await sent;
    });
    expect(result.current.isChecking).toBe(false);
    expect(result.current.status).toBe("ready");
  });

  test("a turn goes ready → submitted → streaming → ready while the messages grow", async () => {
    const { reply, source } = controlled();
    const { result, changes } = renderChat([reply]);

    const sending = start(result, (chat) => chat.send("Hi"));
    expect(result.current.status).toBe("submitted");
    expect(turns(result.current.messages)).toEqual([{ role: "user", content: "Hi" }]);

    source.startReply("Hel");
    await waitFor(() => expect(result.current.status).toBe("streaming"));
    expect(turns(result.current.messages).at(-1)).toEqual({ role: "assistant", content: "Hel" });

    source.deltas("lo");
    await waitFor(() => expect(result.current.messages.at(-1)?.content).toBe("Hello"));
    expect(result.current.status).toBe("streaming");

    source.endReply();
    await act(() => sending);
    expect(result.current.status).toBe("ready");
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
    ]);
    expect(changes()).toEqual(["ready", "submitted", "streaming", "ready"]);
  });

  test("send() without text sends the input and clears it", async () => {
    const { result, server } = renderChat([streamed("Sure.")]);
    act(() => result.current.setInput("From the box"));
    expect(result.current.input).toBe("From the box");

    await act(() => result.current.send());

    expect(result.current.input).toBe("");
    expect(chatBodies(server)[0]?.messages).toEqual([{ role: "user", content: "From the box" }]);
    expect(turns(result.current.messages).at(-1)).toEqual({ role: "assistant", content: "Sure." });
  });

  test("send(text) sends the text and leaves the input alone", async () => {
    const { result, server } = renderChat([streamed("Sure.")]);
    act(() => result.current.setInput("a draft"));

    await act(() => result.current.send("Suggested question"));

    expect(result.current.input).toBe("a draft");
    expect(chatBodies(server)[0]?.messages).toEqual([{ role: "user", content: "Suggested question" }]);
  });

  test("send() during a reply sends nothing and keeps what the user typed", async () => {
    const { reply, source } = controlled();
    const { result, server } = renderChat([reply]);
    const sending = start(result, (chat) => chat.send("First"));
    act(() => result.current.setInput("Second question"));

    await act(() => result.current.send());

    expect(server.requestsTo("/api/chat")).toHaveLength(1);
    expect(result.current.input).toBe("Second question");
    source.startReply("Done.");
    source.endReply();
    await act(() => sending);
  });

  test("stop() cancels the request and keeps the partial reply", async () => {
    const { reply, source } = controlled();
    const { result, server } = renderChat([reply]);
    const sending = start(result, (chat) => chat.send("Tell me a story"));
    source.startReply("Once upon");
    await waitFor(() => expect(result.current.status).toBe("streaming"));

    act(() => result.current.stop());

    expect(result.current.status).toBe("ready");
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    source.endReply(" a time");
    await act(() => sending);
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Tell me a story" },
      { role: "assistant", content: "Once upon" },
    ]);
  });

  test("an error: status error with the code; retry() asks again and succeeds", async () => {
    const { result, server } = renderChat([() => errorResponse(502, "UpstreamError", { message: "Provider down." }), streamed("Now it works.")]);
    await act(() => result.current.send("Hi"));

    expect(result.current.status).toBe("error");
    expect(result.current.error).toMatchObject({ code: "UpstreamError", status: 502, message: "Provider down." });
    expect(result.current.retryIn).toBe(0);
    expect(turns(result.current.messages)).toEqual([{ role: "user", content: "Hi" }]);

    await act(() => result.current.retry());

    expect(result.current.status).toBe("ready");
    expect(result.current.error).toBeUndefined();
    expect(chatBodies(server).map((body) => body.messages)).toEqual([
      [{ role: "user", content: "Hi" }],
      [{ role: "user", content: "Hi" }],
    ]);
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Now it works." },
    ]);
  });

  test("a rate limit: retryIn counts down in renders, send() keeps the input and retry() waits until it is 0", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const { result, server } = renderChat([
      () => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "2" }, message: "Slow down." }),
      streamed("Now it works."),
    ]);
    await act(() => result.current.send("Hi"));
    expect(result.current.error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 2 });
    expect(result.current.retryIn).toBe(2);

    act(() => result.current.setInput("Typed meanwhile"));
    await act(() => result.current.send());
    await act(() => result.current.retry());
    expect(result.current.input).toBe("Typed meanwhile");
    expect(server.requestsTo("/api/chat")).toHaveLength(1);

    act(() => vi.advanceTimersByTime(1000));
    expect(result.current.retryIn).toBe(1);
    act(() => vi.advanceTimersByTime(1000));
    expect(result.current.retryIn).toBe(0);

    await act(() => result.current.retry());
    expect(turns(result.current.messages).at(-1)).toEqual({ role: "assistant", content: "Now it works." });
  });

  test("isBusy follows the reply: true while submitted or streaming", async () => {
    const { reply, source } = controlled();
    const { result } = renderChat([reply]);
    expect(result.current.isBusy).toBe(false);
    const sending = start(result, (chat) => chat.send("Hi"));
    expect(result.current.isBusy).toBe(true);
    source.startReply("Hel");
    await waitFor(() => expect(result.current.status).toBe("streaming"));
    expect(result.current.isBusy).toBe(true);
    source.endReply();
    await act(() => sending);
    expect(result.current.isBusy).toBe(false);
  });

  test("persist keeps the conversation in localStorage: a new hook with the same name starts from it", async () => {
    const first = renderChat([streamed("Saved answer")], { persist: "support" });
    await act(() => first.result.current.send("Saved question"));
    first.hook.unmount();

    const second = renderChat([], { persist: "support", initialMessages: [{ role: "user", content: "Not used" }] });
    expect(turns(second.result.current.messages)).toEqual([
      { role: "user", content: "Saved question" },
      { role: "assistant", content: "Saved answer" },
    ]);
  });

  test("clear() forgets the conversation", async () => {
    const { result } = renderChat([streamed("Hello!")]);
    await act(() => result.current.send("Hi"));
    expect(result.current.messages).toHaveLength(2);

    act(() => result.current.clear());

    expect(result.current.messages).toEqual([]);
    expect(result.current.status).toBe("ready");
  });

  test("setMessages() replaces the history, and the next turn sends it", async () => {
    const { result, server } = renderChat([streamed("Continued.")]);
    act(() =>
      result.current.setMessages([
        { role: "user", content: "Restored question" },
        { role: "assistant", content: "Restored answer" },
      ]),
    );
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Restored question" },
      { role: "assistant", content: "Restored answer" },
    ]);

    await act(() => result.current.send("Follow-up"));

    expect(chatBodies(server)[0]?.messages.map((message) => message.content)).toEqual([
      "Restored question",
      "Restored answer",
      "Follow-up",
    ]);
  });

  test("system goes with the request", async () => {
    const { result, server } = renderChat([streamed("Bref.")], { system: "Answer in French." });
    await act(() => result.current.send("Hi"));
    expect(chatBodies(server)[0]?.system).toBe("Answer in French.");
  });

  test("onFinish and onError: the latest callbacks given are the ones called", async () => {
    const firstFinish = vi.fn();
    const firstError = vi.fn();
    const { result, hook } = renderChat([streamed("Hel", "lo"), () => errorResponse(502, "UpstreamError")], {
      onFinish: firstFinish,
      onError: firstError,
    });
    const latestFinish = vi.fn<(message: SessionMessage, result: ChatResult) => void>();
    const latestError = vi.fn<(error: LLMGuardError) => void>();
    hook.rerender({ onFinish: latestFinish, onError: latestError });

    await act(() => result.current.send("One"));
    expect(latestFinish).toHaveBeenCalledTimes(1);
    const [message, finished] = latestFinish.mock.calls[0] ?? [];
    expect(message).toMatchObject({ role: "assistant", content: "Hello" });
    expect(finished).toEqual({ text: "Hello", finishReason: "stop", usage: USAGE, messageId: "msg_1", degraded: null, rateLimit: {} });

    await act(() => result.current.send("Two"));
    expect(latestError).toHaveBeenCalledTimes(1);
    expect(latestError.mock.calls[0]?.[0]).toMatchObject({ code: "UpstreamError", status: 502 });

    expect(firstFinish).not.toHaveBeenCalled();
    expect(firstError).not.toHaveBeenCalled();
  });

  test("unmounting stops the reply in progress (the request is aborted)", async () => {
    const { reply, source } = controlled();
    const { result, server, hook } = renderChat([reply]);
    void start(result, (chat) => chat.send("Hi"));
    source.startReply("Par");
    await waitFor(() => expect(result.current.status).toBe("streaming"));

    hook.unmount();

    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
  });
});

describe("useChat usage", () => {
  test("usage: true fetches once on mount, then each reply's headers keep it up to date without a fetch", async () => {
    const server = new FakeServer({
      "/api/usage": () => jsonResponse(USAGE_BODY),
      "/api/chat": () => sseResponse(replyItems(["Hi"]), rateLimitHeaders(56, 90_000)),
    });
    const client = server.client();
    const { result } = renderHook(() => useChat({ client, usage: true }));
    expect(result.current.usage).toBeNull();
    await waitFor(() => expect(result.current.usage?.requests?.remaining).toBe(57));
    expect(result.current.usage?.tokens?.remaining).toBe(93_120);

    await act(() => result.current.send("Hello"));
    expect(result.current.usage).toMatchObject({ requests: { remaining: 56 }, tokens: { remaining: 90_000 }, degraded: false });
    expect(server.requestsTo("/api/usage")).toHaveLength(1);
  });

  test("without the option, usage stays null and nothing is fetched", async () => {
    const server = new FakeServer({ "/api/chat": () => sseResponse(replyItems(["Hi"]), rateLimitHeaders(56, 90_000)) });
    const client = server.client();
    const { result } = renderHook(() => useChat({ client }));
    await act(() => result.current.send("Hello"));
    expect(result.current.usage).toBeNull();
    expect(server.requestsTo("/api/usage")).toHaveLength(0);
  });
});

describe("ChatWidget from @llmguard/sdk/react", () => {
  test("is the one from @llmguard/sdk/widget/react, kept for the imports written before it moved", () => {
    expect(ChatWidget).toBe(WidgetFromItsEntry);
  });
});
