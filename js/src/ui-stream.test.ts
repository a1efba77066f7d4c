import { describe, expect, test } from "vitest";

import { isLLMGuardError, LLMGuardError } from "./errors.ts";
import { controlledStream, rejectionOf, soon, sseEvent, sseText, type StreamItem, streamOf, USAGE } from "./fake-server.test-util.ts";
import { readUIMessageStream, type UIMessageChunk } from "./ui-stream.ts";

async function collect(body: ReadableStream<Uint8Array>): Promise<UIMessageChunk[]> {
  const chunks: UIMessageChunk[] = [];
  for await (const chunk of readUIMessageStream(body)) chunks.push(chunk);
  return chunks;
}

const encoder = new TextEncoder();

// Every chunk type the server sends, with text that has multibyte characters in it.
const EVERY_CHUNK: Record<string, unknown>[] = [
  { type: "start", messageId: "msg_abc" },
  { type: "start-step" },
  { type: "text-start", id: "t1" },
  { type: "text-delta", id: "t1", delta: "Héllo " },
  { type: "text-delta", id: "t1", delta: "wörld 👋 世界" },
  { type: "text-end", id: "t1" },
  { type: "finish-step" },
  { type: "finish", finishReason: "stop", messageMetadata: { usage: USAGE } },
];
const EVERY_CHUNK_BODY = sseText([...EVERY_CHUNK, "[DONE]"]);

