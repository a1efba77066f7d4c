// @vitest-environment happy-dom
import { fireEvent, within } from "@testing-library/dom";
import { afterEach, describe, expect, test, vi } from "vitest";

import type { ChatMessage } from "../chat.ts";
import { isLLMGuardError } from "../errors.ts";
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
  settle,
  sseResponse,
  streamed,
  tokenResponse,
  until,
  USAGE,
  USAGE_BODY,
} from "../fake-server.test-util.ts";
import type { Usage, UsageWindow } from "../usage.ts";
import { type ChatErrorEvent, type ChatFinishEvent, defineChatWidget, type LLMGuardChatElement, TAG, usageLine } from "./chat-element.ts";

interface MountOptions {
  /** Answers to /api/chat, one per request, in order. */
  replies?: Reply[];
  attributes?: Record<string, string>;
  initialMessages?: readonly ChatMessage[];
}

/** A widget in the page, talking to a fake server, and the controls a user sees in it. */
function mount(options: MountOptions = {}) {
  defineChatWidget();
  const server = chatServer(options.replies);
  const element = document.createElement(TAG);
  element.client = server.client();
  if (options.initialMessages) element.initialMessages = options.initialMessages;
  for (const [name, value] of Object.entries(options.attributes ?? {})) element.setAttribute(name, value);
  document.body.append(element);
  return { element, server, ...controls(element) };
}

function controls(element: HTMLElement) {
  const root = element.shadowRoot;
  if (!root) throw new Error("the widget has no open shadow root");
  const screen = within(root as unknown as HTMLElement);
  const log = screen.getByRole("log");
  const textbox = screen.getByLabelText("Message") as HTMLTextAreaElement;
  return {
    root,
    screen,
    log,
    textbox,
    announcer: screen.getByRole("status"),
    /** The visible button named `name`, or null when it is hidden. */
    button: (name: string | RegExp) => screen.queryByRole("button", { name }) as HTMLButtonElement | null,
    /** The error panel, or null when it is hidden. */
    alert: () => screen.queryByRole("alert"),
    /** The whole error area: the reason (an alert, said once) and the silent countdown. */
    errorPanel: () => root.querySelector<HTMLElement>(".error:not([hidden])"),
    /** What the bubbles say, in order. */
    bubbles: () =>
      [...log.querySelectorAll<HTMLElement>(".message")].map((bubble) => ({
        role: bubble.classList.contains("user") ? "user" : "assistant",
        text: bubble.textContent,
      })),
    lastAssistant: () => [...log.querySelectorAll<HTMLElement>(".message.assistant")].at(-1),
  };
}

/** Type `text` into the textbox, as a user would. */
function type(textbox: HTMLTextAreaElement, text: string): void {
  textbox.focus();
  fireEvent.input(textbox, { target: { value: text } });
}

/** Type `text` and press Enter. */
function sendMessage(textbox: HTMLTextAreaElement, text: string): void {
  type(textbox, text);
  fireEvent.keyDown(textbox, { key: "Enter" });
}

afterEach(() => {
  document.body.replaceChildren();
  localStorage.clear();
  vi.useRealTimers();
  vi.restoreAllMocks();
});

// First in the file on purpose: the element must not be defined yet.
describe("properties set before defineChatWidget() (the upgrade path)", () => {
  test("initialMessages and client set on a not-yet-defined element are used once it upgrades", async () => {
    expect(customElements.get(TAG), "this test must run before the element is defined").toBeUndefined();
    const server = chatServer([streamed("Sure.")]);
    const element = document.createElement(TAG) as LLMGuardChatElement;
    element.initialMessages = [
      { role: "user", content: "Earlier question" },
      { role: "assistant", content: "Earlier **answer**" },
    ];
    element.client = server.client();
    document.body.append(element);

    defineChatWidget();

    const { bubbles, textbox, log } = controls(element);
    expect(bubbles()).toEqual([
      { role: "user", text: "Earlier question" },
      { role: "assistant", text: "Earlier answer" },
    ]);
    expect(log.querySelector(".assistant strong")?.textContent).toBe("answer");
    sendMessage(textbox, "And now?");
    await until(() => bubbles().length === 4, "the reply");
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
  });
});

describe("registration", () => {
  test("defineChatWidget() is idempotent", () => {
    defineChatWidget();
    const defined = customElements.get(TAG);
    expect(defined).toBeDefined();
    expect(() => defineChatWidget()).not.toThrow();
    expect(customElements.get(TAG)).toBe(defined);
  });

  test("the widget renders in an open shadow root: heading, empty log, labelled textbox, Send and New chat", () => {
    const { screen, element, textbox, button } = mount();
    expect(element.shadowRoot?.mode).toBe("open");
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Assistant");
    expect(screen.getByText("Ask anything to start.")).toBeTruthy();
    expect(textbox.tagName).toBe("TEXTAREA");
    expect(textbox.placeholder).toBe("Ask anything…");
    expect(button("Send")?.disabled).toBe(false);
    expect(button("New chat")?.disabled).toBe(true);
    expect(button("Stop")).toBeNull();
    expect(button("Retry")).toBeNull();
    expect(button(/Jump to latest/)).toBeNull();
  });

  test("the log has role=log, aria-live=off, and is labelled by the heading", () => {
    const { log, screen } = mount({ attributes: { heading: "Support" } });
    expect(log.getAttribute("aria-live")).toBe("off");
    expect(log.getAttribute("aria-busy")).toBe("false");
    expect(screen.getByRole("log", { name: "Support" })).toBe(log);
  });
});

