import isNetworkError from "is-network-error";

import type { ServerErrorCode } from "./error-codes.ts";

/**
 * Codes the SDK itself gives to what happens before or around a response (a server never sends
 * them):
 * - `NetworkError`: the request or the stream did not get through (offline, DNS, refused
 *   connection, CORS, a connection cut mid-reply), as fetch reports it in each browser and runtime;
 * - `Aborted`: cancelled, by `stop()` or an `AbortSignal`;
 * - `InvalidResponse`: an answer that is not llmguard's (not JSON, no token, a broken stream);
 * - `ConfigurationError`: the SDK's options failed (the `headers` function threw);
 * - `UnexpectedError`: anything else thrown on the way (a bug, a non-`Error` value): not a network
 *   problem, so retrying will not help.
 */
export type ClientErrorCode = "NetworkError" | "Aborted" | "InvalidResponse" | "ConfigurationError" | "UnexpectedError";

/**
 * Every code an {@link LLMGuardError} can have: the server's ({@link ServerErrorCode}, generated
 * from the Python package) and the SDK's own ({@link ClientErrorCode}).
 */
export type LLMGuardErrorCode = ServerErrorCode | ClientErrorCode;

export interface LLMGuardErrorOptions {
  status?: number | undefined;
  retryAfter?: number | undefined;
  requestId?: string | undefined;
  cause?: unknown;
}

/**
 * The one error the SDK throws. `code` says what happened, in the server's
 * stable words (`RateLimitExceeded`, `Unauthorized`, ...) or the SDK's own
 * (`NetworkError`, `Aborted`, `InvalidResponse`, `ConfigurationError`, `UnexpectedError`).
 *
 * @example
 * ```ts
 * try {
 *   await chat("Hello")
 * } catch (error) {
 *   if (isLLMGuardError(error) && error.retryAfter) showCountdown(error.retryAfter)
 * }
 * ```
 */
export class LLMGuardError extends Error {
  override readonly name = "LLMGuardError";
  /** The stable error code. */
  readonly code: LLMGuardErrorCode | (string & {});
  /** The HTTP status, when the error came with a response. */
  readonly status: number | undefined;
  /** Seconds to wait before trying again (from `Retry-After`), when the server said. */
  readonly retryAfter: number | undefined;
  /** The server's request id, for its logs. */
  readonly requestId: string | undefined;

  constructor(code: LLMGuardErrorCode | (string & {}), message: string, options: LLMGuardErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options.status;
    this.retryAfter = options.retryAfter;
    this.requestId = options.requestId;
  }
}

/** Whether `error` is an {@link LLMGuardError}, optionally with one of `codes`. */
export function isLLMGuardError(error: unknown, ...codes: LLMGuardErrorCode[]): error is LLMGuardError {
  return error instanceof LLMGuardError && (codes.length === 0 || codes.includes(error.code as LLMGuardErrorCode));
}

/**
 * Whether waiting `error.retryAfter` seconds may help: a rate limit, a used-up token budget, a
 * server with all its connections busy, or a CAPTCHA verifier that did not answer (not the monthly
 * caps, which last until next month).
 */
export function isRateLimitError(error: unknown): error is LLMGuardError & { retryAfter: number | undefined } {
  return isLLMGuardError(error, "RateLimitExceeded", "TokenBudgetExceeded", "ServerBusy", "ChallengeUnavailable");
}

/** Whether the request was cancelled (by `stop()` or an `AbortSignal`). */
export function isAbortError(error: unknown): error is LLMGuardError {
  return isLLMGuardError(error, "Aborted");
}

/** `Retry-After` as seconds: a number of seconds or an HTTP date. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value?.trim()) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}

/** The SDK error for a non-2xx response: the server's JSON error if there is one (`body`, when already read). */
export async function errorFromResponse(response: Response, body?: unknown): Promise<LLMGuardError> {
  body ??= await response.json().catch(() => undefined);
  const fields = typeof body === "object" && body !== null ? (body as Record<string, unknown>) : {};
  // llmguard's shape is {"error": "Code", "message"}; OpenAI's is {"error": {"code", "message"}}.
  const nested = typeof fields["error"] === "object" && fields["error"] !== null ? (fields["error"] as Record<string, unknown>) : {};
  const code = stringOr(fields["error"], stringOr(nested["code"], stringOr(nested["type"], `HTTP${response.status}`)));
  const message = stringOr(fields["message"], stringOr(nested["message"], `The server answered ${response.status}.`));
  const retryAfter =
    parseRetryAfter(response.headers.get("retry-after")) ??
    (typeof fields["retry_after"] === "number" ? fields["retry_after"] : undefined);
  const requestId = response.headers.get("x-request-id") ?? stringOr(fields["request_id"], undefined);
  return new LLMGuardError(code, message, { status: response.status, retryAfter, requestId });
}

/**
 * An SDK error for anything thrown while talking to the server: `Aborted` once `signal` is aborted
 * (or for an `AbortError`), `NetworkError` only for what fetch throws when the network fails (the
 * messages of each browser and runtime, as ky recognises them), `InvalidResponse` for a reply
 * that cannot be parsed (a `SyntaxError`), and `UnexpectedError` for anything else, such as a bug
 * or a thrown value that is not an `Error`. The original is kept as `cause`.
 */
export function toLLMGuardError(error: unknown, signal?: AbortSignal): LLMGuardError {
  if (error instanceof LLMGuardError) return error;
  const options = { cause: error };
  if (signal?.aborted || (error instanceof Error && error.name === "AbortError")) {
    return new LLMGuardError("Aborted", "The request was cancelled.", options);
  }
  if (isNetworkError(error)) return new LLMGuardError("NetworkError", "Could not reach the server.", options);
  if (error instanceof SyntaxError) return new LLMGuardError("InvalidResponse", "The server's reply could not be read.", options);
  const what = error instanceof Error ? `${error.name}: ${error.message}` : `a thrown ${typeof error}`;
  return new LLMGuardError("UnexpectedError", `Something unexpected failed (${what}).`, options);
}

function stringOr<T extends string | undefined>(value: unknown, fallback: T): string | T {
  return typeof value === "string" && value ? value : fallback;
}
