import type { Attest } from "./challenge.ts";
import { type Client, getClient } from "./client.ts";
import { LLMGuardError, toLLMGuardError } from "./errors.ts";
import { readUIMessageStream, type TokenUsage } from "./ui-stream.ts";
import { parseRateLimit, type Usage } from "./usage.ts";

/** One turn of a conversation. The system prompt is not a message: see `system`. */
export interface ChatMessage {
  role: "user" | "assistant";
  content: string;
}

/** A prompt, or the conversation so far. */
export type ChatInput = string | readonly ChatMessage[];

export interface ChatOptions {
  /** Instructions for this conversation, if the server allows clients to set them. */
  system?: string;
  /** The name of a prompt preset defined on the server (`PRESETS`): its instructions, model and caps. */
  preset?: string;
  /** Cancels the request, and so the provider call behind it. */
  signal?: AbortSignal;
  /** Ask for fewer output tokens than the server's cap. */
  maxTokens?: number;
  /** Another client than the one `configure()` set up. */
  client?: Client;
  /** Shows a CAPTCHA if the server asks for one before it mints a token and the client has no `attest` of its own. */
  attest?: Attest;
}

/** The cheaper service a server near its monthly cap gives (`DEGRADE`): the model and output cap it uses now. */
export interface Degraded {
  /** The fraction of the monthly cap past which this step applies (`0.8`). */
  threshold: number;
  /** The model answering now, when the step changes it. */
  model: string | null;
  /** The output cap now, when the step lowers it. */
  maxTokens: number | null;
}

/** A finished reply. */
export interface ChatResult {
  text: string;
  /** `stop`, `length` (cut at the output cap), `content-filter`, ... */
  finishReason: string | undefined;
  /** The tokens the reply was charged, as the server reported them. */
  usage: TokenUsage | undefined;
  messageId: string | undefined;
  /** Set when the server answered with a cheaper model or a lower cap because it is near its monthly cap. */
  degraded: Degraded | null;
  /** What the reply's rate-limit fields say is left of the limits ({@link parseRateLimit}). */
  rateLimit: Partial<Usage>;
}

/**
 * Deltas of a streamed reply as they arrive, and its final result.
 *
 * The request starts at once; iterate to read the deltas, await `result` for
 * the whole reply. Leaving the loop early (or `abort()`) cancels the request.
 */
export interface ChatStream extends AsyncIterable<string> {
  /** The whole reply with its finish reason and usage; rejects with an `LLMGuardError`. */
  readonly result: Promise<ChatResult>;
  /** Cancel the request (the proxy then cancels the provider call). */
  abort(): void;
}

/**
 * Send a prompt (or a conversation) and get the assistant's reply.
 *
 * @example
 * ```ts
 * const answer = await chat("What is the capital of France?")
 * ```
 */
export async function chat(input: ChatInput, options: ChatOptions = {}): Promise<string> {
  const client = options.client ?? getClient();
  const response = await client.post("/api/chat", requestBody(input, options, false), options.signal, options.attest);
  let reply: unknown;
  try {
    reply = await response.json();
  } catch (error) {
    if (error instanceof SyntaxError) {
      throw new LLMGuardError("InvalidResponse", "The server's reply is not JSON: is baseUrl an llmguard server?", {
        cause: error,
      });
    }
    throw toLLMGuardError(error, options.signal);
  }
  const content = typeof reply === "object" && reply !== null ? (reply as { content?: unknown }).content : undefined;
  if (typeof content !== "string") throw new LLMGuardError("InvalidResponse", "The server's reply has no content.");
  return content;
}

/**
 * Stream the assistant's reply, delta by delta.
 *
 * @example
 * ```ts
 * const stream = streamChat("Tell me a story")
 * for await (const delta of stream) output.textContent += delta
 * const { usage } = await stream.result
 * ```
 */