describe("sending", () => {
  test("Enter sends: the user bubble appears, the textbox empties, the reply streams in and grows as markdown", async () => {
    const { reply, source } = controlled();
    const { server, textbox, bubbles, lastAssistant, log } = mount({ replies: [reply] });

    sendMessage(textbox, "Hi there");

    expect(textbox.value).toBe("");
    expect(bubbles()).toEqual([{ role: "user", text: "Hi there" }]);
    await until(() => server.requestsTo("/api/chat").length === 1, "the request");
    expect(chatBodies(server)[0]).toMatchObject({ messages: [{ role: "user", content: "Hi there" }], stream: true });

    source.startReply("Hel");
    await until(() => lastAssistant()?.textContent === "Hel", "the first delta");
    expect(log.getAttribute("aria-busy")).toBe("true");

    source.deltas("lo **world**");
    await until(() => lastAssistant()?.textContent === "Hello world", "the second delta");
    expect(lastAssistant()?.querySelector("strong")?.textContent).toBe("world");
    expect(log.getAttribute("aria-busy")).toBe("true");

    source.endReply();
    await until(() => log.getAttribute("aria-busy") === "false", "the end of the reply");
    expect(bubbles()).toEqual([
      { role: "user", text: "Hi there" },
      { role: "assistant", text: "Hello world" },
    ]);
  });

  test("the Send button sends too", async () => {
    const { server, textbox, button, bubbles } = mount({ replies: [streamed("Yes.")] });
    type(textbox, "Clicked");
    fireEvent.click(button("Send") as HTMLButtonElement);
    await until(() => bubbles().length === 2, "the reply");
    expect(chatBodies(server)[0]?.messages).toEqual([{ role: "user", content: "Clicked" }]);
  });

  test("Shift+Enter does not send and lets the browser add a new line", async () => {
    const { server, textbox, bubbles } = mount({ replies: [streamed("Yes.")] });
    type(textbox, "first line");
    const notPrevented = fireEvent.keyDown(textbox, { key: "Enter", shiftKey: true });
    await settle();
    expect(notPrevented).toBe(true);
    expect(textbox.value).toBe("first line");
    expect(bubbles()).toEqual([]);
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });

  test("Enter while an input method is composing does not send", async () => {
    const { server, textbox } = mount({ replies: [streamed("Yes.")] });
    type(textbox, "にほん");
    fireEvent.keyDown(textbox, { key: "Enter", isComposing: true });
    await settle();
    expect(textbox.value).toBe("にほん");
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });

  test("a blank message is not sent", async () => {
    const { server, textbox, bubbles } = mount({ replies: [streamed("Yes.")] });
    sendMessage(textbox, "   \n ");
    await settle();
    expect(bubbles()).toEqual([]);
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });

  test("Enter during a reply sends nothing and keeps the typed text", async () => {
    const { reply, source } = controlled();
    const { server, textbox, bubbles } = mount({ replies: [reply, streamed("Second.")] });
    sendMessage(textbox, "First");
    source.startReply("Work");
    await until(() => bubbles().length === 2, "the first delta");

    sendMessage(textbox, "Too soon");
    await settle();
    expect(textbox.value).toBe("Too soon");
    expect(server.requestsTo("/api/chat")).toHaveLength(1);
    source.endReply();
  });

  test("the user's text is shown as typed, never as markdown or HTML", async () => {
    const { textbox, log } = mount({ replies: [streamed("ok")] });
    const text = "**not bold** <img src=x onerror=alert(1)>";
    sendMessage(textbox, text);
    const bubble = log.querySelector(".message.user");
    expect(bubble?.textContent).toBe(text);
    expect(bubble?.querySelector("strong, img")).toBeNull();
  });

  test("the system attribute goes with each request; changing it keeps the conversation", async () => {
    const { server, element, textbox, bubbles } = mount({
      replies: [streamed("One."), streamed("Two.")],
      attributes: { system: "Answer briefly." },
    });
    sendMessage(textbox, "First");
    await until(() => bubbles().length === 2, "the first reply");
    element.setAttribute("system", "Answer in French.");
    expect(bubbles()).toHaveLength(2);

    sendMessage(controls(element).textbox, "Second");
    await until(() => bubbles().length === 4, "the second reply");
    const bodies = chatBodies(server);
    expect(bodies.map((body) => body.system)).toEqual(["Answer briefly.", "Answer in French."]);
    expect(bodies[1]?.messages.map((message) => message.content)).toEqual(["First", "One.", "Second"]);
  });
});

