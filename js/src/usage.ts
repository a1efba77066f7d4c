import { type Client, getClient } from "./client.ts";
import { LLMGuardError, toLLMGuardError } from "./errors.ts";

/** One limit as it stands: how much is left of it, and when more comes. */
export interface UsageWindow {
  /** Requests, or tokens, per window. */
  limit: number;
  /** What is left now (never below 0). */
  remaining: number;
  /**
   * Seconds until the request limit frees a request (0 when none is used), or until the token
   * window's current period ends.
   */
  reset: number;
  /** The window's length in seconds (`86400`: a day). */
  window: number;
  /** `reset` as a time: milliseconds since the epoch, on this machine's clock. */
  resetAt: number;
}

/**
 * What this browser's client has left on the server: its chat request limit, its token window,
 * and whether the service is near its monthly cap. Never money, never the caps' sizes.
 */
export interface Usage {
  /** The chat request limit of this client IP (`RATE_LIMIT_MAX` per `RATE_LIMIT_WINDOW`). */
  requests: UsageWindow | null;
  /** The token window of this client (or of the user in its token); `null` when the server has none. */
  tokens: UsageWindow | null;
  /** Replies come from a cheaper model or under a lower cap now (the server's `DEGRADE`). */
  degraded: boolean;
  /** A monthly cap of the service is at least 80 % used (or the service is degraded). */
  nearCap: boolean;
}

/**
 * What the client has left, from `GET /api/usage`: reading it counts nothing (not a chat request,
 * not a use of a single-use token).
 *
 * @example
 * ```ts
 * const { tokens } = await getUsage()
 * if (tokens) note.textContent = `${tokens.remaining} tokens left, more at ${new Date(tokens.resetAt).toLocaleTimeString()}`
 * ```
 */
export async function getUsage(options: { signal?: AbortSignal; client?: Client } = {}): Promise<Usage> {
  const { signal } = options;
  const response = await (options.client ?? getClient()).get("/api/usage", signal);
  let body: Record<string, unknown> | null;
  try {
    body = await response.json();
  } catch (error) {
    throw toLLMGuardError(error, signal);
  }
  if (typeof body !== "object" || body === null || !("requests" in body)) {
    throw new LLMGuardError("InvalidResponse", "The server's reply is not llmguard's: is baseUrl an llmguard server?");
  }
  const now = Date.now();
  return {
    requests: usageWindow(body["requests"], now),
    tokens: usageWindow(body["tokens"], now),
    degraded: body["degraded"] === true,
    nearCap: body["near_cap"] === true,
  };
}

function usageWindow(value: unknown, now: number): UsageWindow | null {
  const { limit, remaining, reset, window } = (value ?? {}) as UsageWindow;
  const found = { limit, remaining, reset, window };
  return Object.values(found).every((number) => typeof number === "number") ? { ...found, resetAt: now + reset * 1000 } : null;
}

/**
 * What a reply's `RateLimit-Policy` and `RateLimit` fields (and `X-LLMGuard-Degraded`) say is
 * left: the request limit (`"chat"`) as `requests`, the token window (`"tokens"`) as `tokens`;
 * what they do not say is left out. On a chat reply, `tokens.remaining` counts the whole of that
 * request's hold, not what it was finally charged: `getUsage()` says the settled number.
 *
 * @example
 * ```ts
 * const response = await fetch("https://proxy.example.com/api/chat", init)
 * const { requests } = parseRateLimit(response.headers) // { limit: 60, remaining: 57, reset: 41, window: 60, resetAt }
 * ```
 */
export function parseRateLimit(headers: Pick<Headers, "get">, now = Date.now()): Partial<Usage> {
  const policy = headers.get("ratelimit-policy");
  const left = headers.get("ratelimit");
  const usage: Partial<Usage> = {};
  for (const [name, key] of [
    ["chat", "requests"],
    ["tokens", "tokens"],
  ] as const) {
    const value = (field: string | null, parameter: string) => member(field, name, parameter);
    const window = usageWindow({ limit: value(policy, "q"), remaining: value(left, "r"), reset: value(left, "t"), window: value(policy, "w") }, now);
    if (window) usage[key] = window;
  }
  if (headers.get("x-llmguard-degraded") !== null) {
    usage.degraded = usage.nearCap = true;
  } else if (usage.requests || usage.tokens) {
    usage.degraded = false; // a reply that passed the limits without the header was not degraded
  }
  return usage;
}

/** In a structured-field list such as `"chat";q=60;w=60, "tokens";q=100000;w=86400`, the integer `parameter` of member `name`. */
function member(field: string | null, name: string, parameter: string): number | undefined {
  const found = field?.match(new RegExp(`(?:^|,)\\s*"?${name}"?;(?:[^,]*;)?\\s*${parameter}=(\\d+)`));
  return found ? Number(found[1]) : undefined;
}

/** `current` brought up to date with what a reply said (`parseRateLimit`); what the reply did not say stays. */
export function mergeUsage(current: Usage | null, update: Partial<Usage>): Usage | null {
  return Object.keys(update).length ? { requests: null, tokens: null, degraded: false, nearCap: false, ...current, ...update } : current;
}
