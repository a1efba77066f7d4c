import { createElement, type CSSProperties, type ReactElement, useEffect, useRef } from "react";

import type { ChatMessage, ChatResult } from "../chat.ts";
import type { LLMGuardError } from "../errors.ts";
import type { SessionMessage } from "../session.ts";
import { defineChatWidget, type LLMGuardChatElement } from "./chat-element.ts";

// `@llmguard/sdk/widget/react`: the widget for React apps. `useChat` (the hook for markup of your
// own) is in `@llmguard/sdk/react`, which does not need this module.

export interface ChatWidgetProps {
  /** The panel's heading. @defaultValue "Assistant" */
  title?: string;
  /** Instructions for the conversation, if the server allows clients to set them. */
  system?: string;
  /** The name of a prompt preset defined on the server (`PRESETS`). */
  preset?: string;
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
  /**
   * Show a line such as "12 messages left today" under the text box (from `GET /api/usage`, then
   * each reply's headers). Hidden while unknown.
   */
  showUsage?: boolean;
  className?: string;
  style?: CSSProperties;
  onError?: (error: LLMGuardError) => void;
  onFinish?: (message: SessionMessage, result: ChatResult) => void;
}

/**
 * A complete chat panel: `return <ChatWidget />`. It is the `<llmguard-chat>`
 * element (the same widget plain HTML pages get from `/widget.js`), rendered
 * by React; the element and `marked` come with this entry, not with `useChat`'s.
 *
 * @example
 * ```tsx
 * import { ChatWidget } from "@llmguard/sdk/widget/react"
 *
 * export default function Help() {
 *   return <ChatWidget title="Ask us" theme="auto" persist />
 * }
 * ```
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
    preset: props.preset,
    placeholder: props.placeholder,
    theme: props.theme,
    persist: props.persist === true ? "" : props.persist || undefined,
    "base-url": props.baseUrl,
    "show-usage": props.showUsage ? "" : undefined,
    className: props.className,
    style: props.style,
  });
}
