// @vitest-environment happy-dom
import { fireEvent, within } from "@testing-library/dom";
import { act, cleanup, render, renderHook, waitFor } from "@testing-library/react";
import { createElement } from "react";
import { afterEach, describe, expect, test, vi } from "vitest";

import type { ChatMessage, ChatResult } from "../chat.ts";
import type { LLMGuardError } from "../errors.ts";
import {
  BASE_URL,
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
} from "../fake-server.test-util.ts";
import type { SessionMessage } from "../session.ts";
import { TAG } from "../widget/chat-element.ts";
import { ChatWidget, type ChatWidgetProps, useChat, type UseChatOptions, type UseChatResult } from "./index.ts";

/** A fake llmguard server answering /api/chat with `replies`, one per request, in order. */
function serverWith(replies: Reply[]): FakeServer {
  return new FakeServer({
    "/api/chat": (_request, index) => replies[index]?.() ?? errorResponse(500, "InternalError", { message: "No reply planned." }),
  });
}

const turns = (messages: readonly SessionMessage[]) => messages.map(({ role, content }) => ({ role, content }));
const chatBodies = (server: FakeServer) =>
  server.requestsTo("/api/chat").map((request) => request.body as { messages: ChatMessage[]; system?: string });

afterEach(() => {
  cleanup();
  document.body.replaceChildren();
  localStorage.clear();
  vi.unstubAllGlobals();
});

describe("useChat", () => {
  /** The hook on a fake server; `statuses` records the status of every render. */
  function renderChat(replies: Reply[], options: Omit<UseChatOptions, "client"> = {}) {
    const server = serverWith(replies);
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

  test("a turn goes ready → submitted → streaming → ready while the messages grow", async () => {
    const { reply, source } = controlled();
    const { result, changes } = renderChat([reply]);

    const sending = start(result, (chat) => chat.send("Hi"));
    expect(result.current.status).toBe("submitted");
    expect(turns(result.current.messages)).toEqual([{ role: "user", content: "Hi" }]);

    source.pushItems(...REPLY_START, deltaItem("Hel"));
    await waitFor(() => expect(result.current.status).toBe("streaming"));
    expect(turns(result.current.messages).at(-1)).toEqual({ role: "assistant", content: "Hel" });

    source.pushItems(deltaItem("lo"));
    await waitFor(() => expect(result.current.messages.at(-1)?.content).toBe("Hello"));
    expect(result.current.status).toBe("streaming");

    source.pushItems(...REPLY_END);
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
    source.pushItems(...REPLY_START, deltaItem("Done."), ...REPLY_END);
    await act(() => sending);
  });

  test("stop() cancels the request and keeps the partial reply", async () => {
    const { reply, source } = controlled();
    const { result, server } = renderChat([reply]);
    const sending = start(result, (chat) => chat.send("Tell me a story"));
    source.pushItems(...REPLY_START, deltaItem("Once upon"));
    await waitFor(() => expect(result.current.status).toBe("streaming"));

    act(() => result.current.stop());

    expect(result.current.status).toBe("ready");
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    source.pushItems(deltaItem(" a time"), ...REPLY_END);
    await act(() => sending);
    expect(turns(result.current.messages)).toEqual([
      { role: "user", content: "Tell me a story" },
      { role: "assistant", content: "Once upon" },
    ]);
  });

  test("an error: status error with the code and retryAfter; retry() asks again and succeeds", async () => {
    const { result, server } = renderChat([
      () => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "7" }, message: "Slow down." }),
      streamed("Now it works."),
    ]);
    await act(() => result.current.send("Hi"));

    expect(result.current.status).toBe("error");
    expect(result.current.error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 7, message: "Slow down." });
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
    expect(finished).toEqual({ text: "Hello", finishReason: "stop", usage: USAGE, messageId: "msg_1" });

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
    source.pushItems(...REPLY_START, deltaItem("Par"));
    await waitFor(() => expect(result.current.status).toBe("streaming"));

    hook.unmount();

    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
  });
});

