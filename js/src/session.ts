import type { Attest } from "./challenge.ts";
import { type Client, getClient } from "./client.ts";
import { type ChatMessage, type ChatResult, type Degraded, streamChat } from "./chat.ts";
import { isRateLimitError, type LLMGuardError, toLLMGuardError } from "./errors.ts";
import { getUsage, mergeUsage, type Usage } from "./usage.ts";

/** `submitted`: sent, nothing back yet (see `isChecking`); `streaming`: the reply is arriving. */
export type ChatStatus = "ready" | "submitted" | "streaming" | "error";

/** A message of a session: a {@link ChatMessage} with a stable id. */
export interface SessionMessage extends ChatMessage {
  id: string;
}

/** Everything a view shows. A new object on every change (so it can be compared by identity). */
export interface ChatSessionState {
  readonly messages: readonly SessionMessage[];
  readonly status: ChatStatus;
  readonly error: LLMGuardError | undefined;
  /** Whether a reply is in progress (`status` is `submitted` or `streaming`): `send` is ignored then. */
  readonly isBusy: boolean;
  /**
   * Seconds to wait before sending again, after a rate limit that said how long
   * (`Retry-After`); counts down every second while someone is subscribed, and
   * `send` and `retry` are ignored until it is 0. `clear()` does not skip the wait.
   *
   * @defaultValue 0
   */
  readonly retryIn: number;
  /**
   * Whether the server's challenge is being solved before the reply can start (a proof-of-work in a
   * worker, or a CAPTCHA): `status` is `submitted` meanwhile. Show "Checking your browser…".
   *
   * @defaultValue false
   */
  readonly isChecking: boolean;
  /**
   * Set when the last reply came from a cheaper model or under a lower cap, because the server is
   * near its monthly cap; `null` otherwise.
   *
   * @defaultValue null
   */
  readonly degraded: Degraded | null;
  /**
   * What the client has left of the server's limits, with the `usage` option: fetched once when
   * the session is first subscribed to, then brought up to date by each reply (no more fetches).
   * `null` until known, and always without the option.
   *
   * @defaultValue null
   */
  readonly usage: Usage | null;
}

/**
 * Where a session keeps its conversation between page loads: see {@link ChatSessionOptions.persist}.
 *
 * @example A conversation kept for the tab only:
 * ```ts
 * const persist: ChatStorage = {
 *   load: () => JSON.parse(sessionStorage.getItem("chat") ?? "null") ?? undefined,
 *   save: (messages) => sessionStorage.setItem("chat", JSON.stringify(messages)),
 * }
 * ```
 */
export interface ChatStorage {
  /** The saved conversation, or `undefined` when there is none. Items that are not messages are left out. */
  load(): unknown;
  /** Keep `messages`: called after each change while no reply is in progress. Must not throw. */
  save(messages: readonly SessionMessage[]): void;
}

export interface ChatSessionOptions {
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** The name of a prompt preset defined on the server (`PRESETS`). */
  preset?: string;
  /** Start from an earlier conversation (when `persist` has none saved). */
  initialMessages?: readonly (ChatMessage | SessionMessage)[];
  /**
   * Keep the conversation across page loads: a name (it is saved in `localStorage` under
   * `llmguard-chat:<name>`; an empty name is `default`), or a {@link ChatStorage} of your own.
   * A saved conversation is restored in place of `initialMessages`.
   */
  persist?: string | ChatStorage;
  /** Another client than the one `configure()` set up. */
  client?: Client;
  /** Shows a CAPTCHA if the server asks for one and the client has no `attest` of its own. */
  attest?: Attest;
  /** Keep `usage` (what is left of the limits): one `GET /api/usage` on the first subscription, then each reply's headers. */
  usage?: boolean;
  /** Called when a reply fails (not when it is stopped). */
  onError?: (error: LLMGuardError) => void;
  /** Called when a reply is complete. */
  onFinish?: (message: SessionMessage, result: ChatResult) => void;
}