export function streamChat(input: ChatInput, options: ChatOptions = {}): ChatStream {
  const client = options.client ?? getClient();
  const controller = new AbortController();
  const unlink = linkSignals(controller, options.signal);
  const signal = controller.signal;
  const deltas: string[] = [];
  const waiting = new Set<() => void>();
  let finished = false;
  const wakeUp = () => {
    for (const wake of waiting) wake();
    waiting.clear();
  };

  const result = (async (): Promise<ChatResult> => {
    try {
      const response = await client.post("/api/chat", requestBody(input, options, true), signal, options.attest);
      if (!response.body) throw new LLMGuardError("InvalidResponse", "The server's reply has no body.");
      let text = "";
      let messageId: string | undefined;
      let degraded: Degraded | null = null;
      for await (const chunk of readUIMessageStream(response.body)) {
        degraded = readDegraded((chunk as { messageMetadata?: unknown }).messageMetadata) ?? degraded;
        if (chunk.type === "text-delta" && typeof chunk["delta"] === "string") {
          text += chunk["delta"];
          deltas.push(chunk["delta"]);
          wakeUp();
        } else if (chunk.type === "start" && typeof chunk["messageId"] === "string") {
          messageId = chunk["messageId"];
        } else if (chunk.type === "error") {
          const code = typeof chunk["code"] === "string" ? chunk["code"] : "UpstreamError";
          const message = typeof chunk["errorText"] === "string" ? chunk["errorText"] : "The reply failed.";
          throw new LLMGuardError(code, message); // no status: the response itself was a 200
        } else if (chunk.type === "finish") {
          const finish = chunk as { finishReason?: string; messageMetadata?: { usage?: TokenUsage } };
          const rateLimit = parseRateLimit(response.headers);
          return { text, finishReason: finish.finishReason, usage: finish.messageMetadata?.usage, messageId, degraded, rateLimit };
        }
      }
      throw new LLMGuardError("InvalidResponse", "The stream ended before the reply was complete.");
    } catch (error) {
      throw toLLMGuardError(error, signal);
    } finally {
      finished = true;
      unlink();
      wakeUp();
    }
  })();
  // Whoever only iterates gets the error from the loop; no unhandled rejection besides.
  result.catch(() => undefined);

  async function* iterate(): AsyncGenerator<string> {
    let index = 0;
    try {
      for (;;) {
        if (index < deltas.length) {
          yield deltas[index++] as string;
        } else if (finished) {
          await result;
          return;
        } else {
          await new Promise<void>((resolve) => waiting.add(resolve));
        }
      }
    } finally {
      if (!finished) controller.abort();
    }
  }

  return { [Symbol.asyncIterator]: iterate, result, abort: () => controller.abort() };
}

function requestBody(input: ChatInput, options: ChatOptions, stream: boolean): Record<string, unknown> {
  const messages = typeof input === "string" ? [{ role: "user", content: input }] : input.map(({ role, content }) => ({ role, content }));
  return {
    messages,
    stream,
    ...(options.system !== undefined && { system: options.system }),
    ...(options.preset !== undefined && { preset: options.preset }),
    ...(options.maxTokens !== undefined && { max_tokens: options.maxTokens }),
  };
}

/** The `degraded` of a reply's metadata (`{threshold, model, max_tokens}`), or `undefined`. */
function readDegraded(metadata: unknown): Degraded | undefined {
  const degraded = (metadata as { degraded?: { threshold: number; model?: string; max_tokens?: number } } | undefined)?.degraded;
  return degraded && { threshold: degraded.threshold, model: degraded.model ?? null, maxTokens: degraded.max_tokens ?? null };
}

/** Abort `controller` with `outer`; returns the function that stops listening (a long-lived signal must not pile up listeners). */
function linkSignals(controller: AbortController, outer: AbortSignal | undefined): () => void {
  if (!outer) return () => undefined;
  if (outer.aborted) {
    controller.abort(outer.reason);
    return () => undefined;
  }
  const onAbort = () => controller.abort(outer.reason);
  outer.addEventListener("abort", onAbort, { once: true });
  return () => outer.removeEventListener("abort", onAbort);
}
