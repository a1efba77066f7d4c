// Minting through the server's challenge: 401 ChallengeRequired → solve → POST {"solution"}; a 403
// ChallengeFailed is solved once more. The proof-of-work challenges are real ALTCHA ones (made and
// checked with altcha-lib, as the Python side does with the same protocol); Node has no Worker, so
// the solver runs in slices on the main thread here unless a test puts a fake Worker in place.
import { createChallenge, verifySolution } from "altcha-lib/v1";
import { afterEach, describe, expect, test, vi } from "vitest";

import type { CaptchaChallenge } from "./challenge.ts";
import { chat, streamChat } from "./chat.ts";
import { getToken } from "./client.ts";
import { isLLMGuardError } from "./errors.ts";
import {
  chatBodies,
  errorResponse,
  FakeServer,
  type Handler,
  rejectionOf,
  replyItems,
  sseResponse,
  streamed,
  tokenResponse,
  until,
} from "./fake-server.test-util.ts";
import { createChatSession } from "./session.ts";

const HMAC_KEY = "test-key";

afterEach(() => {
  vi.unstubAllGlobals();
});

async function powChallenge(maxnumber = 2000, number?: number) {
  return { kind: "pow", ...(await createChallenge({ hmacKey: HMAC_KEY, maxnumber, ...(number !== undefined && { number }) })), step: 0 };
}

const TURNSTILE = { kind: "turnstile", site_key: "site-key-1", action: "llmguard-token", script: "https://captcha.test/api.js" };

/** `/api/token` answers from `answers` in order (the last one again once they run out). */
function tokenEndpoint(...answers: ((body: { solution?: string }) => Response | Promise<Response>)[]): Handler {
  return (request, index) => (answers[Math.min(index, answers.length - 1)] as (body: { solution?: string }) => Response)(request.body as { solution?: string });
}

const required = (challenge: unknown) => () => errorResponse(401, "ChallengeRequired", { extra: { challenge } });
const failed = (challenge: unknown) => () => errorResponse(403, "ChallengeFailed", { extra: { challenge } });

describe("proof-of-work", () => {
  test("401 ChallengeRequired → the challenge is solved → POST {solution} with a payload the server verifies", async () => {
    const challenge = await powChallenge(2000, 1234);
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(challenge), () => tokenResponse("solved")) });

    expect(await getToken({ client: server.client() })).toBe("solved");

    const mints = server.requestsTo("/api/token");
    expect(mints.map((mint) => mint.body)).toEqual([{}, { solution: expect.any(String) }]);
    expect(mints[0]?.headers.get("content-type")).toBe("application/json");
    const solution = (mints[1]?.body as { solution: string }).solution;
    const payload = JSON.parse(atob(solution)) as Record<string, unknown>;
    expect(payload).toMatchObject({ algorithm: "SHA-256", challenge: challenge.challenge, number: 1234, salt: challenge.salt, signature: challenge.signature });
    expect(typeof payload["took"]).toBe("number");
    expect(await verifySolution(solution, HMAC_KEY)).toBe(true);
  });

  test("403 ChallengeFailed with a fresh challenge: that one is solved once more", async () => {
    const [first, second] = [await powChallenge(500, 17), await powChallenge(500, 321)];
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(first), failed(second), () => tokenResponse("second")) });

    expect(await getToken({ client: server.client() })).toBe("second");
    const solutions = server.requestsTo("/api/token").map((mint) => (mint.body as { solution?: string }).solution);
    expect(solutions.map((solution) => solution && JSON.parse(atob(solution)).number)).toEqual([undefined, 17, 321]);
  });

  test("a second 403 is the error: no third solution", async () => {
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(await powChallenge(100)), failed(await powChallenge(100))) });
    const error = await rejectionOf(getToken({ client: server.client() }));
    expect(isLLMGuardError(error, "ChallengeFailed")).toBe(true);
    expect((error as { status?: number }).status).toBe(403);
    expect(server.requestsTo("/api/token")).toHaveLength(3);
  });

  test("a refusal without a challenge is the error, as before", async () => {
    const server = new FakeServer({ "/api/token": () => errorResponse(401, "ChallengeRequired") });
    expect(isLLMGuardError(await rejectionOf(getToken({ client: server.client() })), "ChallengeRequired")).toBe(true);
    expect(server.requestsTo("/api/token")).toHaveLength(1);
  });

  test("chat() mints through the challenge with no code of the app's", async () => {
    const server = new FakeServer({
      "/api/token": tokenEndpoint(required(await powChallenge(300)), () => tokenResponse("t")),
      "/api/chat": () => new Response(JSON.stringify({ role: "assistant", content: "Hi" }), { headers: { "content-type": "application/json" } }),
    });
    expect(await chat("Hello", { client: server.client() })).toBe("Hi");
    expect(server.requestsTo("/api/chat")[0]?.token).toBe("t");
  });
});