/** A widget whose reply to "Tell me a story" has started with `firstDelta`, and the stream that feeds it. */
async function streamingWidget(firstDelta = "Once upon") {
  const { reply, source } = controlled();
  const widget = mount({ replies: [reply] });
  sendMessage(widget.textbox, "Tell me a story");
  source.startReply(firstDelta);
  await until(() => widget.lastAssistant()?.textContent === firstDelta, "the first delta");
  return { ...widget, source };
}

describe("stopping", () => {
  test("while a reply streams, Stop is shown and Send hidden; after it, the reverse", async () => {
    const { button, source, log } = await streamingWidget();
    expect(button("Stop")).not.toBeNull();
    expect(button("Send")).toBeNull();
    source.endReply();
    await until(() => log.getAttribute("aria-busy") === "false", "the end of the reply");
    expect(button("Stop")).toBeNull();
    expect(button("Send")).not.toBeNull();
  });

  test("a click on Stop aborts the request, keeps the partial reply and gives the focus back to the textbox", async () => {
    const { button, server, source, bubbles, log, textbox, root } = await streamingWidget();
    const stop = button("Stop") as HTMLButtonElement;
    stop.focus();
    expect(root.activeElement).toBe(stop);
    fireEvent.click(stop);

    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(log.getAttribute("aria-busy")).toBe("false");
    expect(button("Send")).not.toBeNull();
    expect(root.activeElement).toBe(textbox);
    source.endReply(" a time");
    await settle();
    expect(bubbles()).toEqual([
      { role: "user", text: "Tell me a story" },
      { role: "assistant", text: "Once upon" },
    ]);
  });

  test("Escape in the textbox stops the reply", async () => {
    const { server, textbox, bubbles, log } = await streamingWidget();
    fireEvent.keyDown(textbox, { key: "Escape" });
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(log.getAttribute("aria-busy")).toBe("false");
    expect(bubbles().at(-1)).toEqual({ role: "assistant", text: "Once upon" });
  });

  test("removing the widget from the page stops its reply", async () => {
    const { server, element } = await streamingWidget();
    element.remove();
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
  });

  test("moving the widget elsewhere in the page keeps its conversation", async () => {
    const { element } = mount({ replies: [streamed("Kept.")] });
    sendMessage(controls(element).textbox, "Remember me");
    await until(() => controls(element).bubbles().length === 2, "the reply");

    const elsewhere = document.createElement("aside");
    document.body.append(elsewhere);
    elsewhere.append(element);

    expect(controls(element).bubbles()).toEqual([
      { role: "user", text: "Remember me" },
      { role: "assistant", text: "Kept." },
    ]);
  });
});

