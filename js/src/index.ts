export { Client, type ClientOptions, configure, getAuthHeaders, getClient, getToken } from "./client.ts";
export type { Attest, CaptchaChallenge } from "./challenge.ts";
export {
  chat,
  type ChatInput,
  type ChatMessage,
  type ChatOptions,
  type ChatResult,
  type ChatStream,
  type Degraded,
  streamChat,
} from "./chat.ts";
export {
  isAbortError,
  isLLMGuardError,
  isRateLimitError,
  LLMGuardError,
  type ClientErrorCode,
  type LLMGuardErrorCode,
  type LLMGuardErrorOptions,
} from "./errors.ts";
export {
  type ChatSession,
  type ChatSessionOptions,
  type ChatSessionState,
  type ChatStatus,
  type ChatStorage,
  createChatSession,
  type SessionMessage,
} from "./session.ts";
export type { ServerErrorCode } from "./error-codes.ts";
export type { TokenUsage, UIMessageChunk } from "./ui-stream.ts";
export { getUsage, parseRateLimit, type Usage, type UsageWindow } from "./usage.ts";