describe("readUIMessageStream", () => {
  test("yields every chunk type the server sends, in order, and stops at [DONE]", async () => {
    expect(await collect(streamOf([EVERY_CHUNK_BODY]))).toEqual(EVERY_CHUNK);
  });

  test("yields the error chunk with its text and code", async () => {
    const items: StreamItem[] = [
      { type: "start", messageId: "msg_1" },
      { type: "text-delta", id: "t1", delta: "Par" },
      { type: "error", errorText: "The AI provider could not answer this request.", code: "UpstreamError" },
      "[DONE]",
    ];
    const chunks = await collect(streamOf([sseText(items)]));
    expect(chunks.at(-1)).toEqual({ type: "error", errorText: "The AI provider could not answer this request.", code: "UpstreamError" });
    expect(chunks).toHaveLength(3);
  });

  test("a body that ends without [DONE] ends the iteration after its last chunk", async () => {
    expect(await collect(streamOf([sseText(EVERY_CHUNK)]))).toEqual(EVERY_CHUNK);
  });

  test("an empty body yields nothing", async () => {
    expect(await collect(streamOf([]))).toEqual([]);
  });

  test("events split at every byte, mid-line and mid-character, parse the same", async () => {
    const bytes = encoder.encode(EVERY_CHUNK_BODY);
    for (let cut = 1; cut < bytes.length; cut++) {
      const chunks = await collect(streamOf([bytes.slice(0, cut), bytes.slice(cut)]));
      expect(chunks, `split at byte ${cut}`).toEqual(EVERY_CHUNK);
    }
  });

  test("one byte per read parses the same", async () => {
    const bytes = encoder.encode(EVERY_CHUNK_BODY);
    const parts = Array.from(bytes, (byte) => Uint8Array.of(byte));
    expect(await collect(streamOf(parts))).toEqual(EVERY_CHUNK);
  });

  test("a multibyte character split across three reads is decoded whole", async () => {
    const bytes = encoder.encode(sseEvent({ type: "text-delta", id: "t1", delta: "👋" }));
    const emoji = bytes.indexOf(0xf0);
    const parts = [bytes.slice(0, emoji + 1), bytes.slice(emoji + 1, emoji + 3), bytes.slice(emoji + 3)];
    expect(await collect(streamOf(parts))).toEqual([{ type: "text-delta", id: "t1", delta: "👋" }]);
  });

  test("\\r\\n line endings, also split between the \\r and the \\n", async () => {
    const crlf = EVERY_CHUNK_BODY.replaceAll("\n", "\r\n");
    expect(await collect(streamOf([crlf]))).toEqual(EVERY_CHUNK);
    const bytes = encoder.encode(crlf);
    for (let cut = bytes.indexOf(13) + 1; cut < bytes.length; cut = bytes.indexOf(13, cut) + 1) {
      if (cut === 0) break;
      expect(await collect(streamOf([bytes.slice(0, cut), bytes.slice(cut)])), `split after the \\r at ${cut}`).toEqual(EVERY_CHUNK);
    }
  });

  test("several events in one read are all yielded from that read", async () => {
    const source = controlledStream();
    const iterator = readUIMessageStream(source.stream);
    source.push(sseText(EVERY_CHUNK.slice(0, 4)));
    for (const expected of EVERY_CHUNK.slice(0, 4)) {
      expect((await soon(iterator.next(), "a chunk already received")).value).toEqual(expected);
    }
    await iterator.return(undefined);
  });

  test("a delta is yielded as soon as its read arrives, before the next read exists", async () => {
    const source = controlledStream();
    const iterator = readUIMessageStream(source.stream);
    source.pushItems({ type: "start", messageId: "msg_1" });
    expect((await soon(iterator.next(), "the start chunk")).value).toEqual({ type: "start", messageId: "msg_1" });

    source.pushItems({ type: "text-delta", id: "t1", delta: "Hel" });
    expect((await soon(iterator.next(), "the first delta")).value).toEqual({ type: "text-delta", id: "t1", delta: "Hel" });

    // Half an event: nothing to yield yet, and the iterator waits for the rest.
    let second: IteratorResult<UIMessageChunk> | undefined;
    const pending = iterator.next().then((result) => (second = result));
    source.push('data: {"type":"text-delta","id":"t1",');
    await expect(soon(pending, "half an event")).rejects.toThrow("did not settle");
    expect(second).toBeUndefined();
    source.push('"delta":"lo"}\n\n');
    expect((await soon(pending, "the second delta")).value).toEqual({ type: "text-delta", id: "t1", delta: "lo" });
    await iterator.return(undefined);
  });

  test("nothing after [DONE] is yielded, and the stream is not read to its end", async () => {
    const source = controlledStream();
    source.push(sseText([{ type: "text-delta", id: "t1", delta: "a" }, "[DONE]", { type: "text-delta", id: "t1", delta: "after" }]));
    // The stream stays open: the iteration must end on [DONE] alone.
    const chunks = await soon(collect(source.stream), "the iteration after [DONE]");
    expect(chunks).toEqual([{ type: "text-delta", id: "t1", delta: "a" }]);
    expect(source.cancelled).toBe(true);
  });

  test("events in a later read than [DONE] are not yielded", async () => {
    const source = controlledStream();
    const iterator = readUIMessageStream(source.stream);
    source.push(sseEvent("[DONE]"));
    source.push(sseEvent({ type: "text-delta", id: "t1", delta: "after" }));
    expect(await soon(iterator.next(), "the end")).toEqual({ done: true, value: undefined });
  });

  test("malformed JSON in an event is an InvalidResponse error, and the stream is cancelled", async () => {
    const source = controlledStream();
    source.push(sseEvent({ type: "start", messageId: "msg_1" }) + "data: {not json\n\n");
    const error = await rejectionOf(collect(source.stream));
    expect(error).toBeInstanceOf(LLMGuardError);
    expect(isLLMGuardError(error, "InvalidResponse")).toBe(true);
    expect(source.cancelled).toBe(true);
  });

  test("leaving the loop early cancels the underlying stream", async () => {
    const source = controlledStream();
    source.pushItems({ type: "start", messageId: "msg_1" }, { type: "text-delta", id: "t1", delta: "Hel" });
    const seen: UIMessageChunk[] = [];
    for await (const chunk of readUIMessageStream(source.stream)) {
      seen.push(chunk);
      if (chunk.type === "text-delta") break;
    }
    expect(seen).toHaveLength(2);
    expect(source.cancelled).toBe(true);
  });

  test("a body that fails while being read rejects the iteration with that failure", async () => {
    const source = controlledStream();
    const iterator = readUIMessageStream(source.stream);
    source.pushItems({ type: "start", messageId: "msg_1" });
    await iterator.next();
    const failure = new TypeError("network connection lost");
    source.error(failure);
    await expect(iterator.next()).rejects.toBe(failure);
  });
});