describe("errors", () => {
  test("a failed reply shows the server's message; Retry sends the same conversation again and hides the error", async () => {
    const { server, textbox, alert, button, bubbles } = mount({
      replies: [() => errorResponse(502, "UpstreamError", { message: "The model provider failed." }), streamed("Second try.")],
    });
    sendMessage(textbox, "Hello?");
    await until(() => alert() !== null, "the error");
    expect(alert()?.textContent).toContain("The model provider failed.");
    expect(button("Send")?.disabled).toBe(false);

    fireEvent.click(button("Retry") as HTMLButtonElement);
    await until(() => bubbles().length === 2, "the retried reply");
    expect(alert()).toBeNull();
    expect(chatBodies(server).map((body) => body.messages)).toEqual([
      [{ role: "user", content: "Hello?" }],
      [{ role: "user", content: "Hello?" }],
    ]);
    expect(bubbles()).toEqual([
      { role: "user", text: "Hello?" },
      { role: "assistant", text: "Second try." },
    ]);
  });

  test("a 429 with Retry-After 3 counts down, keeps Send disabled until it ends, then says so and enables Send", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const { server, textbox, alert, errorPanel, button } = mount({
      replies: [
        () =>
          errorResponse(429, "RateLimitExceeded", {
            headers: { "retry-after": "3" },
            message: "You have exceeded the allowed number of requests. Try again in 3 seconds.",
          }),
        streamed("Finally."),
      ],
    });
    sendMessage(textbox, "Quick question");
    await until(() => alert() !== null, "the error");

    const reason = "You have exceeded the allowed number of requests.";
    // The alert says the reason once; the countdown next to it ticks without being announced.
    expect(alert()?.textContent).toBe(reason);
    expect(errorPanel()?.textContent).toContain("Try again in 3 s.");
    expect(button("Send")?.disabled).toBe(true);
    expect(button("Retry")?.disabled).toBe(true);
    sendMessage(textbox, "Again");
    await settle();
    expect(server.requestsTo("/api/chat")).toHaveLength(1);

    vi.advanceTimersByTime(1000);
    expect(errorPanel()?.textContent).toContain("Try again in 2 s.");
    expect(button("Send")?.disabled).toBe(true);
    vi.advanceTimersByTime(1000);
    expect(errorPanel()?.textContent).toContain("Try again in 1 s.");
    expect(button("Send")?.disabled).toBe(true);
    expect(alert()?.textContent).toBe(reason);
    vi.advanceTimersByTime(1000);
    expect(errorPanel()?.textContent).toContain("You can send again now.");
    expect(errorPanel()?.textContent).not.toContain("Try again in");
    expect(button("Send")?.disabled).toBe(false);
    expect(button("Retry")?.disabled).toBe(false);

    fireEvent.keyDown(textbox, { key: "Enter" });
    await until(() => server.requestsTo("/api/chat").length === 2, "the second request");
  });

  test("New chat during the countdown clears the conversation, not the wait: the reason and countdown stay until it ends", async () => {
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] });
    const { element, textbox, errorPanel, button, bubbles } = mount({
      replies: [() => errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "2" }, message: "Slow down." })],
    });
    sendMessage(textbox, "Quick question");
    await until(() => errorPanel() !== null, "the error");

    fireEvent.click(button("New chat") as HTMLButtonElement);
    expect(bubbles()).toEqual([]);
    expect(errorPanel()?.textContent).toContain("Slow down.");
    expect(errorPanel()?.textContent).toContain("Try again in 2 s.");
    expect(button("Send")?.disabled).toBe(true);
    expect(element.session?.retryIn).toBe(2);

    vi.advanceTimersByTime(2000);
    expect(errorPanel()).toBeNull();
    expect(button("Send")?.disabled).toBe(false);
  });

  /** The `name` events a widget fires over one turn answered by `reply`. */
  async function eventsOfOneTurn<K extends "llmguard-error" | "llmguard-finish">(name: K, reply: Reply) {
    const { element, textbox } = mount({ replies: [reply] });
    const events: HTMLElementEventMap[K][] = [];
    element.addEventListener(name, (event) => events.push(event));
    sendMessage(textbox, "Hi");
    await until(() => events.length > 0, `the ${name} event`);
    await settle();
    return events;
  }

  test("llmguard-error fires once with the typed error", async () => {
    const errors: ChatErrorEvent[] = await eventsOfOneTurn("llmguard-error", () =>
      errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "3" } }),
    );
    expect(errors).toHaveLength(1);
    const error = errors[0]?.detail;
    expect(isLLMGuardError(error)).toBe(true);
    expect(error).toMatchObject({ code: "RateLimitExceeded", status: 429, retryAfter: 3 });
  });

  test("llmguard-finish fires once with the message and the result", async () => {
    const finished: ChatFinishEvent[] = await eventsOfOneTurn("llmguard-finish", streamed("Hel", "lo"));
    expect(finished).toHaveLength(1);
    expect(finished[0]?.detail.message).toMatchObject({ role: "assistant", content: "Hello" });
    expect(finished[0]?.detail.result).toEqual({ text: "Hello", finishReason: "stop", usage: USAGE, messageId: "msg_1", degraded: null, rateLimit: {} });
  });
});

describe("New chat", () => {
  test("clears the conversation and shows the empty state", async () => {
    const { textbox, button, bubbles, screen } = mount({ replies: [streamed("Hello!")] });
    sendMessage(textbox, "Hi");
    await until(() => bubbles().length === 2, "the reply");
    expect(button("New chat")?.disabled).toBe(false);

    fireEvent.click(button("New chat") as HTMLButtonElement);
    expect(bubbles()).toEqual([]);
    expect(screen.getByText("Ask anything to start.")).toBeTruthy();
    expect(button("New chat")?.disabled).toBe(true);
  });

  test("during a reply, it stops the request too", async () => {
    const { reply, source } = controlled();
    const { server, textbox, button, bubbles, log } = mount({ replies: [reply] });
    sendMessage(textbox, "Hi");
    source.startReply("Partial");
    await until(() => bubbles().length === 2, "the first delta");
    fireEvent.click(button("New chat") as HTMLButtonElement);
    expect(server.requestsTo("/api/chat")[0]?.signal?.aborted).toBe(true);
    expect(bubbles()).toEqual([]);
    expect(log.getAttribute("aria-busy")).toBe("false");
  });
});

describe("the screen-reader announcer", () => {
  /** The texts the announcer was given, in order (one per change). */
  function recordAnnouncements(announcer: HTMLElement): { texts: string[]; stop: () => void } {
    const texts: string[] = [];
    const observer = new MutationObserver((records) => {
      for (const record of records) {
        if (record.type === "characterData") texts.push(record.target.textContent ?? "");
        for (const node of record.addedNodes) texts.push(node.textContent ?? "");
      }
    });
    observer.observe(announcer, { childList: true, characterData: true, subtree: true });
    return { texts, stop: () => observer.disconnect() };
  }

  test("speaks once when a reply starts and once when it ends, not per delta", async () => {
    const { reply, source } = controlled();
    const { announcer, textbox, lastAssistant, log } = mount({ replies: [reply] });
    expect(announcer.getAttribute("aria-live")).toBe("polite");
    const announcements = recordAnnouncements(announcer);

    sendMessage(textbox, "Hi");
    source.startReply("One");
    await until(() => lastAssistant()?.textContent === "One", "the first delta");
    for (const word of [" two", " three", " four"]) {
      source.deltas(word);
      await until(() => lastAssistant()?.textContent?.endsWith(word) === true, `the delta ${word}`);
    }
    source.endReply();
    await until(() => log.getAttribute("aria-busy") === "false", "the end of the reply");
    await settle();
    announcements.stop();

    expect(announcements.texts).toEqual(["Assistant is replying…", "Assistant replied: One two three four"]);
  });

  test("a reply stopped before any text says it was stopped", async () => {
    const { reply } = controlled();
    const { announcer, textbox, button } = mount({ replies: [reply] });
    sendMessage(textbox, "Hi");
    fireEvent.click(button("Stop") as HTMLButtonElement);
    expect(announcer.textContent).toBe("The reply was stopped.");
  });
});

