import { Client } from "../client.ts";
import type { LLMGuardError } from "../errors.ts";
import type { ChatMessage, ChatResult } from "../chat.ts";
import { type ChatSession, type ChatSessionState, createChatSession, type SessionMessage } from "../session.ts";
import type { Usage, UsageWindow } from "../usage.ts";
import { renderMarkdown } from "./markdown.ts";
import { STYLES } from "./styles.ts";

/** The tag of the widget. */
export const TAG = "llmguard-chat";

/** What the element adds to HTMLElement. */
export interface LLMGuardChatElement extends HTMLElement {
  /** The conversation to start from (set before the element is connected). */
  initialMessages: readonly ChatMessage[] | undefined;
  /** Another client than the default one (or use the `base-url` attribute). */
  client: Client | undefined;
  /** The session behind the widget (after it is connected). */
  readonly session: ChatSession | undefined;
}

/** Fired with `detail: LLMGuardError` when a reply fails. */
export type ChatErrorEvent = CustomEvent<LLMGuardError>;
/** Fired with `detail: { message, result }` when a reply is complete. */
export type ChatFinishEvent = CustomEvent<{ message: SessionMessage; result: ChatResult }>;

// `heading`, not `title`: a `title` attribute would show as a tooltip over the whole widget.
const ATTRIBUTES = ["heading", "placeholder", "theme", "system", "preset", "persist", "base-url", "show-usage"] as const;
const NEAR_BOTTOM_PX = 48;

// Not HTMLElement itself at module scope: importing this file on a server must not fail.
const Base = (globalThis.HTMLElement ?? class {}) as typeof HTMLElement;

/**
 * `<llmguard-chat>`: a complete chat panel on the core session.
 *
 * Attributes: `heading`, `placeholder`, `theme` (`light`, `dark`, `auto`),
 * `system`, `preset` (a prompt preset of the server), `persist` (keep the conversation in localStorage; its value names
 * the conversation), `base-url`, `show-usage` (a line such as "12 messages left today" under the text box).
 * Events: `llmguard-error`, `llmguard-finish`.
 */
export class ChatElement extends Base implements LLMGuardChatElement {
  static readonly observedAttributes = ATTRIBUTES;

  // Accessors over private fields, not public class fields: a field would overwrite on upgrade
  // what a framework set on the element before it was defined.
  #initialMessages: readonly ChatMessage[] | undefined;
  #client: Client | undefined;
  #session: ChatSession | undefined;
  #unsubscribe: (() => void) | undefined;
  #view: View | undefined;
  /** The conversation while the element is out of the page (moved, or re-rendered elsewhere). */
  #kept: readonly SessionMessage[] | undefined;

  get initialMessages(): readonly ChatMessage[] | undefined {
    return this.#initialMessages;
  }

  set initialMessages(messages: readonly ChatMessage[] | undefined) {
    this.#initialMessages = messages;
    // Set after the widget started (React effects run after insertion): still used while untouched.
    const session = this.#session;
    if (messages && session && session.messages.length === 0 && session.status === "ready") {
      session.setMessages(messages);
    }
  }

  get client(): Client | undefined {
    return this.#client;
  }