/** A Worker that never answers, and remembers what happened to it. */
class SilentWorker {
  static made: SilentWorker[] = [];
  terminated = false;
  messages: unknown[] = [];
  onmessage: ((event: MessageEvent) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  constructor() {
    SilentWorker.made.push(this);
  }
  postMessage(message: unknown): void {
    this.messages.push(message);
  }
  terminate(): void {
    this.terminated = true;
  }
  addEventListener(): void {}
  removeEventListener(): void {}
}

describe("the worker", () => {
  test("the work goes to workers; aborting the caller's signal terminates every one of them", async () => {
    SilentWorker.made = [];
    vi.stubGlobal("Worker", SilentWorker);
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(await powChallenge(100000))) });
    const controller = new AbortController();
    const minting = rejectionOf(getToken({ client: server.client(), signal: controller.signal }));
    await until(() => SilentWorker.made.length > 0 && SilentWorker.made.every((worker) => worker.messages.length > 0), "the workers");

    // Each worker got its own part of the numbers, altcha-lib's worker protocol.
    const ranges = SilentWorker.made.map((worker) => (worker.messages[0] as { payload: { start: number; max: number } }).payload);
    expect(ranges[0]?.start).toBe(0);
    expect(ranges.at(-1)?.max).toBe(100000);
    expect(SilentWorker.made.some((worker) => worker.terminated)).toBe(false);

    controller.abort();
    expect(isLLMGuardError(await minting, "Aborted")).toBe(true);
    expect(SilentWorker.made.every((worker) => worker.terminated)).toBe(true);
    expect(server.requestsTo("/api/token")).toHaveLength(1); // no solution was sent
  });

  test("a worker that cannot start (a page policy without worker-src blob:): the main thread solves it", async () => {
    class BlockedWorker extends SilentWorker {
      override postMessage(): void {
        queueMicrotask(() => this.onerror?.(new Event("error")));
      }
    }
    vi.stubGlobal("Worker", BlockedWorker);
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(await powChallenge(1000, 999)), () => tokenResponse("fallback")) });
    expect(await getToken({ client: server.client() })).toBe("fallback");
    expect(JSON.parse(atob((server.requestsTo("/api/token")[1]?.body as { solution: string }).solution)).number).toBe(999);
  });

  test("the solve goes on while another caller still waits for the same mint", async () => {
    SilentWorker.made = [];
    vi.stubGlobal("Worker", SilentWorker);
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(await powChallenge(100000))) });
    const client = server.client();
    const controller = new AbortController();
    const leaving = rejectionOf(getToken({ client, signal: controller.signal }));
    const staying = getToken({ client });
    await until(() => SilentWorker.made.length > 0, "the workers");
    controller.abort();
    expect(isLLMGuardError(await leaving, "Aborted")).toBe(true);
    expect(SilentWorker.made.some((worker) => worker.terminated)).toBe(false);
    void staying.catch(() => undefined);
  });
});

