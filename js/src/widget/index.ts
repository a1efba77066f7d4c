export {
  type ChatErrorEvent,
  type ChatFinishEvent,
  defineChatWidget,
  type LLMGuardChatElement,
  TAG,
} from "./chat-element.ts";
export { renderMarkdown, safeHref } from "./markdown.ts";
