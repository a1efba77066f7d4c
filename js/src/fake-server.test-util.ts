// Fakes for the unit tests: responses shaped like llmguard's, streams the test
// controls read by read, and a `fetch` that routes to handlers and records
// every request. Imported by tests only.

import { Client, type ClientOptions } from "./client.ts";

export const BASE_URL = "https://proxy.test";

const encoder = new TextEncoder();

/** A JSON response, like every llmguard answer that is not a stream. */
export function jsonResponse(body: unknown, init: { status?: number; headers?: Record<string, string> } = {}): Response {
  return new Response(JSON.stringify(body), {
    status: init.status ?? 200,
    headers: { "content-type": "application/json", ...init.headers },
  });
}

/** An llmguard error response: `{"error": code, "message": ...}` with `status`. */
export function errorResponse(
  status: number,
  code: string,
  init: { message?: string; headers?: Record<string, string>; extra?: Record<string, unknown> } = {},
): Response {
  return jsonResponse(
    { error: code, message: init.message ?? `${code} (test)`, ...init.extra },
    { status, ...(init.headers && { headers: init.headers }) },
  );
}

/** What `POST /api/token` answers. */
export function tokenResponse(token: string, options: { expiresIn?: number; maxUses?: number | null } = {}): Response {
  const expiresIn = options.expiresIn ?? 900;
  return jsonResponse({
    token,
    expires_at: Math.floor(Date.now() / 1000) + expiresIn,
    expires_in: expiresIn,
    max_uses: options.maxUses ?? null,
  });
}

/** A chunk of the UI message stream as the server writes it, or `[DONE]`. */
export type StreamItem = Record<string, unknown> | "[DONE]";

/** One server-sent event: `data: <json>` and a blank line. */
export function sseEvent(item: StreamItem): string {
  return `data: ${item === "[DONE]" ? item : JSON.stringify(item)}\n\n`;
}

/** The whole body of a UI message stream. */
export function sseText(items: readonly StreamItem[]): string {
  return items.map(sseEvent).join("");
}

export const USAGE = { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 };

/** The chunks of a complete reply made of `deltas`, as llmguard streams it (with `[DONE]`). */
export function replyItems(
  deltas: readonly string[],
  options: { messageId?: string; finishReason?: string; usage?: Record<string, number> } = {},
): StreamItem[] {
  return [
    { type: "start", messageId: options.messageId ?? "msg_1" },
    { type: "start-step" },
    { type: "text-start", id: "t1" },
    ...deltas.map((delta) => ({ type: "text-delta", id: "t1", delta })),
    { type: "text-end", id: "t1" },
    { type: "finish-step" },
    { type: "finish", finishReason: options.finishReason ?? "stop", messageMetadata: { usage: options.usage ?? USAGE } },
    "[DONE]",
  ];
}

/** The opening chunks of a reply, before any delta. */
export const REPLY_START: readonly StreamItem[] = [{ type: "start", messageId: "msg_1" }, { type: "start-step" }, { type: "text-start", id: "t1" }];

export function deltaItem(delta: string): StreamItem {
  return { type: "text-delta", id: "t1", delta };
}

/** The closing chunks of a reply, after the last delta. */
export const REPLY_END: readonly StreamItem[] = [
  { type: "text-end", id: "t1" },
  { type: "finish-step" },
  { type: "finish", finishReason: "stop", messageMetadata: { usage: USAGE } },
  "[DONE]",
];

const SSE_HEADERS = {
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
  "x-vercel-ai-ui-message-stream": "v1",
  "x-accel-buffering": "no",
};

/** A streaming `/api/chat` answer, from a whole body or from a stream the test controls (with extra `headers`). */
export function sseResponse(body: readonly StreamItem[] | ReadableStream<Uint8Array>, headers: Record<string, string> = {}): Response {
  return new Response(body instanceof ReadableStream ? body : sseText(body), { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}

/** What `GET /api/usage` answers: 57 requests of 60 left this minute, 93120 tokens of 100000 today. */
export const USAGE_BODY = {
  requests: { limit: 60, remaining: 57, reset: 41, window: 60 },
  tokens: { limit: 100_000, remaining: 93_120, reset: 52_000, window: 86_400 },
  degraded: false,
  near_cap: false,
};

/** The rate-limit fields of a chat reply: `requests` and `tokens` left after it. */
export function rateLimitHeaders(requests: number, tokens: number, extra: Record<string, string> = {}): Record<string, string> {
  return {
    "ratelimit-policy": '"chat";q=60;w=60, "tokens";q=100000;w=86400',
    ratelimit: `"chat";r=${requests};t=30, "tokens";r=${tokens};t=50000`,
    ...extra,
  };
}

/** A byte stream that gives `parts` one read each, then ends. */
export function streamOf(parts: readonly (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const queue = parts.map((part) => (typeof part === "string" ? encoder.encode(part) : part));
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        const next = queue.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(next);
      },
    },
    { highWaterMark: 0 },
  );
}

