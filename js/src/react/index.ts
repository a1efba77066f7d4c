import {
  createElement,
  type CSSProperties,
  type ReactElement,
  useCallback,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

import type { ChatMessage, ChatResult } from "../chat.ts";
import type { Client } from "../client.ts";
import type { LLMGuardError } from "../errors.ts";
import { type ChatSession, type ChatStatus, createChatSession, type SessionMessage } from "../session.ts";
import { defineChatWidget, type LLMGuardChatElement } from "../widget/chat-element.ts";

/** Options of {@link useChat}. `system`, `initialMessages` and `client` are read once, on mount. */
export interface UseChatOptions {
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** Start from an earlier conversation. */
  initialMessages?: readonly ChatMessage[];
  /** Another client than the one `configure()` set up. */
  client?: Client;
  onError?: (error: LLMGuardError) => void;
  onFinish?: (message: SessionMessage, result: ChatResult) => void;
}

export interface UseChatResult {
  messages: readonly SessionMessage[];
  status: ChatStatus;
  error: LLMGuardError | undefined;
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
 * A chat in a React component: history, streaming, stop and retry, with the
 * state kept by the hook (on the SDK's session, through `useSyncExternalStore`).
 *
 * @example
 * ```tsx
 * const { messages, input, setInput, send, status, stop } = useChat()
 * ```
 */
export function useChat(options: UseChatOptions = {}): UseChatResult {
  // Callbacks may change on every render; the session calls the latest ones.
  const latest = useRef(options);
  latest.current = options;
  const [session] = useState(() =>
    createChatSession({
      ...(options.system !== undefined && { system: options.system }),
      ...(options.initialMessages && { initialMessages: options.initialMessages }),
      ...(options.client && { client: options.client }),
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
      // Nothing is sent while a reply is in progress: then the typed text must stay in the box.
      if (!value.trim() || session.status === "submitted" || session.status === "streaming") return;
      if (text === undefined) setInput("");
      await session.send(value);
    },
    [session],
  );

  return {
    messages: state.messages,
    status: state.status,
    error: state.error,
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

export interface ChatWidgetProps {
  /** The panel's heading. @defaultValue "Assistant" */
  title?: string;
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** @defaultValue "Ask anything…" */
  placeholder?: string;
  /** @defaultValue "light" */
  theme?: "light" | "dark" | "auto";
  /** Start from an earlier conversation. */
  initialMessages?: readonly ChatMessage[];
  /** Keep the conversation across reloads (localStorage); a string names it. */
  persist?: boolean | string;
  /** The llmguard server, when it is not the one `configure()` set. */
  baseUrl?: string;
  className?: string;
  style?: CSSProperties;
  onError?: (error: LLMGuardError) => void;
  onFinish?: (message: SessionMessage, result: ChatResult) => void;
}

/**
 * A complete chat panel: `return <ChatWidget />`. It is the `<llmguard-chat>`
 * element (the same widget plain HTML pages get from `/widget.js`), rendered
 * by React.
 */
export function ChatWidget(props: ChatWidgetProps): ReactElement {
  const element = useRef<LLMGuardChatElement>(null);
  const callbacks = useRef(props);
  callbacks.current = props;

  useEffect(() => {
    const node = element.current;
    if (!node) return;
    // Before the element upgrades (defineChatWidget), so its session starts from them.
    if (props.initialMessages) node.initialMessages = props.initialMessages;
    defineChatWidget();
    const onError = (event: CustomEvent<LLMGuardError>) => callbacks.current.onError?.(event.detail);
    const onFinish = (event: CustomEvent<{ message: SessionMessage; result: ChatResult }>) =>
      callbacks.current.onFinish?.(event.detail.message, event.detail.result);
    node.addEventListener("llmguard-error", onError);
    node.addEventListener("llmguard-finish", onFinish);
    return () => {
      node.removeEventListener("llmguard-error", onError);
      node.removeEventListener("llmguard-finish", onFinish);
    };
    // initialMessages is read once, like the element does.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  return createElement("llmguard-chat", {
    ref: element,
    heading: props.title,
    system: props.system,
    placeholder: props.placeholder,
    theme: props.theme,
    persist: props.persist === true ? "" : props.persist || undefined,
    "base-url": props.baseUrl,
    className: props.className,
    style: props.style,
  });
}
