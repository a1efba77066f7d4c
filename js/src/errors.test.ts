import { afterEach, describe, expect, expectTypeOf, test, vi } from "vitest";

import type { ServerErrorCode } from "./error-codes.ts";
import {
  type ClientErrorCode,
  errorFromResponse,
  isAbortError,
  isLLMGuardError,
  isRateLimitError,
  LLMGuardError,
  type LLMGuardErrorCode,
  parseRetryAfter,
  toLLMGuardError,
} from "./errors.ts";
import { errorResponse, jsonResponse } from "./fake-server.test-util.ts";

afterEach(() => {
  vi.useRealTimers();
});

describe("errorFromResponse", () => {
  const answers: [number, ServerErrorCode][] = [[403, "Forbidden"], [401, "Unauthorized"], [413, "PayloadTooLarge"], [413, "PromptTooLarge"]];
  answers.push([408, "RequestTimeout"], [422, "InvalidRequest"], [400, "InvalidRequest"], [429, "TokenBudgetExceeded"]);
  answers.push([502, "UpstreamError"], [504, "UpstreamError"], [503, "SpendCapReached"], [503, "TokenCapReached"], [503, "StorageUnavailable"]);
  test.each(answers  )("%i %s keeps the server's code, message and status", async (status, code) => {
    const message = `The server's own words for ${code} (${status}).`;
    const error = await errorFromResponse(errorResponse(status, code, { message }));
    expect(error).toBeInstanceOf(LLMGuardError);
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe("LLMGuardError");
    expect(error.code).toBe(code);
    expect(error.message).toBe(message);
    expect(error.status).toBe(status);
    expect(error.retryAfter).toBeUndefined();
  });

  test("429 with Retry-After: 30 gives retryAfter 30", async () => {
    const response = errorResponse(429, "RateLimitExceeded", {
      message: "You have exceeded the allowed number of requests. Try again in 30 seconds.",
      headers: { "retry-after": "30", "ratelimit-policy": '"chat";q=60;w=60' },
      extra: { retry_after: 30 },
    });
    const error = await errorFromResponse(response);
    expect(error.code).toBe("RateLimitExceeded");
    expect(error.status).toBe(429);
    expect(error.retryAfter).toBe(30);
    expect(isRateLimitError(error)).toBe(true);
  });

  test("429 with Retry-After as an HTTP date gives the seconds until then", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(new Date("2025-01-01T12:00:00Z"));
    const response = errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "Wed, 01 Jan 2025 12:01:30 GMT" } });
    expect((await errorFromResponse(response)).retryAfter).toBe(90);
  });

  test("429 with only retry_after in the body uses it", async () => {
    const error = await errorFromResponse(errorResponse(429, "TokenBudgetExceeded", { extra: { retry_after: 45 } }));
    expect(error.retryAfter).toBe(45);
  });

  test("the Retry-After header wins over the body's retry_after", async () => {
    const response = errorResponse(429, "RateLimitExceeded", { headers: { "retry-after": "7" }, extra: { retry_after: 45 } });
    expect((await errorFromResponse(response)).retryAfter).toBe(7);
  });

  test("a body that is not JSON gives the code HTTP<status> and a message naming the status", async () => {
    const response = new Response("<html><body>Bad gateway</body></html>", { status: 502, headers: { "content-type": "text/html" } });
    const error = await errorFromResponse(response);
    expect(error.code).toBe("HTTP502");
    expect(error.status).toBe(502);
    expect(error.message).toContain("502");
  });

  test("an empty body gives the code HTTP<status>", async () => {
    const error = await errorFromResponse(new Response(null, { status: 500 }));
    expect(error.code).toBe("HTTP500");
    expect(error.status).toBe(500);
  });

  test("a JSON body without an error code gives the code HTTP<status>", async () => {
    const error = await errorFromResponse(jsonResponse({ detail: "Not Found" }, { status: 404 }));
    expect(error.code).toBe("HTTP404");
  });

  test("OpenAI's nested shape gives its code and message", async () => {
    const response = jsonResponse(
      { error: { message: "You have exceeded the allowed number of requests.", type: "rate_limit_error", code: "RateLimitExceeded", param: null } },
      { status: 429, headers: { "retry-after": "12" } },
    );
    const error = await errorFromResponse(response);
    expect(error.code).toBe("RateLimitExceeded");
    expect(error.message).toBe("You have exceeded the allowed number of requests.");
    expect(error.retryAfter).toBe(12);
  });

  test("requestId comes from x-request-id, or else from the body's request_id", async () => {
    const fromHeader = await errorFromResponse(
      errorResponse(401, "Unauthorized", { headers: { "x-request-id": "req-header" }, extra: { request_id: "req-body" } }),
    );
    expect(fromHeader.requestId).toBe("req-header");
    const fromBody = await errorFromResponse(errorResponse(401, "Unauthorized", { extra: { request_id: "req-body" } }));
    expect(fromBody.requestId).toBe("req-body");
    const none = await errorFromResponse(errorResponse(401, "Unauthorized"));
    expect(none.requestId).toBeUndefined();
  });
});