describe("attributes", () => {
  test("heading, placeholder and theme apply at once and when they change", () => {
    const { element, screen, textbox, root } = mount({
      attributes: { heading: "Support", placeholder: "Type your question", theme: "dark" },
    });
    const panel = root.querySelector(".panel") as HTMLElement;
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Support");
    expect(textbox.placeholder).toBe("Type your question");
    expect(getComputedStyle(panel).backgroundColor).toBe("#0f172a");

    element.setAttribute("heading", "Help desk");
    element.setAttribute("placeholder", "Ask us");
    element.setAttribute("theme", "light");
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Help desk");
    expect(textbox.placeholder).toBe("Ask us");
    expect(getComputedStyle(panel).backgroundColor).toBe("#ffffff");

    element.removeAttribute("heading");
    element.removeAttribute("placeholder");
    expect(screen.getByRole("heading", { level: 2 }).textContent).toBe("Assistant");
    expect(textbox.placeholder).toBe("Ask anything…");
  });

  test("without a theme attribute the widget is light", () => {
    const { element, root } = mount();
    expect(element.getAttribute("theme")).toBe("light");
    expect(getComputedStyle(root.querySelector(".panel") as HTMLElement).backgroundColor).toBe("#ffffff");
  });

  test("the theme's colours can be overridden with the documented CSS variables", () => {
    const { element, root } = mount();
    element.style.setProperty("--llmguard-background", "#123456");
    expect(getComputedStyle(root.querySelector(".panel") as HTMLElement).backgroundColor).toBe("#123456");
  });
});

describe("initialMessages and persist", () => {
  test("initialMessages set before the element is connected are shown, the assistant's as markdown", () => {
    const { bubbles, log } = mount({
      initialMessages: [
        { role: "user", content: "What is *this*?" },
        { role: "assistant", content: "It is `code`." },
      ],
    });
    expect(bubbles()).toEqual([
      { role: "user", text: "What is *this*?" },
      { role: "assistant", text: "It is code." },
    ]);
    expect(log.querySelector(".assistant code")?.textContent).toBe("code");
  });

  test("persist saves the conversation after a reply; a new widget with the same persist value restores it", async () => {
    const first = mount({ replies: [streamed("Saved answer")], attributes: { persist: "support" } });
    sendMessage(first.textbox, "Saved question");
    await until(() => first.log.getAttribute("aria-busy") === "false" && first.bubbles().length === 2, "the reply");
    const saved = JSON.parse(localStorage.getItem("llmguard-chat:support") ?? "null") as ChatMessage[] | null;
    expect(saved?.map(({ role, content }) => ({ role, content }))).toEqual([
      { role: "user", content: "Saved question" },
      { role: "assistant", content: "Saved answer" },
    ]);
    first.element.remove();

    const second = mount({ attributes: { persist: "support" } });
    expect(second.bubbles()).toEqual([
      { role: "user", text: "Saved question" },
      { role: "assistant", text: "Saved answer" },
    ]);
    const other = mount({ attributes: { persist: "sales" } });
    expect(other.bubbles()).toEqual([]);
  });

  test("an empty persist attribute uses the default conversation", async () => {
    const first = mount({ replies: [streamed("Default answer")], attributes: { persist: "" } });
    sendMessage(first.textbox, "Default question");
    await until(() => first.log.getAttribute("aria-busy") === "false" && first.bubbles().length === 2, "the reply");
    expect(localStorage.getItem("llmguard-chat:default")).toContain("Default answer");
    first.element.remove();
    expect(mount({ attributes: { persist: "" } }).bubbles()).toHaveLength(2);
  });

  test("without persist nothing is stored", async () => {
    const { textbox, bubbles } = mount({ replies: [streamed("Not kept")] });
    sendMessage(textbox, "Hi");
    await until(() => bubbles().length === 2, "the reply");
    await settle();
    expect(localStorage.length).toBe(0);
  });

  test.each([
    ["not a list", '{"messages": "gone"}'],
    ["a list of other things", '[3, null, "text"]'],
    ["messages of another shape", '[{"from": "user", "text": "old format"}]'],
  ])("a damaged saved conversation (%s) is ignored: the widget starts empty and works", async (_what, saved) => {
    localStorage.setItem("llmguard-chat:support", saved);
    const { textbox, bubbles, log } = mount({ replies: [streamed("Fresh answer")], attributes: { persist: "support" } });
    expect(bubbles()).toEqual([]);
    sendMessage(textbox, "Fresh question");
    await until(() => log.getAttribute("aria-busy") === "false" && bubbles().length === 2, "the reply");
    expect(bubbles()).toEqual([
      { role: "user", text: "Fresh question" },
      { role: "assistant", text: "Fresh answer" },
    ]);
  });

  test("New chat with persist forgets the saved conversation too", async () => {
    const first = mount({ replies: [streamed("Old answer")], attributes: { persist: "support" } });
    sendMessage(first.textbox, "Old question");
    await until(() => first.log.getAttribute("aria-busy") === "false" && first.bubbles().length === 2, "the reply");
    fireEvent.click(first.button("New chat") as HTMLButtonElement);
    first.element.remove();

    const reloaded = mount({ attributes: { persist: "support" } });
    expect(reloaded.bubbles()).toEqual([]);
  });
});

