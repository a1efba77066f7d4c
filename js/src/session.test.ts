import { describe, expect, test, vi } from "vitest";

import type { ChatResult } from "./chat.ts";
import type { LLMGuardError } from "./errors.ts";
import {
  type ControlledStream,
  controlledStream,
  deltaItem,
  errorResponse,
  FakeServer,
  REPLY_END,
  REPLY_START,
  replyItems,
  settle,
  sseResponse,
  USAGE,
  controlled,
  streamed,
  type Reply,
} from "./fake-server.test-util.ts";
import { type ChatSession, type ChatSessionOptions, type ChatSessionState, createChatSession, type SessionMessage } from "./session.ts";

/** A session whose server answers /api/chat with `replies`, one per request, in order. */
function sessionWith(replies: Reply[], options: Omit<ChatSessionOptions, "client"> = {}) {
  const server = new FakeServer({
    "/api/chat": (_request, index) => replies[index]?.() ?? errorResponse(500, "InternalError", { message: "No reply planned." }),
  });
  const session = createChatSession({ ...options, client: server.client() });
  const snapshots: ChatSessionState[] = [];
  session.subscribe(() => snapshots.push(session.getSnapshot()));
  return { server, session, snapshots };
}

/**
 * The statuses a turn went through, without repeats, from its first busy status
 * (a notification that only adds the user message is not a status change).
 */
function statuses(snapshots: readonly ChatSessionState[]): string[] {
  const all = snapshots.map((snapshot) => snapshot.status);
  const start = all.findIndex((status) => status !== "ready");
  return all.slice(Math.max(start, 0)).filter((status, index, kept) => index === 0 || kept[index - 1] !== status);
}

const turns = (session: ChatSession) => session.getSnapshot().messages.map(({ role, content }) => ({ role, content }));

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let round = 0; round < 50; round++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("a turn", () => {
  test("goes ready → submitted → streaming → ready; onFinish gets the message and the result", async () => {
    const onFinish = vi.fn<(message: SessionMessage, result: ChatResult) => void>();
    const onError = vi.fn();
    const { session, snapshots } = sessionWith([streamed("Hel", "lo")], { onFinish, onError });
    expect(session.getSnapshot()).toEqual({ messages: [], status: "ready", error: undefined });

    await session.send("Hi");

    expect(statuses(snapshots)).toEqual(["submitted", "streaming", "ready"]);
    expect(turns(session)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
    ]);
    expect(session.error).toBeUndefined();
    expect(onError).not.toHaveBeenCalled();
    expect(onFinish).toHaveBeenCalledTimes(1);
    const [message, result] = onFinish.mock.calls[0] ?? [];
    expect(message).toEqual(session.messages[1]);
    expect(result).toEqual({ text: "Hello", finishReason: "stop", usage: USAGE, messageId: "msg_1" });
  });

  test("the status is submitted at once, and streaming with the partial reply as deltas arrive", async () => {
    const { reply, source } = controlled();
    const { session } = sessionWith([reply]);
    const sending = session.send("Hi");
    expect(session.status).toBe("submitted");
    expect(turns(session)).toEqual([{ role: "user", content: "Hi" }]);

    source.pushItems(...REPLY_START, deltaItem("Hel"));
    await until(() => session.status === "streaming", "streaming");
    expect(session.messages.at(-1)).toMatchObject({ role: "assistant", content: "Hel" });

    source.pushItems(deltaItem("lo"));
    await until(() => session.messages.at(-1)?.content === "Hello", "the second delta");
    expect(session.status).toBe("streaming");

    source.pushItems(...REPLY_END);
    await sending;
    expect(session.status).toBe("ready");
  });

  test("send() adds the user message and becomes submitted in one change (no ready state with an unanswered message)", async () => {
    const { reply } = controlled();
    const { session, snapshots } = sessionWith([reply]);
    const sending = session.send("Hi");
    try {
      expect(snapshots[0]).toMatchObject({ status: "submitted", messages: [{ role: "user", content: "Hi" }] });
      expect(snapshots.filter((snapshot) => snapshot.status === "ready")).toEqual([]);
    } finally {
      session.stop();
      await sending;
    }
  });

  test("messages have distinct string ids", async () => {
    const { session } = sessionWith([streamed("One"), streamed("Two")]);
    await session.send("First");
    await session.send("Second");
    const ids = session.messages.map((message) => message.id);
    expect(ids).toHaveLength(4);
    expect(ids.every((id) => typeof id === "string" && id.length > 0)).toBe(true);
    expect(new Set(ids).size).toBe(4);
  });

  test("an error: status error with the error, onError called, the user message kept, send resolves", async () => {
    const onError = vi.fn<(error: LLMGuardError) => void>();
    const onFinish = vi.fn();
    const { session, snapshots } = sessionWith(
      [() => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "30" }, message: "Slow down." })],
      { onError, onFinish },
    );
    await expect(session.send("Hi")).resolves.toBeUndefined();
    expect(statuses(snapshots)).toEqual(["submitted", "error"]);
    expect(session.status).toBe("error");
    expect(session.error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 30, message: "Slow down." });
    expect(onError).toHaveBeenCalledTimes(1);
    expect(onError.mock.calls[0]?.[0]).toBe(session.error);
    expect(onFinish).not.toHaveBeenCalled();
    expect(turns(session)).toEqual([{ role: "user", content: "Hi" }]);
  });

  test("an error chunk mid-stream: status error with the chunk's code; the next send clears the error", async () => {
    const { session } = sessionWith([
      () => sseResponse([...REPLY_START, deltaItem("Par"), { type: "error", errorText: "Provider down.", code: "UpstreamError" }, "[DONE]"]),
      streamed("Fine"),
    ]);
    await session.send("Hi");
    expect(session.status).toBe("error");
    expect(session.error).toMatchObject({ code: "UpstreamError", message: "Provider down." });

    await session.send("Again");
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(session.messages.at(-1)).toMatchObject({ role: "assistant", content: "Fine" });
  });
});