/** A conversation that keeps its own history: the state machine behind `useChat` and the widget. */
export interface ChatSession extends ChatSessionState {
  /** The current state (for `useSyncExternalStore`). */
  getSnapshot(): ChatSessionState;
  /** Call `listener` after every change; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
  /** Add a user message and stream the reply. Ignored while busy, during a `retryIn` wait, or when `text` is blank. */
  send(text: string): Promise<void>;
  /** Stop the reply in progress (status is `ready` at once), keeping what has arrived. */
  stop(): void;
  /** Ask again for the last reply (after an error, a stop, or to regenerate). Ignored while busy or during a `retryIn` wait. */
  retry(): Promise<void>;
  /** Stop and forget the conversation and its error (a `retryIn` wait goes on). */
  clear(): void;
  /** Replace the history (for example to restore a saved conversation). */
  setMessages(messages: readonly (ChatMessage | SessionMessage)[]): void;
  /** Fetch `usage` again now (`GET /api/usage`); a failure leaves it as it was. Does nothing without the `usage` option. */
  refreshUsage(): Promise<void>;
}

let counter = 0;
function newId(): string {
  counter += 1;
  return `msg-${Date.now().toString(36)}-${counter.toString(36)}`;
}

function withIds(messages: readonly (ChatMessage | SessionMessage)[]): SessionMessage[] {
  return messages.map((message) => ({
    id: "id" in message && typeof message.id === "string" ? message.id : newId(),
    role: message.role,
    content: message.content,
  }));
}

/** The messages in what a storage gave back; anything else there (an older format, another script's data) is left out. */
function savedMessages(saved: unknown): (ChatMessage | SessionMessage)[] | undefined {
  if (!Array.isArray(saved)) return undefined;
  return saved.filter(
    (item): item is SessionMessage =>
      typeof item === "object" &&
      item !== null &&
      (item.role === "user" || item.role === "assistant") &&
      typeof item.content === "string" &&
      (item.id === undefined || typeof item.id === "string"),
  );
}

/** A conversation named `name` in `localStorage`; failures (private mode, a full quota, no `localStorage`) keep nothing. */
function localStorageChat(name: string): ChatStorage {
  const key = `llmguard-chat:${name || "default"}`;
  return {
    load() {
      try {
        return JSON.parse(localStorage.getItem(key) ?? "null");
      } catch {
        return undefined;
      }
    },
    save(messages) {
      try {
        localStorage.setItem(key, JSON.stringify(messages));
      } catch {
        // Full or forbidden: the conversation just is not kept.
      }
    },
  };
}

/**
 * A chat for vanilla JS: history, status, errors, stop and retry.
 *
 * @example
 * ```ts
 * const session = createChatSession({ system: "Answer briefly." })
 * session.subscribe(() => render(session.getSnapshot()))
 * await session.send("Hello")
 * ```
 */