/** A byte stream whose reads the test makes available one by one. */
export interface ControlledStream {
  readonly stream: ReadableStream<Uint8Array>;
  /** Make one more read available (ignored once the stream is cancelled, closed or errored). */
  push(part: string | Uint8Array): void;
  /** Make `items` available as one read. */
  pushItems(...items: StreamItem[]): void;
  /** The opening chunks of a reply and its first `deltas`, as one read. */
  startReply(...deltas: string[]): void;
  /** More `deltas` of the reply, as one read. */
  deltas(...deltas: string[]): void;
  /** The last `deltas` and the closing chunks of the reply, as one read. */
  endReply(...deltas: string[]): void;
  close(): void;
  error(reason: unknown): void;
  /** Whether the reader cancelled the stream (the download stopped). */
  readonly cancelled: boolean;
}

export function controlledStream(): ControlledStream {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let cancelled = false;
  let ended = false;
  const stream = new ReadableStream<Uint8Array>(
    {
      start(streamController) {
        controller = streamController;
      },
      cancel() {
        cancelled = true;
        ended = true;
      },
    },
    { highWaterMark: 0 },
  );
  const push = (part: string | Uint8Array) => {
    if (ended) return;
    controller.enqueue(typeof part === "string" ? encoder.encode(part) : part);
  };
  const pushItems = (...items: StreamItem[]) => push(sseText(items));
  return {
    stream,
    push,
    pushItems,
    startReply: (...deltas) => pushItems(...REPLY_START, ...deltas.map(deltaItem)),
    deltas: (...deltas) => pushItems(...deltas.map(deltaItem)),
    endReply: (...deltas) => pushItems(...deltas.map(deltaItem), ...REPLY_END),
    close() {
      if (ended) return;
      ended = true;
      controller.close();
    },
    error(reason) {
      if (ended) return;
      ended = true;
      controller.error(reason);
    },
    get cancelled() {
      return cancelled;
    },
  };
}

/** A promise the test settles by hand. */
export interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(reason: unknown): void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((resolvePromise, rejectPromise) => {
    resolve = resolvePromise;
    reject = rejectPromise;
  });
  return { promise, resolve, reject };
}

/**
 * `promise`'s value if it settles within a few milliseconds (what is already
 * available must not wait for more data), or a failure saying what did not come.
 */