describe("snapshots", () => {
  test("each change gives a new snapshot; messages arrays are new when they change and never mutated", async () => {
    const { session, snapshots } = sessionWith([streamed("A", "B", "C")]);
    const initial = session.getSnapshot();
    const frozen: string[] = [];
    session.subscribe(() => frozen.push(JSON.stringify(session.getSnapshot())));
    await session.send("Hi");

    expect(snapshots.length).toBeGreaterThanOrEqual(5);
    expect(new Set([initial, ...snapshots]).size).toBe(snapshots.length + 1);
    // What each listener saw is still what it was: no snapshot or array was changed in place.
    expect(snapshots.map((snapshot) => JSON.stringify(snapshot))).toEqual(frozen);
    for (const [index, snapshot] of snapshots.entries()) {
      const previous = index === 0 ? initial : snapshots[index - 1];
      if (JSON.stringify(snapshot.messages) !== JSON.stringify(previous?.messages)) {
        expect(snapshot.messages, `snapshot ${index}`).not.toBe(previous?.messages);
      }
    }
    // Without a change, getSnapshot returns the same object (as useSyncExternalStore needs).
    expect(session.getSnapshot()).toBe(session.getSnapshot());
  });

  test("the getters mirror the snapshot", async () => {
    const { session } = sessionWith([streamed("Hello")]);
    await session.send("Hi");
    const snapshot = session.getSnapshot();
    expect(session.messages).toBe(snapshot.messages);
    expect(session.status).toBe(snapshot.status);
    expect(session.error).toBe(snapshot.error);
  });

  test("unsubscribe stops the notifications", async () => {
    const { session } = sessionWith([streamed("Hello")]);
    const listener = vi.fn();
    const unsubscribe = session.subscribe(listener);
    unsubscribe();
    await session.send("Hi");
    expect(listener).not.toHaveBeenCalled();
  });
});

