import { afterEach, describe, expect, test, vi } from "vitest";

import type { ChatResult } from "./chat.ts";
import type { LLMGuardError } from "./errors.ts";
import {
  chatBodies,
  chatServer,
  controlled,
  deferred,
  errorResponse,
  failsMidStream,
  FakeServer,
  jsonResponse,
  rateLimitHeaders,
  type Reply,
  replyItems,
  settle,
  sseResponse,
  streamed,
  turns,
  until,
  USAGE,
  USAGE_BODY,
} from "./fake-server.test-util.ts";
import { type ChatSessionOptions, type ChatSessionState, type ChatStorage, createChatSession, type SessionMessage } from "./session.ts";

/** A session whose server answers /api/chat with `replies`, one per request, in order. */
function sessionWith(replies: Reply[], options: Omit<ChatSessionOptions, "client"> = {}) {
  const server = chatServer(replies);
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

const EMPTY: ChatSessionState = { messages: [], status: "ready", error: undefined, isBusy: false, retryIn: 0, isChecking: false, degraded: null, usage: null };

describe("a turn", () => {
  test("goes ready → submitted → streaming → ready; onFinish gets the message and the result", async () => {
    const onFinish = vi.fn<(message: SessionMessage, result: ChatResult) => void>();
    const onError = vi.fn();
    const { session, snapshots } = sessionWith([streamed("Hel", "lo")], { onFinish, onError });
    expect(session.getSnapshot()).toEqual(EMPTY);

    await session.send("Hi");

    expect(statuses(snapshots)).toEqual(["submitted", "streaming", "ready"]);
    expect(turns(session.messages)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
    ]);
    expect(session.error).toBeUndefined();
    expect(onError).not.toHaveBeenCalled();
    expect(onFinish).toHaveBeenCalledTimes(1);
    const [message, result] = onFinish.mock.calls[0] ?? [];
    expect(message).toEqual(session.messages[1]);
    expect(result).toEqual({ text: "Hello", finishReason: "stop", usage: USAGE, messageId: "msg_1", degraded: null, rateLimit: {} });
  });

  test("the status is submitted at once, and streaming with the partial reply as deltas arrive", async () => {
    const { reply, source } = controlled();
    const { session } = sessionWith([reply]);
    const sending = session.send("Hi");
    expect(session.status).toBe("submitted");
    expect(turns(session.messages)).toEqual([{ role: "user", content: "Hi" }]);

    source.startReply("Hel");
    await until(() => session.status === "streaming", "streaming");
    expect(session.messages.at(-1)).toMatchObject({ role: "assistant", content: "Hel" });

    source.deltas("lo");
    await until(() => session.messages.at(-1)?.content === "Hello", "the second delta");
    expect(session.status).toBe("streaming");

    source.endReply();
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
    expect(turns(session.messages)).toEqual([{ role: "user", content: "Hi" }]);
  });

  test("an error chunk mid-stream: status error with the chunk's code; the next send clears the error", async () => {
    const { session } = sessionWith([
      failsMidStream("Par", "UpstreamError", "Provider down."),
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
    const said = ["Hi", "Hello!", "How are you?", "Fine.", "Goodbye"];
    const conversation = said.map((content, index) => ({ role: index % 2 === 0 ? "user" : "assistant", content }));
    expect(chatBodies(server)).toEqual(
      [1, 3, 5].map((turnsSoFar) => ({ stream: true, system: "Answer briefly.", messages: conversation.slice(0, turnsSoFar) })),
    );
  });

  test("without a system option, no system field is sent", async () => {
    const { session, server } = sessionWith([streamed("Hello!")]);
    await session.send("Hi");
    expect(server.requestsTo("/api/chat")[0]?.body).not.toHaveProperty("system");
  });

  test("initialMessages: ids kept when given, made up when not, and sent as history", async () => {
    const earlier = [
      { id: "saved-1", role: "user" as const, content: "Remember me?" },
      { role: "assistant" as const, content: "Of course." },
    ];
    const { session, server } = sessionWith([streamed("Yes.")], { initialMessages: earlier });
    expect(session.messages[0]).toEqual({ id: "saved-1", role: "user", content: "Remember me?" });
    expect(session.messages[1]).toMatchObject({ role: "assistant", content: "Of course." });
    expect(typeof session.messages[1]?.id).toBe("string");
    expect(session.messages[1]?.id).not.toBe("saved-1");
    expect(session.status).toBe("ready");

    await session.send("Really?");
    expect(chatBodies(server)[0]?.messages).toEqual([...turns(earlier), { role: "user", content: "Really?" }]);
  });

  test("setMessages replaces the history (ids kept or made up) and notifies", async () => {
    const { session, server, snapshots } = sessionWith([streamed("Old one"), streamed("Restored")]);
    await session.send("Forget this");
    const before = snapshots.length;
    const restored = [
      { id: "r1", role: "user" as const, content: "Restored question" },
      { role: "assistant" as const, content: "Restored answer" },
    ];
    session.setMessages(restored);
    expect(snapshots.length).toBe(before + 1);
    expect(session.messages[0]).toEqual({ id: "r1", role: "user", content: "Restored question" });
    expect(typeof session.messages[1]?.id).toBe("string");

    await session.send("Next");
    expect(chatBodies(server)[1]?.messages).toEqual([...turns(restored), { role: "user", content: "Next" }]);
  });
});

describe("send", () => {
  test("is ignored while a reply is in progress", async () => {
    const { reply, source } = controlled();
    const { session, server } = sessionWith([reply, streamed("Second")]);
    const first = session.send("First");
    await session.send("Too soon");
    expect(turns(session.messages)).toEqual([{ role: "user", content: "First" }]);

    source.startReply("Streaming");
    await until(() => session.status === "streaming", "streaming");
    await session.send("Still too soon");
    expect(turns(session.messages)).toEqual([
      { role: "user", content: "First" },
      { role: "assistant", content: "Streaming" },
    ]);

    source.endReply();
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
    source.startReply("Once upon");
    await until(() => session.messages.at(-1)?.content === "Once upon", "the first delta");

    session.stop();
    await sending;
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(turns(session.messages)).toEqual([
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
    expect(turns(session.messages)).toEqual([{ role: "user", content: "Hi" }]);
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
      failsMidStream("Half an ans", "UpstreamError", "Provider down."),
      streamed("A whole answer."),
    ]);
    await session.send("Hi");
    await session.send("Explain");
    expect(session.status).toBe("error");
    expect(session.messages.at(-1)).toMatchObject({ role: "assistant", content: "Half an ans" });

    await session.retry();
    expect(session.status).toBe("ready");
    expect(session.error).toBeUndefined();
    expect(turns(session.messages)).toEqual([
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
    expect(turns(session.messages)).toEqual([
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
    expect(turns(session.messages)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Second take." },
    ]);
  });

  test("with no user message does nothing", async () => {
    const { session, server } = sessionWith([streamed("Never")], { initialMessages: [{ role: "assistant", content: "Welcome!" }] });
    await session.retry();
    expect(server.requests).toEqual([]);
    expect(turns(session.messages)).toEqual([{ role: "assistant", content: "Welcome!" }]);
  });
});

describe("clear", () => {
  test("forgets the conversation and any error", async () => {
    const { session } = sessionWith([streamed("Hello"), () => errorResponse(502, "UpstreamError")]);
    await session.send("Hi");
    await session.send("Again");
    expect(session.status).toBe("error");
    session.clear();
    expect(session.getSnapshot()).toEqual(EMPTY);
  });

  test("mid-stream cancels the request and no part of the old reply comes back", async () => {
    const { reply, source } = controlled();
    const onError = vi.fn();
    const { session, server } = sessionWith([reply], { onError });
    const sending = session.send("Hi");
    source.startReply("Hel");
    await until(() => session.status === "streaming", "streaming");
    session.clear();
    source.deltas("lo");
    await sending;
    await settle();
    expect(session.getSnapshot()).toEqual(EMPTY);
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(onError).not.toHaveBeenCalled();
  });

  test("clear() then send() at once: the cleared reply ending does not touch the new one", async () => {
    const old = controlled();
    const fresh = controlled();
    const { session } = sessionWith([old.reply, fresh.reply]);
    const first = session.send("Old topic");
    old.source.startReply("Old");
    await until(() => session.status === "streaming", "the old reply streaming");

    session.clear();
    const second = session.send("New topic");
    await first;
    await settle();
    // The new reply has not started arriving: the session is still waiting for it.
    expect(session.status).toBe("submitted");
    expect(turns(session.messages)).toEqual([{ role: "user", content: "New topic" }]);

    fresh.source.startReply();
    fresh.source.endReply("New answer");
    await second;
    expect(session.status).toBe("ready");
    expect(turns(session.messages)).toEqual([
      { role: "user", content: "New topic" },
      { role: "assistant", content: "New answer" },
    ]);
  });
});

describe("isBusy", () => {
  test("is true exactly while the status is submitted or streaming, in every snapshot", async () => {
    const { reply, source } = controlled();
    const { session, snapshots } = sessionWith([reply, () => errorResponse(502, "UpstreamError")]);
    const sending = session.send("Hi");
    expect(session.isBusy).toBe(true);
    source.startReply("Hel");
    await until(() => session.status === "streaming", "streaming");
    expect(session.isBusy).toBe(true);
    source.endReply("lo");
    await sending;
    expect(session.isBusy).toBe(false);
    await session.send("Again");
    expect(session.status).toBe("error");
    expect(session.isBusy).toBe(false);
    for (const snapshot of snapshots) {
      expect(snapshot.isBusy).toBe(snapshot.status === "submitted" || snapshot.status === "streaming");
    }
    expect(session.isBusy).toBe(session.getSnapshot().isBusy);
  });
});

describe("the rate-limit wait (retryIn)", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const rateLimited = (seconds: string, code = "RateLimitExceeded"): Reply => () =>
    errorResponse(code === "ServerBusy" ? 503 : 429, code, { headers: { "retry-after": seconds }, message: "Slow down." });

  /** A session that was just rate limited for `seconds`, with fake timers running the clock. */
  async function rateLimitedSession(seconds: string, code?: string) {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const chat = sessionWith([rateLimited(seconds, code), streamed("At last.")]);
    await chat.session.send("Hi");
    return chat;
  }

  test.each(["RateLimitExceeded", "TokenBudgetExceeded", "ServerBusy"])(
    "a %s with Retry-After 3 sets retryIn to 3, which counts down to 0 once a second",
    async (code) => {
      const { session } = await rateLimitedSession("3", code);
      expect(session.status).toBe("error");
      expect(session.retryIn).toBe(3);
      const seen = [session.retryIn];
      for (let second = 0; second < 4; second++) {
        vi.advanceTimersByTime(1000);
        seen.push(session.retryIn);
      }
      expect(seen).toEqual([3, 2, 1, 0, 0]);
      expect(session.getSnapshot().retryIn).toBe(0);
      expect(session.error).toMatchObject({ code, retryAfter: 3 });
    },
  );

  test("send() and retry() are ignored while it counts, and work once it is 0", async () => {
    const { session, server } = await rateLimitedSession("2");
    await session.retry();
    await session.send("Please");
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
    expect(turns(session.messages)).toEqual([{ role: "user", content: "Hi" }]);

    vi.advanceTimersByTime(2000);
    expect(session.retryIn).toBe(0);
    await session.retry();
    expect(server.requestsTo("/api/chat")).toHaveLength(2);
    expect(turns(session.messages)).toEqual([
      { role: "user", content: "Hi" },
      { role: "assistant", content: "At last." },
    ]);
  });

  test("clear() forgets the conversation and the error, not the wait", async () => {
    const { session } = await rateLimitedSession("5");
    session.clear();
    expect(session.getSnapshot()).toMatchObject({ messages: [], status: "ready", error: undefined, retryIn: 5 });
    vi.advanceTimersByTime(1000);
    expect(session.retryIn).toBe(4);
  });

  test("errors without a wait (no Retry-After, or not a rate limit) leave retryIn at 0", async () => {
    const { session } = sessionWith([
      () => errorResponse(429, "RateLimitExceeded"),
      () => errorResponse(503, "SpendCapReached", { headers: { "retry-after": "3600" } }),
    ]);
    await session.send("Hi");
    expect(session.retryIn).toBe(0);
    await session.retry();
    expect(session.error?.code).toBe("SpendCapReached");
    expect(session.retryIn).toBe(0);
  });

  test("nothing ticks without a subscriber; the next one gets the time that is left", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const session = createChatSession({ client: chatServer([rateLimited("10")]).client() });
    await session.send("Hi");
    expect(session.retryIn).toBe(10);
    expect(vi.getTimerCount()).toBe(0);

    vi.advanceTimersByTime(4000);
    const unsubscribe = session.subscribe(() => undefined);
    expect(session.retryIn).toBe(6);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(1000);
    expect(session.retryIn).toBe(5);

    unsubscribe();
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(5000);
    // send() looks at the clock itself: the wait is over even though nobody watched it end.
    expect(session.retryIn).toBe(5);
    await session.send("Now");
    expect(session.retryIn).toBe(0);
    expect(session.messages.at(-1)).toMatchObject({ role: "user", content: "Now" });
  });
});

/** A localStorage in memory (Node has none). */
function memoryStorage(): Storage {
  const items = new Map<string, string>();
  return {
    get length() {
      return items.size;
    },
    clear: () => items.clear(),
    getItem: (key) => items.get(key) ?? null,
    key: (index) => [...items.keys()][index] ?? null,
    removeItem: (key) => void items.delete(key),
    setItem: (key, value) => void items.set(key, String(value)),
  };
}

describe("persist", () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  const saved = (name: string) => JSON.parse(localStorage.getItem(`llmguard-chat:${name}`) ?? "null") as SessionMessage[] | null;

  /** A session persisted as `name` (in a fresh localStorage) whose reply to `prompt` has started with `firstDelta`. */
  async function streamingPersisted(name: string, prompt: string, firstDelta: string) {
    vi.stubGlobal("localStorage", memoryStorage());
    const { reply, source } = controlled();
    const { session } = sessionWith([reply], { persist: name });
    const sending = session.send(prompt);
    source.startReply(firstDelta);
    await until(() => session.status === "streaming", "streaming");
    return { session, source, sending };
  }

  test("a name keeps the conversation in localStorage once each reply is over; a new session with that name restores it", async () => {
    const { session, source, sending } = await streamingPersisted("support", "Saved question", "Saved");
    expect(saved("support")).toBeNull();
    source.endReply(" answer");
    await sending;
    expect(saved("support")).toEqual(session.messages);

    const restored = createChatSession({ persist: "support", initialMessages: [{ role: "user", content: "Not used" }] });
    expect(restored.messages).toEqual(session.messages);
    expect(createChatSession({ persist: "sales" }).messages).toEqual([]);
  });

  test("an empty name is the default conversation; clear() and a stopped reply are saved too", async () => {
    const { session, sending } = await streamingPersisted("", "Tell me a story", "Once upon");
    session.stop();
    await sending;
    expect(turns(saved("default") ?? [])).toEqual([
      { role: "user", content: "Tell me a story" },
      { role: "assistant", content: "Once upon" },
    ]);
    session.clear();
    expect(saved("default")).toEqual([]);
  });

  test.each([
    ["not a list", '{"messages": "gone"}', undefined],
    ["not JSON", "{oops", undefined],
    ["a list with other things in it", '[3, null, "text", {"from": "user"}, {"role": "user", "content": "Kept"}]', ["Kept"]],
  ])("a damaged saved conversation (%s) is left out", (_what, stored, kept) => {
    vi.stubGlobal("localStorage", memoryStorage());
    localStorage.setItem("llmguard-chat:support", stored);
    const session = createChatSession({ persist: "support", initialMessages: [{ role: "assistant", content: "Welcome!" }] });
    expect(session.messages.map((message) => message.content)).toEqual(kept ?? ["Welcome!"]);
  });

  test("without localStorage (or when it refuses) nothing is kept and nothing fails", async () => {
    vi.stubGlobal("localStorage", undefined);
    const { session } = sessionWith([streamed("Fine")], { persist: "support" });
    await session.send("Hi");
    expect(session.messages).toHaveLength(2);
    const full = memoryStorage();
    full.setItem = () => {
      throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
    };
    vi.stubGlobal("localStorage", full);
    const second = sessionWith([streamed("Fine")], { persist: "support" }).session;
    await second.send("Hi");
    expect(second.status).toBe("ready");
  });

  test("a storage of your own: load() at the start, save() after each change outside a reply", async () => {
    const saves: string[][] = [];
    const storage: ChatStorage = {
      load: () => [{ id: "a1", role: "assistant", content: "Welcome back!" }],
      save: (messages) => saves.push(messages.map((message) => message.content)),
    };
    const { session } = sessionWith([streamed("Sure.")], { persist: storage });
    expect(session.messages).toEqual([{ id: "a1", role: "assistant", content: "Welcome back!" }]);
    await session.send("Hi");
    session.setMessages([]);
    expect(saves).toEqual([
      ["Welcome back!", "Hi", "Sure."],
      [],
    ]);
  });
});

describe("presets and degraded replies", () => {
  test("the session's preset goes with every turn", async () => {
    const { server, session } = sessionWith([streamed("a"), streamed("b")], { preset: "support" });
    await session.send("one");
    await session.retry();
    expect(server.requestsTo("/api/chat").map((request) => (request.body as { preset?: string }).preset)).toEqual(["support", "support"]);
  });

  test("degraded follows the last reply: set, then null again", async () => {
    const degraded = { threshold: 0.8, model: "gpt-4.1-nano", max_tokens: 300 };
    const cheap: Reply = () =>
      sseResponse([{ type: "start", messageId: "m", messageMetadata: { degraded } }, ...replyItems(["short"]).slice(1)]);
    const { session } = sessionWith([cheap, streamed("full")]);
    expect(session.degraded).toBeNull();
    await session.send("one");
    expect(session.degraded).toEqual({ threshold: 0.8, model: "gpt-4.1-nano", maxTokens: 300 });
    expect(session.getSnapshot().degraded).toEqual(session.degraded);
    await session.send("two");
    expect(session.degraded).toBeNull();
  });
});

describe("usage", () => {
  function usageServer(replies: Reply[]) {
    return new FakeServer({
      "/api/usage": () => jsonResponse(USAGE_BODY),
      "/api/chat": (_request, index) => replies[index]?.() ?? errorResponse(500, "InternalError"),
    });
  }

  test("is fetched once, on the first subscription, then follows each reply's headers without a fetch", async () => {
    const server = usageServer([
      () => sseResponse(replyItems(["Hi"]), rateLimitHeaders(56, 90_000)),
      () => sseResponse(replyItems(["Again"]), rateLimitHeaders(55, 88_000, { "x-llmguard-degraded": "80" })),
    ]);
    const session = createChatSession({ client: server.client(), usage: true });
    expect(session.usage).toBeNull();
    expect(server.requestsTo("/api/usage")).toHaveLength(0); // nothing until someone looks
    const first = session.subscribe(() => undefined);
    const second = session.subscribe(() => undefined);
    await until(() => session.usage !== null, "the usage");
    expect(session.usage).toMatchObject({ requests: { remaining: 57 }, tokens: { remaining: 93_120 }, degraded: false, nearCap: false });

    await session.send("Hello");
    expect(session.usage).toMatchObject({ requests: { remaining: 56, limit: 60 }, tokens: { remaining: 90_000, window: 86_400 }, degraded: false });
    await session.send("Hello again");
    expect(session.usage).toMatchObject({ requests: { remaining: 55 }, tokens: { remaining: 88_000 }, degraded: true, nearCap: true });
    first();
    second();
    session.subscribe(() => undefined);
    await settle();
    expect(server.requestsTo("/api/usage")).toHaveLength(1);
  });

  test("refreshUsage() fetches again; a failure leaves it as it was", async () => {
    let answer = () => jsonResponse(USAGE_BODY);
    const server = new FakeServer({ "/api/usage": () => answer() });
    const session = createChatSession({ client: server.client(), usage: true });
    await session.refreshUsage();
    const known = session.usage;
    expect(known?.requests?.remaining).toBe(57);
    answer = () => errorResponse(503, "StorageUnavailable");
    await session.refreshUsage();
    expect(session.usage).toBe(known);
    answer = () => jsonResponse({ ...USAGE_BODY, requests: { ...USAGE_BODY.requests, remaining: 3 } });
    await session.refreshUsage();
    expect(session.usage?.requests?.remaining).toBe(3);
  });

  test("without the option: never fetched, never kept", async () => {
    const server = usageServer([() => sseResponse(replyItems(["Hi"]), rateLimitHeaders(56, 90_000))]);
    const session = createChatSession({ client: server.client() });
    session.subscribe(() => undefined);
    await session.send("Hello");
    await session.refreshUsage();
    expect(session.usage).toBeNull();
    expect(server.requestsTo("/api/usage")).toHaveLength(0);
  });
});

describe("usage, racing", () => {
  test("a fetch that answers after a reply's headers were read does not put older numbers back", async () => {
    const answer = deferred<Response>();
    const server = new FakeServer({
      "/api/usage": () => answer.promise,
      "/api/chat": () => sseResponse(replyItems(["Hi"]), rateLimitHeaders(56, 90_000)),
    });
    const session = createChatSession({ client: server.client(), usage: true });
    session.subscribe(() => undefined);
    await until(() => server.requestsTo("/api/usage").length === 1, "the usage request");
    await session.send("Hello");
    answer.resolve(jsonResponse(USAGE_BODY)); // 57 requests left: from before the reply
    await settle();
    expect(session.usage?.requests?.remaining).toBe(56);
  });
});
