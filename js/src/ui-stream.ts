import { createParser } from "eventsource-parser";

import { LLMGuardError } from "./errors.ts";

/** Token counts, as the server reports them. (`Usage` in 0.1.0; `Usage` is now what is left of the limits.) */
export interface TokenUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The chunks of the AI SDK UI message stream (v1) that llmguard sends. */
export type UIMessageChunk =
  | { type: "start"; messageId?: string }
  | { type: "start-step" }
  | { type: "text-start"; id: string }
  | { type: "text-delta"; id: string; delta: string }
  | { type: "text-end"; id: string }
  | { type: "finish-step" }
  | { type: "finish"; finishReason?: string; messageMetadata?: { usage?: TokenUsage } }
  | { type: "error"; errorText: string; code?: string }
  | { type: string; [key: string]: unknown };

/**
 * The chunks of a UI message stream as they arrive, until `[DONE]` or the end
 * of the body. Each network read is parsed and its chunks yielded at once.
 */
export async function* readUIMessageStream(body: ReadableStream<Uint8Array>): AsyncGenerator<UIMessageChunk> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let ready: UIMessageChunk[] = [];
  let done = false;
  const parser = createParser({
    onEvent(event) {
      if (done) return;
      if (event.data === "[DONE]") {
        done = true;
        return;
      }
      try {
        ready.push(JSON.parse(event.data) as UIMessageChunk);
      } catch (error) {
        throw new LLMGuardError("InvalidResponse", "The server sent a malformed stream event.", { cause: error });
      }
    },
  });
  try {
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      parser.feed(decoder.decode(value, { stream: true }));
      const chunks = ready;
      ready = [];
      yield* chunks;
    }
  } finally {
    // Stops the download (and so the provider call) when the consumer leaves early.
    await reader.cancel().catch(() => undefined);
  }
}