describe("auto-scroll", () => {
  /** Gives the log a scrollable size (happy-dom has no layout) that the test changes as content grows. */
  function scrollable(log: HTMLElement) {
    const size = { scrollHeight: 1000, clientHeight: 300 };
    let scrollTop = 700;
    Object.defineProperty(log, "scrollHeight", { configurable: true, get: () => size.scrollHeight });
    Object.defineProperty(log, "clientHeight", { configurable: true, get: () => size.clientHeight });
    Object.defineProperty(log, "scrollTop", {
      configurable: true,
      get: () => scrollTop,
      set: (value: number) => {
        scrollTop = Math.max(0, Math.min(value, size.scrollHeight - size.clientHeight));
      },
    });
    return {
      size,
      get scrollTop() {
        return scrollTop;
      },
      /** The reader scrolls to `top`. */
      scrollTo(top: number) {
        scrollTop = top;
        fireEvent.scroll(log);
      },
      atBottom: () => scrollTop === size.scrollHeight - size.clientHeight,
    };
  }

  test("a reader at the bottom stays at the bottom as the reply grows", async () => {
    const { reply, source } = controlled();
    const { log, textbox, lastAssistant, button } = mount({ replies: [reply] });
    const scroll = scrollable(log);

    sendMessage(textbox, "Hi");
    source.startReply("Line one");
    scroll.size.scrollHeight = 1400;
    await until(() => lastAssistant()?.textContent === "Line one", "the first delta");
    await until(() => scroll.atBottom(), "the scroll to the bottom");
    expect(scroll.scrollTop).toBe(1100);

    scroll.size.scrollHeight = 1800;
    source.deltas(" and two");
    await until(() => scroll.scrollTop === 1500, "the scroll after the second delta");
    expect(button(/Jump to latest/)).toBeNull();
    source.endReply();
  });

  /** A reply under way ("Start") in a scrollable log, the view at its bottom. */
  async function scrollingReply() {
    const widget = await streamingWidget("Start");
    const scroll = scrollable(widget.log);
    await settle();
    return { ...widget, scroll };
  }

  test("a reader who scrolled up is not moved; Jump to latest appears and a click on it scrolls down", async () => {
    const { source, lastAssistant, button, scroll } = await scrollingReply();

    scroll.scrollTo(100);
    expect(button(/Jump to latest/)).toBeNull();
    scroll.size.scrollHeight = 1600;
    source.deltas(" and more");
    await until(() => lastAssistant()?.textContent === "Start and more", "the second delta");
    await settle();
    expect(scroll.scrollTop).toBe(100);
    const jump = button(/Jump to latest/);
    expect(jump).not.toBeNull();

    fireEvent.click(jump as HTMLButtonElement);
    await until(() => scroll.atBottom(), "the jump");
    expect(scroll.scrollTop).toBe(1300);
    expect(button(/Jump to latest/)).toBeNull();

    scroll.size.scrollHeight = 2000;
    source.deltas(" still");
    await until(() => scroll.scrollTop === 1700, "following again after the jump");
    source.endReply();
  });

  test("sending a message scrolls to the bottom even when the reader had scrolled up", async () => {
    const { log, textbox, bubbles, button } = mount({ replies: [streamed("First answer"), streamed("Second answer")] });
    const scroll = scrollable(log);
    sendMessage(textbox, "First");
    await until(() => bubbles().length === 2, "the first reply");
    await settle();
    scroll.scrollTo(0);
    scroll.size.scrollHeight = 1500;

    sendMessage(textbox, "Second");
    await until(() => bubbles().length === 4, "the second reply");
    await until(() => scroll.atBottom(), "the scroll to the bottom");
    expect(scroll.scrollTop).toBe(1200);
    expect(button(/Jump to latest/)).toBeNull();
  });

  test("scrolling back down by hand hides Jump to latest and follows the reply again", async () => {
    const { source, button, scroll } = await scrollingReply();
    scroll.scrollTo(0);
    source.deltas(" more");
    await until(() => button(/Jump to latest/) !== null, "Jump to latest");

    scroll.scrollTo(690);
    expect(button(/Jump to latest/)).toBeNull();
    scroll.size.scrollHeight = 1500;
    source.deltas(" again");
    await until(() => scroll.scrollTop === 1200, "following again");
    source.endReply();
  });
});

