import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";

import type { Attest } from "../challenge.ts";
import type { ChatMessage, ChatResult, Degraded } from "../chat.ts";
import type { Client } from "../client.ts";
import type { LLMGuardError } from "../errors.ts";
import { type ChatSession, type ChatStatus, type ChatStorage, createChatSession, type SessionMessage } from "../session.ts";
import type { Usage } from "../usage.ts";

/**
 * `<ChatWidget />`, kept here so that `import { ChatWidget } from "@llmguard/sdk/react"` goes on
 * working. Its home is `@llmguard/sdk/widget/react`: a re-export costs a `useChat`-only app nothing
 * once bundled (the package has no side effects, so the widget module and `marked` are dropped
 * when `ChatWidget` is not used; `npm run check:size` bundles such an app to make sure).
 */
export { ChatWidget, type ChatWidgetProps } from "../widget/react.ts";

/** Options of {@link useChat}. `system`, `preset`, `initialMessages`, `persist`, `client`, `attest` and `usage` are read once, on mount. */
export interface UseChatOptions {
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** The name of a prompt preset defined on the server (`PRESETS`). */
  preset?: string;
  /** Start from an earlier conversation (when `persist` has none saved). */
  initialMessages?: readonly ChatMessage[];
  /**
   * Keep the conversation across page loads: a name (saved in `localStorage` under
   * `llmguard-chat:<name>`, as the widget's `persist` does), or a {@link ChatStorage} of your own.
   *
   * @example
   * ```ts
   * const { messages } = useChat({ persist: "support" })
   * ```
   */
  persist?: string | ChatStorage;
  /** Another client than the one `configure()` set up. */
  client?: Client;
  /** Shows a CAPTCHA if the server asks for one and the client has no `attest` of its own. */
  attest?: Attest;
  /**
   * Keep `usage`, what the client has left of the server's limits: fetched once on mount
   * (`GET /api/usage`), then brought up to date by each reply's headers, without another fetch.
   *
   * @example
   * ```tsx
   * const { usage } = useChat({ usage: true })
   * // usage?.tokens && <p>{usage.tokens.remaining} tokens left today</p>
   * ```
   */
  usage?: boolean;
  onError?: (error: LLMGuardError) => void;
  onFinish?: (message: SessionMessage, result: ChatResult) => void;
}

export interface UseChatResult {
  messages: readonly SessionMessage[];
  status: ChatStatus;
  error: LLMGuardError | undefined;
  /**
   * Whether a reply is in progress (`status` is `submitted` or `streaming`): show Stop, not Send.
   *
   * @example
   * ```tsx
   * {isBusy ? <button onClick={stop}>Stop</button> : <button>Send</button>}
   * ```
   */
  isBusy: boolean;
  /**
   * Seconds left before sending again after a rate limit (`Retry-After`), counting down every
   * second; `send` and `retry` do nothing until it is 0.
   *
   * @defaultValue 0
   * @example
   * ```tsx
   * {retryIn > 0 && <p>Too many requests: try again in {retryIn} s.</p>}
   * ```
   */
  retryIn: number;
  /**
   * Whether the server's challenge is being solved before the reply starts (`status` is
   * `submitted` meanwhile): a proof-of-work in a worker, or a CAPTCHA.
   *
   * @example
   * ```tsx
   * {isChecking && <p>Checking your browser…</p>}
   * ```
   */
  isChecking: boolean;
  /** Set when the last reply came from a cheaper model or under a lower cap (the server is near its monthly cap). */
  degraded: Degraded | null;
  /** What is left of the server's limits, with the `usage` option; `null` until known (and without it). */
  usage: Usage | null;
  /** The text box's value, kept by the hook. */
  input: string;
  setInput: (input: string) => void;
  /** Send `text`, or the input (which is then cleared). */
  send: (text?: string) => Promise<void>;
  stop: () => void;
  retry: () => Promise<void>;
  clear: () => void;
  setMessages: (messages: readonly (ChatMessage | SessionMessage)[]) => void;
  /** The session behind the hook. */
  session: ChatSession;
}

/**
 * A chat in a React component: history, streaming, stop and retry, the
 * rate-limit countdown and persistence, with the state kept by the hook (on
 * the SDK's session, through `useSyncExternalStore`).
 *
 * @example
 * ```tsx
 * const { messages, input, setInput, send, isBusy, stop, retryIn } = useChat({ persist: "support" })
 * ```
 */
export function useChat(options: UseChatOptions = {}): UseChatResult {
  // Callbacks may change on every render; the session calls the latest ones.
  const latest = useRef(options);
  latest.current = options;
  const [session] = useState(() =>
    createChatSession({
      ...(options.system !== undefined && { system: options.system }),
      ...(options.preset !== undefined && { preset: options.preset }),
      ...(options.attest && { attest: options.attest }),
      ...(options.initialMessages && { initialMessages: options.initialMessages }),
      ...(options.persist !== undefined && { persist: options.persist }),
      ...(options.client && { client: options.client }),
      ...(options.usage && { usage: true }),
      onError: (error) => latest.current.onError?.(error),
      onFinish: (message, result) => latest.current.onFinish?.(message, result),
    }),
  );
  const state = useSyncExternalStore(session.subscribe, session.getSnapshot, session.getSnapshot);
  const [input, setInput] = useState("");
  const inputRef = useRef(input);
  inputRef.current = input;

  useEffect(() => () => session.stop(), [session]);

  const send = useCallback(
    async (text?: string) => {
      const value = text ?? inputRef.current;
      // Nothing is sent while a reply is in progress or during a wait: then the typed text must stay in the box.
      if (!value.trim() || session.isBusy || session.retryIn > 0) return;
      if (text === undefined) setInput("");
      await session.send(value);
    },
    [session],
  );

  return {
    messages: state.messages,
    status: state.status,
    error: state.error,
    isBusy: state.isBusy,
    retryIn: state.retryIn,
    isChecking: state.isChecking,
    degraded: state.degraded,
    usage: state.usage,
    input,
    setInput,
    send,
    stop: session.stop,
    retry: session.retry,
    clear: session.clear,
    setMessages: session.setMessages,
    session,
  };
}
