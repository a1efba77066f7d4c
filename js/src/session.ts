import type { Client } from "./client.ts";
import { type ChatMessage, type ChatResult, streamChat } from "./chat.ts";
import { type LLMGuardError, toLLMGuardError } from "./errors.ts";

/** `submitted`: sent, nothing back yet; `streaming`: the reply is arriving. */
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
}

export interface ChatSessionOptions {
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** Start from an earlier conversation. */
  initialMessages?: readonly (ChatMessage | SessionMessage)[];
  /** Another client than the one `configure()` set up. */
  client?: Client;
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
  /** Add a user message and stream the reply. Ignored while a reply is in progress or when `text` is blank. */
  send(text: string): Promise<void>;
  /** Stop the reply in progress (status is `ready` at once), keeping what has arrived. */
  stop(): void;
  /** Ask again for the last reply (after an error, a stop, or to regenerate). */
  retry(): Promise<void>;
  /** Stop and forget the conversation. */
  clear(): void;
  /** Replace the history (for example to restore a saved conversation). */
  setMessages(messages: readonly (ChatMessage | SessionMessage)[]): void;
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
  let state: ChatSessionState = { messages: withIds(options.initialMessages ?? []), status: "ready", error: undefined };
  const listeners = new Set<() => void>();
  let controller: AbortController | undefined;

  const update = (changes: Partial<ChatSessionState>) => {
    state = { ...state, ...changes };
    for (const listener of [...listeners]) listener();
  };
  const busy = () => state.status === "submitted" || state.status === "streaming";

  /** Stream a reply to `messages` (which end with the user's turn). */
  async function reply(messages: readonly SessionMessage[]): Promise<void> {
    const current = new AbortController();
    controller = current;
    // A reply that was stopped or cleared must not touch the state any more.
    const isCurrent = () => controller === current;
    update({ messages, status: "submitted", error: undefined });
    const history = messages.filter((message) => message.content !== "");
    const stream = streamChat(history, {
      signal: current.signal,
      ...(options.system !== undefined && { system: options.system }),
      ...(options.client && { client: options.client }),
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
      update({ messages: complete, status: "ready" });
      options.onFinish?.(answer, result);
    } catch (thrown) {
      if (!isCurrent()) return; // stopped or cleared: the partial reply stays as it was
      controller = undefined;
      const error = toLLMGuardError(thrown, current.signal);
      update({ status: "error", error });
      options.onError?.(error);
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
    getSnapshot: () => state,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async send(text) {
      if (busy() || !text.trim()) return;
      await reply([...state.messages, { id: newId(), role: "user", content: text }]);
    },
    stop() {
      if (!controller) return;
      controller.abort();
      controller = undefined;
      update({ status: "ready" });
    },
    async retry() {
      if (busy()) return;
      let lastUser = state.messages.length - 1;
      while (lastUser >= 0 && state.messages[lastUser]?.role !== "user") lastUser -= 1;
      if (lastUser < 0) return;
      await reply(state.messages.slice(0, lastUser + 1));
    },
    clear() {
      controller?.abort();
      controller = undefined;
      update({ messages: [], status: "ready", error: undefined });
    },
    setMessages(messages) {
      update({ messages: withIds(messages) });
    },
  };
  return session;
}