describe("history", () => {
  test("every request carries the previous turns, and the system prompt", async () => {
    const { session, server } = sessionWith([streamed("Hello!"), streamed("Fine."), streamed("Bye.")], { system: "Answer briefly." });
    await session.send("Hi");
    await session.send("How are you?");
    await session.send("Goodbye");
    const bodies = server.requestsTo("/api/chat").map((request) => request.body);
    expect(bodies).toEqual([
      { stream: true, system: "Answer briefly.", messages: [{ role: "user", content: "Hi" }] },
      {
        stream: true,
        system: "Answer briefly.",
        messages: [
          { role: "user", content: "Hi" },
          { role: "assistant", content: "Hello!" },
          { role: "user", content: "How are you?" },
        ],
      },
      {
        stream: true,
        system: "Answer briefly.",
        messages: [
          { role: "user", content: "Hi" },
          { role: "assistant", content: "Hello!" },
          { role: "user", content: "How are you?" },
          { role: "assistant", content: "Fine." },
          { role: "user", content: "Goodbye" },
        ],
      },
    ]);
  });

  test("without a system option, no system field is sent", async () => {
    const { session, server } = sessionWith([streamed("Hello!")]);
    await session.send("Hi");
    expect(server.requestsTo("/api/chat")[0]?.body).not.toHaveProperty("system");
  });

  test("initialMessages: ids kept when given, made up when not, and sent as history", async () => {
    const { session, server } = sessionWith([streamed("Yes.")], {
      initialMessages: [
        { id: "saved-1", role: "user", content: "Remember me?" },
        { role: "assistant", content: "Of course." },
      ],
    });
    expect(session.messages[0]).toEqual({ id: "saved-1", role: "user", content: "Remember me?" });
    expect(session.messages[1]).toMatchObject({ role: "assistant", content: "Of course." });
    expect(typeof session.messages[1]?.id).toBe("string");
    expect(session.messages[1]?.id).not.toBe("saved-1");
    expect(session.status).toBe("ready");

    await session.send("Really?");
    expect(server.requestsTo("/api/chat")[0]?.body).toMatchObject({
      messages: [
        { role: "user", content: "Remember me?" },
        { role: "assistant", content: "Of course." },
        { role: "user", content: "Really?" },
      ],
    });
  });

  test("setMessages replaces the history (ids kept or made up) and notifies", async () => {
    const { session, server, snapshots } = sessionWith([streamed("Old one"), streamed("Restored")]);
    await session.send("Forget this");
    const before = snapshots.length;
    session.setMessages([
      { id: "r1", role: "user", content: "Restored question" },
      { role: "assistant", content: "Restored answer" },
    ]);
    expect(snapshots.length).toBe(before + 1);
    expect(session.messages[0]).toEqual({ id: "r1", role: "user", content: "Restored question" });
    expect(typeof session.messages[1]?.id).toBe("string");

    await session.send("Next");
    expect(server.requestsTo("/api/chat")[1]?.body).toMatchObject({
      messages: [
        { role: "user", content: "Restored question" },
        { role: "assistant", content: "Restored answer" },
        { role: "user", content: "Next" },
      ],
    });
  });
});

describe("send", () => {
  test("is ignored while a reply is in progress", async () => {
    const { reply, source } = controlled();
    const { session, server } = sessionWith([reply, streamed("Second")]);
    const first = session.send("First");
    await session.send("Too soon");
    expect(turns(session)).toEqual([{ role: "user", content: "First" }]);

    source.pushItems(...REPLY_START, deltaItem("Streaming"));
    await until(() => session.status === "streaming", "streaming");
    await session.send("Still too soon");
    expect(turns(session)).toEqual([
      { role: "user", content: "First" },
      { role: "assistant", content: "Streaming" },
    ]);

    source.pushItems(...REPLY_END);
    await first;
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
  });

  test("is ignored for blank text", async () => {
    const { session, server, snapshots } = sessionWith([streamed("Never")]);
    await session.send("");
    await session.send("   \n\t");
    expect(snapshots).toEqual([]);
    expect(session.messages).toEqual([]);
    expect(server.requests).toEqual([]);
  });
});

describe("stop", () => {
  test("mid-stream keeps the partial reply, returns to ready without an error, and cancels the request", async () => {
    const onError = vi.fn();
    const onFinish = vi.fn();
    const { reply, source } = controlled();
    const { session, server } = sessionWith([reply], { onError, onFinish });
    const sending = session.send("Tell me a story");
    source.pushItems(...REPLY_START, deltaItem("Once upon"));
    await until(() => session.messages.at(-1)?.content === "Once upon", "the first delta");

    session.stop();
    await sending;
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(turns(session)).toEqual([
      { role: "user", content: "Tell me a story" },
      { role: "assistant", content: "Once upon" },
    ]);
    expect(onError).not.toHaveBeenCalled();
    expect(onFinish).not.toHaveBeenCalled();
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(source.cancelled).toBe(true);
  });

  test("before anything arrived: ready, only the user message", async () => {
    const { reply } = controlled();
    const { session } = sessionWith([reply]);
    const sending = session.send("Hi");
    await settle();
    session.stop();
    await sending;
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(turns(session)).toEqual([{ role: "user", content: "Hi" }]);
  });

  test("when nothing is in progress changes nothing", async () => {
    const { session, snapshots } = sessionWith([streamed("Hello")]);
    await session.send("Hi");
    const count = snapshots.length;
    session.stop();
    expect(snapshots.length).toBe(count);
    expect(session.status).toBe("ready");
  });
});