export function createChatSession(options: ChatSessionOptions = {}): ChatSession {
  const storage = typeof options.persist === "string" ? localStorageChat(options.persist) : options.persist;
  const initialMessages = savedMessages(storage?.load()) ?? options.initialMessages ?? [];
  let state: ChatSessionState = {
    messages: withIds(initialMessages),
    status: "ready",
    error: undefined,
    isBusy: false,
    retryIn: 0,
    isChecking: false,
    degraded: null,
    usage: null,
  };
  const listeners = new Set<() => void>();
  let usageFetched = false;
  /** Replies whose headers have updated `usage`: a fetch that started before one of them answers older news. */
  let usageReplies = 0;
  let controller: AbortController | undefined;
  /** When a rate limit's wait ends (ms since the epoch), and the timer that counts it down. */
  let retryAt = 0;
  let ticker: ReturnType<typeof setInterval> | undefined;

  const update = (changes: Partial<Omit<ChatSessionState, "isBusy">>) => {
    const previous = state;
    const status = changes.status ?? state.status;
    state = { ...state, ...changes, isBusy: status === "submitted" || status === "streaming" };
    // A conversation is saved once a reply is over (done, failed or stopped), never half-streamed.
    if (storage && !state.isBusy && (state.messages !== previous.messages || previous.isBusy)) storage.save(state.messages);
    for (const listener of [...listeners]) listener();
  };

  const stopTicking = () => {
    clearInterval(ticker);
    ticker = undefined;
  };
  /** Bring `retryIn` up to date (the timer stops with the wait). */
  const tick = () => {
    const left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    if (left === 0) stopTicking();
    if (left !== state.retryIn) update({ retryIn: left });
  };
  /** Count `retryIn` down while someone listens (nobody else would see it tick). */
  const startTicking = () => {
    if (state.retryIn > 0 && ticker === undefined && listeners.size > 0) ticker = setInterval(tick, 1000);
  };
  const waiting = () => {
    if (state.retryIn > 0) tick();
    return state.retryIn > 0;
  };

  /** Stream a reply to `messages` (which end with the user's turn). */
  async function reply(messages: readonly SessionMessage[]): Promise<void> {
    const current = new AbortController();
    controller = current;
    // A reply that was stopped or cleared must not touch the state any more.
    const isCurrent = () => controller === current;
    update({ messages, status: "submitted", error: undefined });
    const history = messages.filter((message) => message.content !== "");
    const client = options.client ?? getClient();
    const unwatch = client.tokens.watch((checking) => isCurrent() && update({ isChecking: checking }));
    const stream = streamChat(history, {
      signal: current.signal,
      client,
      ...(options.system !== undefined && { system: options.system }),
      ...(options.preset !== undefined && { preset: options.preset }),
      ...(options.attest && { attest: options.attest }),
    });
    let answer: SessionMessage | undefined;
    try {
      for await (const delta of stream) {
        if (!isCurrent()) return;
        if (answer === undefined) {
          answer = { id: newId(), role: "assistant", content: delta };
          update({ status: "streaming", messages: [...state.messages, answer] });
        } else {
          answer = { ...answer, content: answer.content + delta };
          update({ messages: [...state.messages.slice(0, -1), answer] });
        }
      }
      const result = await stream.result;
      if (!isCurrent()) return;
      answer ??= { id: newId(), role: "assistant", content: result.text };
      const complete = state.messages.at(-1)?.id === answer.id ? state.messages : [...state.messages, answer];
      controller = undefined;
      usageReplies += 1;
      update({
        messages: complete,
        status: "ready",
        degraded: result.degraded,
        ...(options.usage && { usage: mergeUsage(state.usage, result.rateLimit) }),
      });
      options.onFinish?.(answer, result);
    } catch (thrown) {
      if (!isCurrent()) return; // stopped or cleared: the partial reply stays as it was
      controller = undefined;
      const error = toLLMGuardError(thrown, current.signal);
      const wait = isRateLimitError(error) ? Math.ceil(error.retryAfter ?? 0) : 0;
      if (wait > 0) retryAt = Date.now() + wait * 1000;
      update({ status: "error", error, ...(wait > 0 && { retryIn: wait }) });
      startTicking();
      options.onError?.(error);
    } finally {
      unwatch();
      // Stopped or failed while checking (a new reply in progress sees to its own).
      if (state.isChecking && !state.isBusy) update({ isChecking: false });
    }
  }

  const session: ChatSession = {
    get messages() {
      return state.messages;
    },
    get status() {
      return state.status;
    },
    get error() {
      return state.error;
    },
    get isBusy() {
      return state.isBusy;
    },
    get retryIn() {
      return state.retryIn;
    },
    get isChecking() {
      return state.isChecking;
    },
    get degraded() {
      return state.degraded;
    },
    get usage() {
      return state.usage;
    },
    getSnapshot: () => state,
    subscribe(listener) {
      listeners.add(listener);
      if (!usageFetched) {
        usageFetched = true;
        void session.refreshUsage();
      }
      // The wait went on while nobody listened: catch up, then count down.
      if (state.retryIn > 0) tick();
      startTicking();
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0) stopTicking();
      };
    },
    async send(text) {
      if (state.isBusy || waiting() || !text.trim()) return;
      await reply([...state.messages, { id: newId(), role: "user", content: text }]);
    },
    stop() {
      if (!controller) return;
      controller.abort();
      controller = undefined;
      update({ status: "ready", isChecking: false });
    },
    async retry() {
      if (state.isBusy || waiting()) return;
      let lastUser = state.messages.length - 1;
      while (lastUser >= 0 && state.messages[lastUser]?.role !== "user") lastUser -= 1;
      if (lastUser < 0) return;
      await reply(state.messages.slice(0, lastUser + 1));
    },
    clear() {
      controller?.abort();
      controller = undefined;
      update({ messages: [], status: "ready", error: undefined, isChecking: false });
    },
    setMessages(messages) {
      update({ messages: withIds(messages) });
    },
    async refreshUsage() {
      if (!options.usage) return;
      const replies = usageReplies;
      try {
        const usage = await getUsage(options.client ? { client: options.client } : {});
        if (replies === usageReplies) update({ usage });
      } catch {
        // Unknown for now: a view hides what it cannot say; the next reply's headers may tell.
      }
    },
  };
  return session;
}