/** A TypeError as Safari throws it for a network failure: no stack. */
function withoutStack(error: TypeError): TypeError {
  Object.defineProperty(error, "stack", { value: undefined });
  return error;
}

describe("toLLMGuardError", () => {
  test.each([
    ["Chrome", new TypeError("Failed to fetch")],
    ["Chrome, with the host", new TypeError("Failed to fetch (proxy.example.com)")],
    ["Chrome, a body cut short", new TypeError("network error")],
    ["Firefox", new TypeError("NetworkError when attempting to fetch resource.")],
    ["Safari 16", new TypeError("The Internet connection appears to be offline.")],
    ["Safari 17+", withoutStack(new TypeError("Load failed"))],
    ["Node (undici)", new TypeError("fetch failed")],
    ["Node (undici), a body cut short", new TypeError("terminated")],
  ])("fetch's network failure in %s becomes NetworkError, keeping the original as its cause", (_where, failure) => {
    const error = toLLMGuardError(failure);
    expect(error.code).toBe("NetworkError");
    expect(error.message).toBe("Could not reach the server.");
    expect(error.status).toBeUndefined();
    expect(error.cause).toBe(failure);
  });

  test.each([
    ["a bug (TypeError)", new TypeError("Cannot read properties of undefined (reading 'body')")],
    ["Safari's generic message with a stack (not fetch's)", new TypeError("Load failed")],
    ["an Error that only says network", new Error("fetch failed")],
    ["a RangeError", new RangeError("Invalid array length")],
  ])("%s becomes UnexpectedError, not NetworkError, and names what was thrown", (_what, failure) => {
    const error = toLLMGuardError(failure);
    expect(error.code).toBe("UnexpectedError");
    expect(error.message).toBe(`Something unexpected failed (${failure.name}: ${failure.message}).`);
    expect(error.cause).toBe(failure);
  });

  test.each([
    ["a string", "boom", "a thrown string"],
    ["an object", { reason: "boom" }, "a thrown object"],
    ["undefined", undefined, "a thrown undefined"],
  ])("a thrown value that is not an Error (%s) becomes UnexpectedError", (_what, thrown, said) => {
    const error = toLLMGuardError(thrown);
    expect(error.code).toBe("UnexpectedError");
    expect(error.message).toBe(`Something unexpected failed (${said}).`);
    expect(error.cause).toBe(thrown);
  });

  test("a JSON parse error (SyntaxError) becomes InvalidResponse", () => {
    let failure: unknown;
    try {
      JSON.parse("<html>");
    } catch (thrown) {
      failure = thrown;
    }
    const error = toLLMGuardError(failure);
    expect(error.code).toBe("InvalidResponse");
    expect(error.cause).toBe(failure);
  });

  test("an AbortError becomes Aborted", () => {
    const error = toLLMGuardError(new DOMException("This operation was aborted", "AbortError"));
    expect(error.code).toBe("Aborted");
    expect(isAbortError(error)).toBe(true);
  });

  test("any failure once the signal is aborted becomes Aborted (the abort reason is not always an AbortError)", () => {
    const controller = new AbortController();
    const reason = new Error("the user left the page");
    controller.abort(reason);
    const error = toLLMGuardError(reason, controller.signal);
    expect(error.code).toBe("Aborted");
    expect(error.cause).toBe(reason);
  });

  test("a failure with a signal that is not aborted stays a NetworkError", () => {
    expect(toLLMGuardError(new TypeError("fetch failed"), new AbortController().signal).code).toBe("NetworkError");
  });

  test("an LLMGuardError is returned as it is", () => {
    const original = new LLMGuardError("RateLimitExceeded", "Slow down.", { status: 429, retryAfter: 3 });
    const aborted = new AbortController();
    aborted.abort();
    expect(toLLMGuardError(original)).toBe(original);
    expect(toLLMGuardError(original, aborted.signal)).toBe(original);
  });
});