describe("CAPTCHAs", () => {
  test("attest gets the challenge and the signal; its token is the solution", async () => {
    const attest = vi.fn(async (_challenge: CaptchaChallenge, _signal: AbortSignal) => "captcha-response");
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE), () => tokenResponse("human")) });
    expect(await getToken({ client: server.client({ attest }) })).toBe("human");
    expect(attest).toHaveBeenCalledOnce();
    expect(attest.mock.calls[0]).toEqual([
      { kind: "turnstile", siteKey: "site-key-1", action: "llmguard-token", script: "https://captcha.test/api.js" },
      expect.any(AbortSignal),
    ]);
    expect(server.requestsTo("/api/token")[1]?.body).toEqual({ solution: "captcha-response" });
  });

  test("hCaptcha has no action: null", async () => {
    const attest = vi.fn(async (_challenge: CaptchaChallenge, _signal: AbortSignal) => "h");
    const server = new FakeServer({
      "/api/token": tokenEndpoint(required({ kind: "hcaptcha", site_key: "k", action: null, script: "https://h.test/api.js" }), () => tokenResponse("ok")),
    });
    await getToken({ client: server.client({ attest }) });
    expect(attest.mock.calls[0]?.[0]).toEqual({ kind: "hcaptcha", siteKey: "k", action: null, script: "https://h.test/api.js" });
  });

  test("no attest: an LLMGuardError with code ChallengeRequired, and nothing more is sent", async () => {
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE)) });
    const error = await rejectionOf(chat("Hello", { client: server.client() }));
    expect(isLLMGuardError(error, "ChallengeRequired")).toBe(true);
    expect((error as { status?: number }).status).toBe(401);
    expect(server.requestsTo("/api/token")).toHaveLength(1);
    expect(server.requestsTo("/api/chat")).toHaveLength(0);
  });

  test("a call's attest is used when the client has none; the client's own wins", async () => {
    const own = vi.fn(async () => "own");
    const fromCall = vi.fn(async () => "call");
    const server = new FakeServer({
      "/api/token": tokenEndpoint(required(TURNSTILE), () => tokenResponse("t")),
      "/api/chat": () => sseResponse(replyItems(["ok"])),
    });
    await streamChat("Hi", { client: server.client(), attest: fromCall }).result;
    expect(fromCall).toHaveBeenCalledOnce();

    const other = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE), () => tokenResponse("t")), "/api/chat": () => sseResponse(replyItems(["ok"])) });
    await streamChat("Hi", { client: other.client({ attest: own }), attest: fromCall }).result;
    expect(own).toHaveBeenCalledOnce();
    expect(fromCall).toHaveBeenCalledOnce();
  });

  test("an attest that fails is a ChallengeFailed error, with the cause kept", async () => {
    const broken = new Error("widget crashed");
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE)) });
    const error = await rejectionOf(getToken({ client: server.client({ attest: async () => Promise.reject(broken) }) }));
    expect(isLLMGuardError(error, "ChallengeFailed")).toBe(true);
    expect((error as Error).cause).toBe(broken);
  });

  test("a 503 ChallengeUnavailable is the error, with its Retry-After", async () => {
    const server = new FakeServer({
      "/api/token": tokenEndpoint(required(TURNSTILE), () => errorResponse(503, "ChallengeUnavailable", { headers: { "retry-after": "7" } })),
    });
    const error = await rejectionOf(getToken({ client: server.client({ attest: async () => "x" }) }));
    expect(error).toMatchObject({ code: "ChallengeUnavailable", status: 503, retryAfter: 7 });
  });
});

describe("sessions", () => {
  test("isChecking is true while the challenge is solved (status submitted), false once the reply streams", async () => {
    let answer!: (token: string) => void;
    const attest = () => new Promise<string>((resolve) => (answer = resolve));
    const server = new FakeServer({
      "/api/token": tokenEndpoint(required(TURNSTILE), () => tokenResponse("t")),
      "/api/chat": streamed("Hel", "lo") as unknown as Handler,
    });
    const session = createChatSession({ client: server.client(), attest });
    const seen: [string, boolean][] = [];
    session.subscribe(() => seen.push([session.status, session.isChecking]));
    const sent = session.send("Hello");
    await until(() => session.isChecking, "checking");
    expect(session.status).toBe("submitted");
    answer("token");
    await sent;
    expect(session.isChecking).toBe(false);
    expect(session.status).toBe("ready");
    expect(seen).toContainEqual(["submitted", true]);
    expect(seen).toContainEqual(["streaming", false]);
  });

  test("stop() while checking ends the check: isChecking false, the attest's signal aborted", async () => {
    let signalSeen: AbortSignal | undefined;
    const attest = (_challenge: unknown, signal: AbortSignal) => {
      signalSeen = signal;
      return new Promise<string>(() => undefined);
    };
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE)) });
    const session = createChatSession({ client: server.client(), attest });
    const sent = session.send("Hello");
    await until(() => session.isChecking, "checking");
    session.stop();
    await sent;
    expect(session.isChecking).toBe(false);
    expect(session.status).toBe("ready");
    expect(signalSeen?.aborted).toBe(true);
  });

  test("a failed check is the session's error", async () => {
    const server = new FakeServer({ "/api/token": tokenEndpoint(required(TURNSTILE)) });
    const session = createChatSession({ client: server.client() });
    await session.send("Hello");
    expect(session.status).toBe("error");
    expect(session.error?.code).toBe("ChallengeRequired");
    expect(session.isChecking).toBe(false);
    expect(chatBodies(server)).toEqual([]);
  });
});