export async function soon<T>(promise: Promise<T>, what = "the promise"): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle in time`)), 50);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Let pending promise callbacks (and the stream machinery behind them) run. */
export async function settle(): Promise<void> {
  for (let round = 0; round < 5; round++) await new Promise((resolve) => setTimeout(resolve, 0));
}

/** The rejection of `promise` (fails if it resolves). */
export async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection, but the promise resolved");
}

/** One request the fake server received. */
export interface RecordedRequest {
  readonly url: string;
  /** The path after the base URL (`/api/chat`). */
  readonly path: string;
  readonly method: string;
  readonly headers: Headers;
  readonly credentials: RequestCredentials | undefined;
  /** The JSON body, parsed (undefined when there is none). */
  readonly body: unknown;
  readonly signal: AbortSignal | undefined;
  /** The bearer token sent, if any. */
  readonly token: string | undefined;
}

/** Answers one request; `index` counts the requests to the same path, from 0. */
export type Handler = (request: RecordedRequest, index: number) => Response | Promise<Response>;

/** Answers `/api/token` with `token-1`, `token-2`, ... */
export function mintTokens(options: { expiresIn?: number; maxUses?: number | null } = {}): Handler {
  return (_request, index) => tokenResponse(`token-${index + 1}`, options);
}

/**
 * A `fetch` that routes `BASE_URL + path` to handlers, records every request
 * and, like a real `fetch`, honours the `AbortSignal` (before the answer and
 * while the body is read).
 */
export class FakeServer {
  readonly requests: RecordedRequest[] = [];
  private readonly routes: Record<string, Handler>;
  private readonly baseUrl: string;

  constructor(routes: Record<string, Handler>, options: { baseUrl?: string } = {}) {
    this.routes = { "/api/token": mintTokens(), ...routes };
    this.baseUrl = options.baseUrl ?? BASE_URL;
  }

  /** The requests made to `path`, in order. */
  requestsTo(path: string): RecordedRequest[] {
    return this.requests.filter((request) => request.path === path);
  }

  /** A client of this server (and no other). */
  client(options: Omit<ClientOptions, "fetch"> = {}): Client {
    return new Client({ baseUrl: this.baseUrl, ...options, fetch: this.fetch });
  }

  readonly fetch = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const signal = init.signal ?? undefined;
    if (signal?.aborted) throw signal.reason;
    const path = url.startsWith(this.baseUrl) ? url.slice(this.baseUrl.length) : url;
    const headers = new Headers(init.headers);
    const authorization = headers.get("authorization");
    const request: RecordedRequest = {
      url,
      path,
      method: init.method ?? "GET",
      headers,
      credentials: init.credentials,
      body: typeof init.body === "string" ? JSON.parse(init.body) : undefined,
      signal,
      token: authorization?.startsWith("Bearer ") ? authorization.slice("Bearer ".length) : undefined,
    };
    const index = this.requestsTo(path).length;
    this.requests.push(request);
    const handler = this.routes[path];
    const answer = handler ? handler(request, index) : errorResponse(404, "NotFound");
    const response = await untilAborted(Promise.resolve(answer), signal);
    if (!signal || !response.body) return response;
    return new Response(abortableBody(response.body, signal), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    promise.then(resolve, reject);
  });
}

/** `body`, erroring with the abort reason when `signal` aborts (as a real fetch's body does). */
function abortableBody(body: ReadableStream<Uint8Array>, signal: AbortSignal): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        signal.addEventListener(
          "abort",
          () => {
            controller.error(signal.reason);
            reader.cancel(signal.reason).catch(() => undefined);
          },
          { once: true },
        );
      },
      async pull(controller) {
        try {
          const { value, done } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (error) {
          if (!signal.aborted) controller.error(error);
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

/** An answer to one /api/chat request. */
export type Reply = () => Response;

/** A reply streaming `deltas`, then finishing. */
export const streamed =
  (...deltas: string[]): Reply =>
  () =>
    sseResponse(replyItems(deltas));

/** A reply whose chunks the test pushes. */
export function controlled(): { reply: Reply; source: ControlledStream } {
  const source = controlledStream();
  return { reply: () => sseResponse(source.stream), source };
}

/** A reply that streams `partial`, then fails with an error chunk (`code`, `message`): a failure after the stream started. */
export const failsMidStream =
  (partial: string, code: string, message: string): Reply =>
  () =>
    sseResponse([...REPLY_START, deltaItem(partial), { type: "error", errorText: message, code }, "[DONE]"]);

/** A fake llmguard server answering /api/chat with `replies`, one per request, in order (a 500 once they run out). */
export function chatServer(replies: readonly Reply[] = []): FakeServer {
  return new FakeServer({
    "/api/chat": (_request, index) => replies[index]?.() ?? errorResponse(500, "InternalError", { message: "No reply planned." }),
  });
}

/** What a chat request carried. */
export interface ChatBody {
  messages: { role: string; content: string }[];
  system?: string;
  stream?: boolean;
}

/** The bodies of the /api/chat requests `server` received, in order. */
export function chatBodies(server: FakeServer): ChatBody[] {
  return server.requestsTo("/api/chat").map((request) => request.body as ChatBody);
}

/** `messages` as a reader sees them: role and content, without ids. */
export function turns(messages: readonly { role: string; content: string }[]): { role: string; content: string }[] {
  return messages.map(({ role, content }) => ({ role, content }));
}

/** Wait, one macrotask at a time, until `condition()` holds (or fail naming `what`). */
export async function until(condition: () => boolean, what: string): Promise<void> {
  for (let round = 0; round < 100; round++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  throw new Error(`timed out waiting for ${what}`);
}
