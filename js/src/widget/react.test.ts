// @vitest-environment happy-dom
import { fireEvent, within } from "@testing-library/dom";
import { cleanup, render, waitFor } from "@testing-library/react";
import { createElement } from "react";
import { afterEach, describe, expect, test, vi } from "vitest";

import type { ChatMessage, ChatResult } from "../chat.ts";
import type { LLMGuardError } from "../errors.ts";
import { BASE_URL, chatServer, controlled, errorResponse, FakeServer, jsonResponse, settle, streamed, USAGE_BODY } from "../fake-server.test-util.ts";
import type { SessionMessage } from "../session.ts";
import { TAG } from "./chat-element.ts";
import { ChatWidget, type ChatWidgetProps } from "./react.ts";

afterEach(() => {
  cleanup();
  document.body.replaceChildren();
  localStorage.clear();
  vi.unstubAllGlobals();
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

  test("showUsage sets the show-usage attribute (the line follows); false or absent sets none", async () => {
    const server = new FakeServer({ "/api/usage": () => jsonResponse(USAGE_BODY) });
    vi.stubGlobal("fetch", server.fetch);
    const { element } = renderWidget({ showUsage: true, baseUrl: BASE_URL });
    expect(element.getAttribute("show-usage")).toBe("");
    await waitFor(() => expect(element.shadowRoot?.querySelector(".usage")?.textContent).toBe("57 messages left today"));
    cleanup();
    expect(renderWidget({ showUsage: false }).element.hasAttribute("show-usage")).toBe(false);
    cleanup();
    expect(renderWidget({}).element.hasAttribute("show-usage")).toBe(false);
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
    const server = chatServer([streamed("Hello from the widget")]);
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
    const server = chatServer([() => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "5" } })]);
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
    const server = chatServer([reply]);
    vi.stubGlobal("fetch", server.fetch);
    const onError = vi.fn();
    const onFinish = vi.fn();
    const view = renderWidget({ baseUrl: BASE_URL, onError, onFinish });
    const { textbox } = shadowOf(view.element);
    fireEvent.input(textbox, { target: { value: "Hi" } });
    fireEvent.keyDown(textbox, { key: "Enter" });
    source.startReply("Par");
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