describe("code blocks in replies", () => {
  test("Copy puts the code on the clipboard and says Copied", async () => {
    const writeText = vi.fn((_text: string) => Promise.resolve());
    Object.defineProperty(navigator, "clipboard", { configurable: true, value: { writeText } });
    const code = "npm install @llmguard/sdk\nnpx llmguard serve";
    const { textbox, screen } = mount({ replies: [streamed(`Run:\n\n\`\`\`sh\n${code}\n\`\`\`\n`)] });
    sendMessage(textbox, "How do I install it?");
    await until(() => screen.queryByRole("button", { name: "Copy sh code" }) !== null, "the code block");

    const copy = screen.getByRole("button", { name: "Copy sh code" });
    fireEvent.click(copy);
    expect(writeText).toHaveBeenCalledWith(code);
    await until(() => copy.textContent === "Copied", "the confirmation");
  });
});

describe("challenges, presets and degraded replies", () => {
  test("the preset attribute goes with every message", async () => {
    const { server, textbox } = mount({ replies: [streamed("Hi")], attributes: { preset: "support" } });
    sendMessage(textbox, "Hello");
    await until(() => chatBodies(server).length === 1, "the request");
    expect((chatBodies(server)[0] as { preset?: string }).preset).toBe("support");
  });

  test("'Checking your browser…' shows while a CAPTCHA is up, rendered in the panel's slot; gone once answered", async () => {
    const rendered: { element: HTMLElement; options: Record<string, unknown> }[] = [];
    (window as unknown as Record<string, unknown>)["turnstile"] = {
      render: (element: HTMLElement, options: Record<string, unknown>) => rendered.push({ element, options }),
    };
    const server = new FakeServer({
      "/api/token": (_request, index) =>
        index === 0
          ? errorResponse(401, "ChallengeRequired", {
              extra: { challenge: { kind: "turnstile", site_key: "key", action: "llmguard-token", script: "https://captcha.test/api.js" } },
            })
          : tokenResponse("t"),
      "/api/chat": () => sseResponse(replyItems(["Hi"])),
    });
    defineChatWidget();
    const element = document.createElement(TAG);
    element.client = server.client();
    document.body.append(element);
    const { root, textbox } = controls(element);
    const note = () => root.querySelector<HTMLElement>(".note");

    expect(note()?.hidden).toBe(true);
    sendMessage(textbox, "Hello");
    await until(() => rendered.length === 1, "the CAPTCHA");
    expect(note()?.hidden).toBe(false);
    expect(note()?.textContent).toBe("Checking your browser…");
    const box = rendered[0]?.element;
    expect(box?.parentElement).toBe(element);
    expect(box?.slot).toBe("captcha");
    expect(root.querySelector("slot[name=captcha]")).not.toBeNull();
    expect(rendered[0]?.options).toMatchObject({ sitekey: "key", action: "llmguard-token" });

    (rendered[0]?.options["callback"] as (token: string) => void)("captcha-token");
    await until(() => element.session?.status === "ready", "the reply");
    expect(server.requestsTo("/api/token")[1]?.body).toEqual({ solution: "captcha-token" });
    expect(note()?.hidden).toBe(true);
    expect(box?.isConnected).toBe(false);
    delete (window as unknown as Record<string, unknown>)["turnstile"];
  });

  test("a degraded reply shows the one-line note", async () => {
    const degraded = { threshold: 0.8, model: "gpt-4.1-nano", max_tokens: 300 };
    const { root, textbox, element } = mount({
      replies: [() => sseResponse([{ type: "start", messageId: "m", messageMetadata: { degraded } }, ...replyItems(["short"]).slice(1)])],
    });
    sendMessage(textbox, "Hello");
    await until(() => element.session?.status === "ready", "the reply");
    const note = root.querySelector<HTMLElement>(".note");
    expect(note?.hidden).toBe(false);
    expect(note?.textContent).toBe("Answers are shorter for now: this service is near its monthly limit.");
  });
});