describe("codes", () => {
  test("the server's codes (generated from the Python package) and the SDK's own are separate, and both are codes", () => {
    expectTypeOf<Extract<ClientErrorCode, ServerErrorCode>>().toBeNever();
    expectTypeOf<ServerErrorCode>().toExtend<LLMGuardErrorCode>();
    expectTypeOf<ClientErrorCode>().toExtend<LLMGuardErrorCode>();
    expectTypeOf<"RateLimitExceeded" | "InternalError" | "UpstreamError">().toExtend<ServerErrorCode>();
    expectTypeOf<"NetworkError" | "Aborted" | "InvalidResponse" | "ConfigurationError" | "UnexpectedError">().toExtend<ClientErrorCode>();
    expect(isLLMGuardError(new LLMGuardError("UnexpectedError", "x"), "UnexpectedError")).toBe(true);
  });
});

describe("guards", () => {
  const rateLimited = new LLMGuardError("RateLimitExceeded", "Slow down.", { status: 429, retryAfter: 30 });
  const budget = new LLMGuardError("TokenBudgetExceeded", "Budget used up.", { status: 429 });
  const aborted = new LLMGuardError("Aborted", "The request was cancelled.");
  const forbidden = new LLMGuardError("Forbidden", "Not this origin.", { status: 403 });

  test("isLLMGuardError without codes accepts any LLMGuardError and nothing else", () => {
    expect(isLLMGuardError(forbidden)).toBe(true);
    expect(isLLMGuardError(new Error("Forbidden"))).toBe(false);
    expect(isLLMGuardError({ name: "LLMGuardError", code: "Forbidden", message: "look-alike" })).toBe(false);
    expect(isLLMGuardError(undefined)).toBe(false);
  });

  test("isLLMGuardError with codes accepts only those codes", () => {
    expect(isLLMGuardError(forbidden, "Forbidden")).toBe(true);
    expect(isLLMGuardError(forbidden, "Unauthorized", "Forbidden")).toBe(true);
    expect(isLLMGuardError(forbidden, "Unauthorized")).toBe(false);
    expect(isLLMGuardError(new Error("x"), "Forbidden")).toBe(false);
  });

  test("isRateLimitError is true for rate limits, token budgets and a busy server only", () => {
    expect(isRateLimitError(rateLimited)).toBe(true);
    expect(isRateLimitError(budget)).toBe(true);
    expect(isRateLimitError(new LLMGuardError("ServerBusy", "Busy.", { status: 503, retryAfter: 1 }))).toBe(true);
    expect(isRateLimitError(forbidden)).toBe(false);
    expect(isRateLimitError(new LLMGuardError("SpendCapReached", "Cap reached.", { status: 503 }))).toBe(false);
    expect(isRateLimitError(new LLMGuardError("TokenCapReached", "Cap reached.", { status: 503 }))).toBe(false);
    expect(isRateLimitError(new LLMGuardError("PromptTooLarge", "Too long.", { status: 413 }))).toBe(false);
    expect(isRateLimitError(new Error("429"))).toBe(false);
  });

  test("isAbortError is true for Aborted only", () => {
    expect(isAbortError(aborted)).toBe(true);
    expect(isAbortError(rateLimited)).toBe(false);
    expect(isAbortError(new DOMException("aborted", "AbortError"))).toBe(false);
  });
});

describe("parseRetryAfter", () => {
  const now = Date.parse("2025-06-01T00:00:00Z");

  test("seconds", () => {
    expect(parseRetryAfter("30")).toBe(30);
    expect(parseRetryAfter("0")).toBe(0);
  });

  test("fractions round up, negatives become 0", () => {
    expect(parseRetryAfter("1.2")).toBe(2);
    expect(parseRetryAfter("-5")).toBe(0);
  });

  test("an HTTP date: the seconds from now until then, rounded up", () => {
    expect(parseRetryAfter("Sun, 01 Jun 2025 00:00:30 GMT", now)).toBe(30);
    expect(parseRetryAfter("Sun, 01 Jun 2025 00:00:30 GMT", now + 500)).toBe(30);
  });

  test("an HTTP date in the past: 0", () => {
    expect(parseRetryAfter("Sat, 31 May 2025 23:59:00 GMT", now)).toBe(0);
  });

  test("missing or unreadable: undefined", () => {
    expect(parseRetryAfter(null)).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
    expect(parseRetryAfter("")).toBeUndefined();
    expect(parseRetryAfter("soon")).toBeUndefined();
  });
});