  set client(client: Client | undefined) {
    this.#client = client;
    if (this.#session) this.#restart();
  }

  get session(): ChatSession | undefined {
    return this.#session;
  }

  connectedCallback(): void {
    // Properties set before the element was upgraded are own properties: move them onto the class.
    for (const name of ["initialMessages", "client"] as const) {
      if (Object.prototype.hasOwnProperty.call(this, name)) {
        const value = (this as Record<string, unknown>)[name];
        delete (this as Record<string, unknown>)[name];
        (this as Record<string, unknown>)[name] = value;
      }
    }
    if (!this.#view) this.#view = new View(this, this.attachShadow({ mode: "open" }));
    this.#start(this.#kept);
    this.#kept = undefined;
  }

  disconnectedCallback(): void {
    this.#kept = this.#session?.messages;
    this.#stopSession();
    this.#view?.dispose();
  }

  attributeChangedCallback(name: string, previous: string | null, value: string | null): void {
    if (previous === value || !this.#view) return;
    if (name === "system" || name === "preset" || name === "base-url" || name === "persist" || name === "show-usage") {
      this.#restart();
    } else {
      this.#view.applyAttributes();
    }
  }

  #start(messages?: readonly SessionMessage[]): void {
    const view = this.#view;
    if (!view || this.#session) return;
    const baseUrl = this.getAttribute("base-url");
    const client = this.client ?? (baseUrl ? new Client({ baseUrl }) : undefined);
    const system = this.getAttribute("system");
    const preset = this.getAttribute("preset");
    const persist = this.getAttribute("persist");
    const usage = this.getAttribute("show-usage");
    const session = createChatSession({
      initialMessages: this.initialMessages ?? [],
      ...(persist !== null && persist !== "false" && { persist }),
      ...(client && { client }),
      ...(system !== null && { system }),
      ...(preset !== null && { preset }),
      ...(usage !== null && usage !== "false" && { usage: true }),
      // A CAPTCHA the server asks for is shown in the panel (its code is loaded then, not before).
      // (In the browser build, /sdk-captcha.js beside /widget.js: see the solver in challenge.ts.)
      attest: async (challenge, signal) =>
        (__LLMGUARD_BROWSER_BUILD__
          ? ((await import(/* @vite-ignore */ "./sdk-" + "captcha.js")) as typeof import("./captcha.ts"))
          : await import("./captcha.ts")
        ).renderCaptcha(this, challenge, signal),
      onError: (error) => this.dispatchEvent(new CustomEvent("llmguard-error", { detail: error })),
      onFinish: (message, result) => {
        view.countReply(result.usage?.total_tokens);
        this.dispatchEvent(new CustomEvent("llmguard-finish", { detail: { message, result } }));
      },
    });
    // The conversation the widget had (moved in the page, or restarted with new attributes) wins over a saved one.
    if (messages) session.setMessages(messages);
    this.#session = session;
    view.attach(session);
    this.#unsubscribe = session.subscribe(() => view.render(session.getSnapshot()));
    view.render(session.getSnapshot());
  }

  /** The session is configured with system, preset, base-url, persist and client: a new one keeps the conversation. */
  #restart(): void {
    if (!this.#session) return;
    const messages = this.#session.messages;
    this.#stopSession();
    this.#start(messages);
  }

  #stopSession(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    this.#session?.stop();
    this.#session = undefined;
  }
}

/** The DOM of one widget and how it follows the session's state. */
class View {
  readonly #host: HTMLElement;
  readonly #log: HTMLElement;
  readonly #title: HTMLElement;
  readonly #input: HTMLTextAreaElement;
  readonly #send: HTMLButtonElement;
  readonly #stop: HTMLButtonElement;
  readonly #clear: HTMLButtonElement;
  readonly #jump: HTMLButtonElement;
  readonly #error: HTMLElement;
  readonly #errorText: HTMLElement;
  readonly #countdownText: HTMLElement;
  readonly #retry: HTMLButtonElement;
  readonly #note: HTMLElement;
  readonly #usage: HTMLElement;
  readonly #announcer: HTMLElement;
  readonly #bubbles = new Map<string, { node: HTMLElement; content: string }>();
  #session: ChatSession | undefined;
  #last: ChatSessionState | undefined;
  #pinned = true;
  #frame: number | undefined;
  /** Set when the user stops a reply, so its end is announced as stopped, not as replied. */
  #stopping = false;
  /** The replies of this widget and their tokens, for the usage line's estimate of what a message costs. */
  #replies = 0;
  #replyTokens = 0;

  constructor(host: HTMLElement, root: ShadowRoot) {
    this.#host = host;
    const document = host.ownerDocument;
    const style = document.createElement("style");
    style.textContent = STYLES;
    const panel = make(document, "section", "panel", { part: "panel" });
    const header = make(document, "header", "", { part: "header" });
    this.#title = make(document, "h2", "", { part: "title", id: "title" });
    this.#clear = button(document, "New chat", "secondary");
    this.#clear.setAttribute("part", "clear");
    header.append(this.#title, this.#clear);
    this.#log = make(document, "div", "log", {
      part: "log",
      role: "log",
      // The log is not read aloud token by token: the announcer says when a reply starts and ends.
      "aria-live": "off",
      "aria-labelledby": "title",
      tabindex: "0",
    });
    this.#jump = button(document, "Jump to latest ↓", "jump");
    this.#jump.setAttribute("aria-label", "Jump to latest message");
    this.#jump.hidden = true;
    this.#announcer = make(document, "div", "visually-hidden", { role: "status", "aria-live": "polite" });
    this.#error = make(document, "div", "error", { part: "error" });
    this.#error.hidden = true;
    // The reason is an alert, said once; the countdown beside it ticks silently.
    this.#errorText = make(document, "span", "error-text", { role: "alert" });
    this.#countdownText = make(document, "span", "countdown");
    this.#retry = button(document, "Retry", "secondary");
    this.#error.append(this.#errorText, this.#countdownText, this.#retry);
    // While a challenge is solved, and when replies come cheaper; the CAPTCHA, if any, shows below it.
    this.#note = make(document, "p", "note", { part: "note", "aria-live": "polite" });
    // What is left (show-usage): plain text that describes the text box, not read out after every reply.
    this.#usage = make(document, "p", "usage", { part: "usage", id: "usage" });
    this.#usage.hidden = true;
    const captcha = make(document, "slot", "", { name: "captcha" });
    const form = make(document, "form", "");
    const label = make(document, "label", "visually-hidden", { for: "input" });
    label.textContent = "Message";
    this.#input = make(document, "textarea", "", { id: "input", rows: "1", part: "input", "aria-describedby": "usage" });
    this.#send = button(document, "Send", "");
    this.#send.type = "submit";
    this.#send.setAttribute("part", "send");
    this.#stop = button(document, "Stop", "secondary");
    this.#stop.setAttribute("part", "stop");
    this.#stop.hidden = true;
    form.append(label, this.#input, this.#send, this.#stop);
    panel.append(header, this.#log, this.#jump, this.#announcer, this.#error, this.#note, captcha, form, this.#usage);
    root.append(style, panel);

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
    this.#input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.#submit();
      }
    });
    // Escape stops a reply from anywhere in the panel, not only from the text box.
    panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.#stopReply();
    });
    this.#input.addEventListener("input", () => this.#grow());
    this.#stop.addEventListener("click", () => {
      this.#stopReply();
      this.#input.focus();
    });
    this.#retry.addEventListener("click", () => void this.#session?.retry());
    this.#clear.addEventListener("click", () => {
      this.#session?.clear();
      this.#input.focus();
    });
    this.#jump.addEventListener("click", () => this.#scrollToEnd(true));
    this.#log.addEventListener("scroll", () => {
      this.#pinned = this.#log.scrollHeight - this.#log.scrollTop - this.#log.clientHeight <= NEAR_BOTTOM_PX;
      if (this.#pinned) this.#jump.hidden = true;
    });
    this.#log.addEventListener("click", (event) => this.#copy(event));
    this.applyAttributes();
  }

  attach(session: ChatSession): void {
    this.#session = session;
    this.#last = undefined;
  }

  dispose(): void {
    if (this.#frame !== undefined) cancelAnimationFrame(this.#frame);
    this.#frame = undefined;
  }

  applyAttributes(): void {
    this.#title.textContent = this.#host.getAttribute("heading") ?? "Assistant";
    this.#input.placeholder = this.#host.getAttribute("placeholder") ?? "Ask anything…";
    if (!this.#host.hasAttribute("theme")) this.#host.setAttribute("theme", "light");
  }

  render(state: ChatSessionState): void {
    const previous = this.#last;
    this.#last = state;
    const busy = state.isBusy;
    this.#renderMessages(state, busy);
    // Hiding the focused button would drop focus to <body>: hand it to the text box first.
    const root = this.#input.getRootNode();
    const focused = root instanceof ShadowRoot ? root.activeElement : null;
    if ((focused === this.#send && busy) || (focused === this.#stop && !busy)) this.#input.focus();
    this.#send.hidden = busy;
    this.#stop.hidden = !busy;
    this.#log.setAttribute("aria-busy", String(busy));
    this.#clear.disabled = state.messages.length === 0 && !busy;

    if (previous && previous.status !== state.status) this.#announce(previous, state);
    if (state.error !== previous?.error || state.retryIn !== previous?.retryIn) this.#showError(state, previous);
    const waiting = state.retryIn > 0;
    this.#send.disabled = waiting;
    this.#retry.disabled = waiting;
    this.#send.title = waiting ? "Too many requests: wait for the countdown" : "";
    this.#note.textContent = state.isChecking
      ? "Checking your browser…"
      : state.degraded
        ? "Answers are shorter for now: this service is near its monthly limit."
        : "";
    this.#note.hidden = !this.#note.textContent;
    this.#renderUsage();
  }

  /** A reply finished, having cost `tokens` (when the server said). */
  countReply(tokens: number | undefined): void {
    if (tokens === undefined) return;
    this.#replies += 1;
    this.#replyTokens += tokens;
    this.#renderUsage();
  }

  #renderUsage(): void {
    this.#usage.textContent = usageLine(this.#last?.usage ?? null, this.#replies ? this.#replyTokens / this.#replies : 0);
    this.#usage.hidden = !this.#usage.textContent;
  }

  #renderMessages(state: ChatSessionState, busy: boolean): void {
    const seen = new Set<string>();
    const last = state.messages.at(-1);
    for (const message of state.messages) {
      seen.add(message.id);
      let bubble = this.#bubbles.get(message.id);
      if (!bubble) {
        const node = make(this.#host.ownerDocument, "div", `message ${message.role}`, {
          part: `message ${message.role}`,
          "data-id": message.id,
        });
        bubble = { node, content: "" };
        this.#bubbles.set(message.id, bubble);
        this.#log.appendChild(node);
      }
      if (bubble.content !== message.content) {
        bubble.content = message.content;
        if (message.role === "user") bubble.node.textContent = message.content;
        else bubble.node.replaceChildren(renderMarkdown(message.content, this.#host.ownerDocument));
      }
      bubble.node.classList.toggle("typing", busy && message === last && message.role === "assistant");
    }
    for (const [id, bubble] of this.#bubbles) {
      if (!seen.has(id)) {
        bubble.node.remove();
        this.#bubbles.delete(id);
      }
    }
    let empty = this.#log.querySelector(".empty");
    if (state.messages.length === 0 && !empty) {
      empty = make(this.#host.ownerDocument, "p", "empty");
      empty.textContent = "Ask anything to start.";
      this.#log.appendChild(empty);
    } else if (state.messages.length > 0) {
      empty?.remove();
    }
    this.#scrollToEnd(false);
  }

  #stopReply(): void {
    if (!this.#session?.isBusy) return;
    this.#stopping = true;
    this.#session?.stop();
  }

  #announce(previous: ChatSessionState, state: ChatSessionState): void {
    // One announcement as a reply starts and one as it ends: never one per token.
    if (state.status === "submitted") {
      this.#stopping = false;
      this.#announcer.textContent = "Assistant is replying…";
    } else if (state.status === "ready" && (previous.status === "streaming" || previous.status === "submitted")) {
      const reply = state.messages.at(-1);
      if (this.#stopping || reply?.role !== "assistant") {
        this.#announcer.textContent = "The reply was stopped.";
      } else {
        // The reply as read on screen (no markdown marks), kept short: the log holds all of it.
        const text = (this.#bubbles.get(reply.id)?.node.textContent ?? reply.content).replace(/\s+/g, " ").trim();
        this.#announcer.textContent = `Assistant replied: ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`;
      }
      this.#stopping = false;
    }
  }

  /** The error panel: the reason (said once) and the session's rate-limit countdown beside it. */
  #showError(state: ChatSessionState, previous: ChatSessionState | undefined): void {
    const { error, retryIn } = state;
    // A new chat does not skip a rate limit's wait: the reason stays shown while the countdown runs.
    this.#error.hidden = !error && retryIn === 0;
    if (error && error !== previous?.error) {
      // The server's message says when to retry as of when it was sent: the live countdown replaces that.
      this.#errorText.textContent = retryIn > 0 ? error.message.replace(/\s*Try again in [^.]*\.?$/, "") : error.message;
    }
    if (retryIn > 0) {
      this.#countdownText.textContent = `Try again in ${formatWait(retryIn)}.`;
    } else if (previous && previous.retryIn > 0) {
      this.#countdownText.textContent = "You can send again now.";
      this.#announcer.textContent = "You can send again now.";
    } else {
      this.#countdownText.textContent = "";
    }
  }

  #submit(): void {
    const session = this.#session;
    const text = this.#input.value;
    if (!session || !text.trim() || session.isBusy || session.retryIn > 0) return;
    this.#input.value = "";
    this.#grow();
    this.#pinned = true;
    void session.send(text);
  }

  #scrollToEnd(force: boolean): void {
    if (force) this.#pinned = true;
    if (!this.#pinned) {
      // A reader who scrolled up is not yanked back down: offer a way instead.
      this.#jump.hidden = false;
      return;
    }
    this.#frame ??= requestAnimationFrame(() => {
      this.#frame = undefined;
      this.#log.scrollTop = this.#log.scrollHeight;
      this.#jump.hidden = true;
    });
  }

  #grow(): void {
    this.#input.style.height = "auto";
    this.#input.style.height = `${Math.min(this.#input.scrollHeight, 144)}px`;
  }

  #copy(event: Event): void {
    const target = event.target;
    if (!(target instanceof HTMLButtonElement) || !target.classList.contains("copy")) return;
    const code = target.dataset["code"] ?? "";
    void navigator.clipboard?.writeText(code).then(
      () => {
        const label = target.getAttribute("aria-label") ?? "Copy code";
        target.textContent = "Copied";
        target.setAttribute("aria-label", "Copied");
        this.#announcer.textContent = "Code copied.";
        setTimeout(() => {
          target.textContent = "Copy";
          target.setAttribute("aria-label", label);
        }, 1500);
      },
      () => undefined,
    );
  }
}