describe("retry", () => {
  test("after an error resends the same history and replaces the failed partial reply", async () => {
    const { session, server } = sessionWith([
      streamed("Hello!"),
      () => sseResponse([...REPLY_START, deltaItem("Half an ans"), { type: "error", errorText: "Provider down.", code: "UpstreamError" }, "[DONE]"]),
      streamed("A whole answer."),
    ]);
    await session.send("Hi");
    await session.send("Explain");
    expect(session.status).toBe("error");
    expect(session.messages.at(-1)).toMatchObject({ role: "assistant", content: "Half an ans" });

    await session.retry();
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(turns(session)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
      { role: "user", content: "Explain" },
      { role: "assistant", content: "A whole answer." },
    ]);
    const [, failed, retried] = server.requestsTo("/api/chat");
    expect(retried?.body).toEqual(failed?.body);
  });

  test("after an error response (no partial reply) resends the same history", async () => {
    const { session, server } = sessionWith([() => errorResponse(502, "UpstreamError"), streamed("Now it works.")]);
    await session.send("Hi");
    expect(session.status).toBe("error");
    await session.retry();
    expect(turns(session)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Now it works." },
    ]);
    const [failed, retried] = server.requestsTo("/api/chat");
    expect(retried?.body).toEqual(failed?.body);
  });

  test("after a complete reply regenerates it", async () => {
    const { session } = sessionWith([streamed("First take."), streamed("Second take.")]);
    await session.send("Hi");
    await session.retry();
    expect(turns(session)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Second take." },
    ]);
  });

  test("with no user message does nothing", async () => {
    const { session, server } = sessionWith([streamed("Never")], { initialMessages: [{ role: "assistant", content: "Welcome!" }] });
    await session.retry();
    expect(server.requests).toEqual([]);
    expect(turns(session)).toEqual([{ role: "assistant", content: "Welcome!" }]);
  });
});

describe("clear", () => {
  test("forgets the conversation and any error", async () => {
    const { session } = sessionWith([streamed("Hello"), () => errorResponse(502, "UpstreamError")]);
    await session.send("Hi");
    await session.send("Again");
    expect(session.status).toBe("error");
    session.clear();
    expect(session.getSnapshot()).toEqual({ messages: [], status: "ready", error: undefined });
  });

  test("mid-stream cancels the request and no part of the old reply comes back", async () => {
    const { reply, source } = controlled();
    const onError = vi.fn();
    const { session, server } = sessionWith([reply], { onError });
    const sending = session.send("Hi");
    source.pushItems(...REPLY_START, deltaItem("Hel"));
    await until(() => session.status === "streaming", "streaming");
    session.clear();
    source.pushItems(deltaItem("lo"));
    await sending;
    await settle();
    expect(session.getSnapshot()).toEqual({ messages: [], status: "ready", error: undefined });
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(onError).not.toHaveBeenCalled();
  });

  test("clear() then send() at once: the cleared reply ending does not touch the new one", async () => {
    const old = controlled();
    const fresh = controlled();
    const { session } = sessionWith([old.reply, fresh.reply]);
    const first = session.send("Old topic");
    old.source.pushItems(...REPLY_START, deltaItem("Old"));
    await until(() => session.status === "streaming", "the old reply streaming");

    session.clear();
    const second = session.send("New topic");
    await first;
    await settle();
    // The new reply has not started arriving: the session is still waiting for it.
    expect(session.status).toBe("submitted");
    expect(turns(session)).toEqual([{ role: "user", content: "New topic" }]);

    fresh.source.pushItems(...replyItems(["New answer"]));
    await second;
    expect(session.status).toBe("ready");
    expect(turns(session)).toEqual([
      { role: "user", content: "New topic" },
      { role: "assistant", content: "New answer" },
    ]);
  });
});