describe("ChatWidget", () => {
  /** The widget's shadow root, as a user sees it. */
  function shadowOf(node: Element) {
    const root = node.shadowRoot;
    if (!root) throw new Error("the widget has not upgraded (no shadow root)");
    const screen = within(root as unknown as HTMLElement);
    return {
      screen,
      textbox: screen.getByLabelText("Message") as HTMLTextAreaElement,
      bubbles: () => [...root.querySelectorAll(".message")].map((bubble) => bubble.textContent),
    };
  }

  function renderWidget(props: ChatWidgetProps) {
    const view = render(createElement(ChatWidget, props));
    const elements = view.container.querySelectorAll(TAG);
    expect(elements).toHaveLength(1);
    return { ...view, element: elements[0] as HTMLElement };
  }

  const earlier: ChatMessage[] = [
    { role: "user", content: "Earlier question" },
    { role: "assistant", content: "Earlier **answer**" },
  ];

  // First in this describe on purpose: the element must not be defined yet.
  test("initialMessages reach the element before it upgrades: they show in its shadow root", () => {
    expect(customElements.get(TAG), "this test must run before the element is defined").toBeUndefined();
    const { element } = renderWidget({ initialMessages: earlier });
    expect(customElements.get(TAG)).toBeDefined();
    expect(shadowOf(element).bubbles()).toEqual(["Earlier question", "Earlier answer"]);
  });

  test("initialMessages show in a second widget too (the element is already defined)", () => {
    renderWidget({}).unmount();
    expect(customElements.get(TAG)).toBeDefined();
    const { element } = renderWidget({ initialMessages: earlier });
    expect(shadowOf(element).bubbles()).toEqual(["Earlier question", "Earlier answer"]);
  });

  test("renders one llmguard-chat with its props as attributes, class and style", () => {
    const { element } = renderWidget({
      title: "Support",
      placeholder: "Type your question",
      theme: "dark",
      persist: true,
      baseUrl: BASE_URL,
      system: "Answer briefly.",
      className: "site-chat wide",
      style: { maxWidth: "320px" },
    });
    expect(element.getAttribute("heading")).toBe("Support");
    expect(element.getAttribute("placeholder")).toBe("Type your question");
    expect(element.getAttribute("theme")).toBe("dark");
    expect(element.getAttribute("persist")).toBe("");
    expect(element.getAttribute("base-url")).toBe(BASE_URL);
    expect(element.getAttribute("system")).toBe("Answer briefly.");
    expect(element.getAttribute("class")).toBe("site-chat wide");
    expect(element.style.maxWidth).toBe("320px");
    expect(element.hasAttribute("title")).toBe(false);

    const { screen, textbox } = shadowOf(element);
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Support");
    expect(textbox.placeholder).toBe("Type your question");
  });

  test("persist as a string names the conversation; false or absent sets no attribute", () => {
    expect(renderWidget({ persist: "support" }).element.getAttribute("persist")).toBe("support");
    cleanup();
    expect(renderWidget({ persist: false }).element.hasAttribute("persist")).toBe(false);
    cleanup();
    expect(renderWidget({}).element.hasAttribute("persist")).toBe(false);
  });

  test("new props update the widget in place", () => {
    const view = renderWidget({ title: "Support", placeholder: "Ask" });
    view.rerender(createElement(ChatWidget, { title: "Help desk", placeholder: "Ask us", theme: "dark" }));
    expect(view.container.querySelector(TAG)).toBe(view.element);
    const { screen, textbox } = shadowOf(view.element);
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Help desk");
    expect(textbox.placeholder).toBe("Ask us");
    expect(view.element.getAttribute("theme")).toBe("dark");
  });

  test("talks to baseUrl; onFinish is called with the reply", async () => {
    const server = serverWith([streamed("Hello from the widget")]);
    vi.stubGlobal("fetch", server.fetch);
    const onFinish = vi.fn<(message: SessionMessage, result: ChatResult) => void>();
    const { element } = renderWidget({ baseUrl: BASE_URL, onFinish });
    const { textbox, bubbles } = shadowOf(element);

    fireEvent.input(textbox, { target: { value: "Hi" } });
    fireEvent.keyDown(textbox, { key: "Enter" });

    await waitFor(() => expect(onFinish).toHaveBeenCalledTimes(1));
    expect(onFinish.mock.calls[0]?.[0]).toMatchObject({ role: "assistant", content: "Hello from the widget" });
    expect(bubbles()).toEqual(["Hi", "Hello from the widget"]);
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
  });

  test("onError is called when a reply fails, with the latest callback given", async () => {
    const server = serverWith([() => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "5" } })]);
    vi.stubGlobal("fetch", server.fetch);
    const firstOnError = vi.fn();
    const onError = vi.fn<(error: LLMGuardError) => void>();
    const view = renderWidget({ baseUrl: BASE_URL, onError: firstOnError });
    view.rerender(createElement(ChatWidget, { baseUrl: BASE_URL, onError }));
    const { textbox } = shadowOf(view.element);

    fireEvent.input(textbox, { target: { value: "Hi" } });
    fireEvent.keyDown(textbox, { key: "Enter" });

    await waitFor(() => expect(onError).toHaveBeenCalledTimes(1));
    expect(onError.mock.calls[0]?.[0]).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 5 });
    expect(firstOnError).not.toHaveBeenCalled();
  });

  test("unmounting removes the element, stops its reply and its listeners", async () => {
    const { reply, source } = controlled();
    const server = serverWith([reply]);
    vi.stubGlobal("fetch", server.fetch);
    const onError = vi.fn();
    const onFinish = vi.fn();
    const view = renderWidget({ baseUrl: BASE_URL, onError, onFinish });
    const { textbox } = shadowOf(view.element);
    fireEvent.input(textbox, { target: { value: "Hi" } });
    fireEvent.keyDown(textbox, { key: "Enter" });
    source.pushItems(...REPLY_START, deltaItem("Par"));
    await waitFor(() => expect(shadowOf(view.element).bubbles()).toEqual(["Hi", "Par"]));

    view.unmount();

    expect(view.element.isConnected).toBe(false);
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    view.element.dispatchEvent(new CustomEvent("llmguard-error", { detail: new Error("late") }));
    view.element.dispatchEvent(new CustomEvent("llmguard-finish", { detail: { message: {}, result: {} } }));
    await settle();
    expect(onError).not.toHaveBeenCalled();
    expect(onFinish).not.toHaveBeenCalled();
  });
});