/**
 * "12 messages left today": the smaller of the requests left and the tokens left over what a reply
 * cost on average (`average`, 0 before any reply: then the requests left alone). The period is the
 * token window's (the request limit's without one): "today", "this hour", else "until 14:30".
 */
export function usageLine(usage: Usage | null, average: number, now = Date.now()): string {
  const window = usage?.tokens ?? usage?.requests;
  if (!usage || !window) return "";
  const { requests, tokens } = usage;
  let left = requests ? requests.remaining : Infinity;
  if (tokens && (tokens.remaining <= 0 || average > 0)) left = Math.min(left, tokens.remaining <= 0 ? 0 : Math.floor(tokens.remaining / average));
  if (left === Infinity) return "";
  return `${left === 0 ? "No messages" : left === 1 ? "1 message" : `${left} messages`} left ${period(window, now)}`;
}

function period({ window, reset, resetAt }: UsageWindow, now: number): string {
  if (window === 86_400) return "today";
  if (window === 3_600) return "this hour";
  if (window === 60) return "this minute";
  const at = new Date(reset > 0 ? resetAt : now + window * 1000);
  return `until ${at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

function formatWait(seconds: number): string {
  if (seconds < 90) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  return minutes < 90 ? `${minutes} min ${seconds % 60} s` : `${Math.ceil(minutes / 60)} h`;
}

function make<K extends keyof HTMLElementTagNameMap>(
  document: Document,
  tag: K,
  className: string,
  attributes: Record<string, string> = {},
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function button(document: Document, text: string, className: string): HTMLButtonElement {
  const node = make(document, "button", className);
  node.type = "button";
  node.textContent = text;
  return node;
}

/**
 * Register `<llmguard-chat>` (once; later calls do nothing). Call it in the
 * browser before or after the element is in the page.
 */
export function defineChatWidget(): void {
  if (typeof customElements === "undefined" || customElements.get(TAG)) return;
  customElements.define(TAG, ChatElement);
}

declare global {
  interface HTMLElementTagNameMap {
    "llmguard-chat": LLMGuardChatElement;
  }
  interface HTMLElementEventMap {
    "llmguard-error": ChatErrorEvent;
    "llmguard-finish": ChatFinishEvent;
  }
}