describe("show-usage", () => {
  /** A widget with show-usage on a server whose /api/usage answers `usage` (404 when undefined). */
  function mountWithUsage(usage: Record<string, unknown> | undefined, replies: Reply[], attributes: Record<string, string> = {}) {
    defineChatWidget();
    const server = new FakeServer({
      ...(usage && { "/api/usage": () => jsonResponse(usage) }),
      "/api/chat": (_request, index) => replies[index]?.() ?? errorResponse(500, "InternalError"),
    });
    const element = document.createElement(TAG);
    element.client = server.client();
    element.setAttribute("show-usage", "");
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    document.body.append(element);
    const line = () => element.shadowRoot?.querySelector<HTMLElement>(".usage");
    return { element, server, line, ...controls(element) };
  }

  test("shows the requests left before any reply, then goes down by what replies cost, with no more fetches", async () => {
    // 10 requests left, 900 tokens: before a reply, the requests alone.
    const usage = { ...USAGE_BODY, requests: { limit: 60, remaining: 10, reset: 5, window: 60 }, tokens: { limit: 1000, remaining: 900, reset: 50_000, window: 86_400 } };
    const { line, textbox, element, server } = mountWithUsage(usage, [
      // A reply charged 100 tokens (the fake's usage says so): 800 left, 8 more such replies.
      () => sseResponse(replyItems(["Hi"], { usage: { prompt_tokens: 60, completion_tokens: 40, total_tokens: 100 } }), rateLimitHeaders(9, 800)),
      () => sseResponse(replyItems(["Hi"], { usage: { prompt_tokens: 100, completion_tokens: 100, total_tokens: 200 } }), rateLimitHeaders(8, 500)),
    ]);
    await until(() => line()?.hidden === false, "the usage line");
    expect(line()?.textContent).toBe("10 messages left today");
    // It describes the text box: read with it, not announced after every reply.
    expect(textbox.getAttribute("aria-describedby")).toBe(line()?.id);
    expect(line()?.getAttribute("aria-live")).toBeNull();
    expect(line()?.getAttribute("part")).toBe("usage");

    sendMessage(textbox, "Hello");
    await until(() => element.session?.status === "ready", "the reply");
    expect(line()?.textContent).toBe("8 messages left today"); // min(9 requests, ⌊800 / 100⌋)
    sendMessage(textbox, "Again");
    await until(() => element.session?.messages.length === 4 && element.session.status === "ready", "the second reply");
    expect(line()?.textContent).toBe("3 messages left today"); // ⌊500 / 150⌋
    expect(server.requestsTo("/api/usage")).toHaveLength(1);
  });

  test("is hidden while usage is unknown, and without the attribute", async () => {
    const { line, element, server } = mountWithUsage(undefined, []);
    await until(() => server.requestsTo("/api/usage").length === 1, "the usage request");
    await settle();
    expect(line()?.hidden).toBe(true);
    expect(element.session?.usage).toBeNull();

    const plain = mount();
    await settle();
    expect(plain.root.querySelector<HTMLElement>(".usage")?.hidden).toBe(true);
    expect(plain.server.requestsTo("/api/usage")).toHaveLength(0);
  });

  test("adding the attribute later starts it, keeping the conversation", async () => {
    const { element, root, server } = mount({ initialMessages: [{ role: "user", content: "Earlier" }] });
    expect(server.requestsTo("/api/usage")).toHaveLength(0);
    element.setAttribute("show-usage", "");
    await until(() => server.requestsTo("/api/usage").length === 1, "the usage request");
    expect(element.session?.messages.map((message) => message.content)).toEqual(["Earlier"]);
    expect(root.querySelector(".usage")).not.toBeNull();
  });
});

describe("usageLine", () => {
  const NOW = new Date(2026, 11, 2, 14, 0, 0).getTime();
  const window = (remaining: number, seconds: number, reset = 60): UsageWindow => ({ limit: 1000, remaining, reset, window: seconds, resetAt: NOW + reset * 1000 });
  const usage = (requests: UsageWindow | null, tokens: UsageWindow | null): Usage => ({ requests, tokens, degraded: false, nearCap: false });

  test("the smaller of the requests left and the tokens left over the average reply", () => {
    expect(usageLine(usage(window(40, 60), window(5000, 86_400)), 0, NOW)).toBe("40 messages left today");
    expect(usageLine(usage(window(40, 60), window(5000, 86_400)), 250, NOW)).toBe("20 messages left today");
    expect(usageLine(usage(window(12, 60), window(5000, 86_400)), 250, NOW)).toBe("12 messages left today");
    expect(usageLine(usage(window(40, 60), window(199, 86_400)), 100, NOW)).toBe("1 message left today");
    expect(usageLine(usage(window(40, 60), window(99, 86_400)), 100, NOW)).toBe("No messages left today");
  });

  test("no tokens left is no messages, even before any reply", () => {
    expect(usageLine(usage(window(40, 60), window(0, 86_400)), 0, NOW)).toBe("No messages left today");
  });

  test("the period is the token window's: today, this hour, else until the period ends", () => {
    expect(usageLine(usage(window(40, 60), window(5000, 3600)), 0, NOW)).toBe("40 messages left this hour");
    const until = new Date(NOW + 2 * 3600 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    expect(usageLine(usage(window(40, 60), window(5000, 6 * 3600, 2 * 3600)), 0, NOW)).toBe(`40 messages left until ${until}`);
  });

  test("without a token window, the request limit's", () => {
    expect(usageLine(usage(window(40, 60), null), 500, NOW)).toBe("40 messages left this minute");
    expect(usageLine(usage(window(40, 86_400), null), 500, NOW)).toBe("40 messages left today");
    const later = new Date(NOW + 30 * 60 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    expect(usageLine(usage(window(40, 1800, 0), null), 0, NOW)).toBe(`40 messages left until ${later}`);
  });

  test("nothing known, nothing said", () => {
    expect(usageLine(null, 0, NOW)).toBe("");
    expect(usageLine(usage(null, null), 0, NOW)).toBe("");
    // Tokens alone and no reply yet: no estimate to give.
    expect(usageLine(usage(null, window(5000, 86_400)), 0, NOW)).toBe("");
    expect(usageLine(usage(null, window(5000, 86_400)), 1000, NOW)).toBe("5 messages left today");
  });
});
