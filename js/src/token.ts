import { type Attest, solve } from "./challenge.ts";
import { errorFromResponse, isLLMGuardError, LLMGuardError, toLLMGuardError } from "./errors.ts";

/** What `POST /api/token` answers. */
export interface TokenResponse {
  token: string;
  expires_at: number;
  expires_in: number;
  max_uses?: number | null;
}

interface CachedToken {
  token: string;
  /** When to stop using it, on this machine's clock (the server's `expires_at` may be skewed). */
  refreshAt: number;
  usesLeft: number | null;
}

/** Tokens are replaced this long before they expire, so none dies in flight. */
const REFRESH_MARGIN_MS = 30_000;

/** One `POST /api/token`, with the solution of the server's challenge when there is one. */
export type Mint = (solution: string | null) => Promise<Response>;

/** A mint in progress, shared by the callers waiting for it. */
interface PendingMint {
  promise: Promise<CachedToken>;
  waiters: number;
  /** Aborts the challenge's solving when the last waiter has gone. */
  controller: AbortController;
  solving: boolean;
}

/**
 * Mints tokens with `POST /api/token` on first use, caches them until shortly
 * before they expire (or their `max_uses` are spent), and shares one mint
 * between concurrent callers. When the server asks for a challenge first
 * (401 `ChallengeRequired`), it solves it and mints with the solution; after a
 * 403 `ChallengeFailed`, once more with the fresh challenge that came with it.
 */
export class TokenCache {
  private current: CachedToken | undefined;
  private pending: PendingMint | undefined;
  private readonly watchers = new Set<(checking: boolean) => void>();
  private solving = 0;

  constructor(
    private readonly mint: Mint,
    private readonly attest?: Attest,
  ) {}

  /**
   * A token for one request (it counts as one use, unless `spend` is false: for a route where the
   * server counts no use, such as `GET /api/usage`). `attest` shows a CAPTCHA when the cache has
   * none of its own.
   */
  async acquire(signal?: AbortSignal, attest?: Attest, spend = true): Promise<string> {
    if (signal?.aborted) throw toLLMGuardError(signal.reason, signal);
    for (;;) {
      const cached = this.current;
      if (cached && Date.now() < cached.refreshAt && (!spend || cached.usesLeft === null || cached.usesLeft > 0)) {
        if (spend && cached.usesLeft !== null) cached.usesLeft -= 1;
        return cached.token;
      }
      let pending = this.pending;
      if (!pending) {
        const started: PendingMint = { waiters: 0, controller: new AbortController(), solving: false, promise: undefined as never };
        started.promise = this.fetchToken(started, this.attest ?? attest).finally(() => {
          if (this.pending === started) this.pending = undefined;
        });
        pending = this.pending = started;
      }
      pending.waiters += 1;
      try {
        this.current = await abortable(pending.promise, signal);
      } finally {
        // Nobody waits for the token any more: stop the work (a mint without a challenge goes on and is kept).
        if (--pending.waiters === 0 && pending.solving) {
          pending.controller.abort();
          if (this.pending === pending) this.pending = undefined;
        }
      }
    }
  }

  /** Call `watcher` with whether a challenge is being solved for a mint, whenever that changes; returns the function that stops it. */
  watch(watcher: (checking: boolean) => void): () => void {
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  /** Forget `token` (the server refused it), so the next request mints a new one. */
  invalidate(token: string): void {
    if (this.current?.token === token) this.current = undefined;
  }

  clear(): void {
    this.current = undefined;
  }

  private async fetchToken(pending: PendingMint, attest: Attest | undefined): Promise<CachedToken> {
    let solution: string | null = null;
    for (let solved = 0; ; solved++) {
      let response: Response;
      try {
        response = await this.mint(solution);
      } catch (error) {
        throw toLLMGuardError(error);
      }
      let body: Partial<TokenResponse> & { challenge?: Record<string, unknown> };
      try {
        body = await response.json();
      } catch (error) {
        if (!response.ok) throw await errorFromResponse(response, {});
        throw new LLMGuardError("InvalidResponse", "The token endpoint did not answer JSON.", { cause: error });
      }
      if (!response.ok) {
        const error = await errorFromResponse(response, body);
        // One challenge, and one more if the first solution was refused: never a loop.
        if (!isLLMGuardError(error, "ChallengeRequired", "ChallengeFailed") || typeof body.challenge !== "object" || solved > 1) throw error;
        if (pending.waiters === 0) throw toLLMGuardError(undefined, AbortSignal.abort());
        pending.solving = true;
        this.setSolving(1);
        try {
          solution = await solve(body.challenge, pending.controller.signal, attest);
        } catch (cause) {
          throw pending.controller.signal.aborted || cause instanceof LLMGuardError
            ? toLLMGuardError(cause, pending.controller.signal)
            : new LLMGuardError("ChallengeFailed", "The challenge could not be completed.", { cause });
        } finally {
          pending.solving = false;
          this.setSolving(-1);
        }
        // No solution: a CAPTCHA and no `attest` to show it (or a challenge without an answer).
        if (!solution) throw error;
        continue;
      }
      if (typeof body.token !== "string" || typeof body.expires_in !== "number") {
        throw new LLMGuardError("InvalidResponse", "The token endpoint's answer has no token.");
      }
      const lifetime = body.expires_in * 1000;
      return {
        token: body.token,
        refreshAt: Date.now() + Math.max(lifetime / 2, lifetime - REFRESH_MARGIN_MS),
        usesLeft: typeof body.max_uses === "number" ? body.max_uses : null,
      };
    }
  }

  private setSolving(change: number): void {
    this.solving += change;
    for (const watcher of [...this.watchers]) watcher(this.solving > 0);
  }
}

/** `promise`, or an `Aborted` error as soon as `signal` aborts (the promise itself goes on). */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(toLLMGuardError(signal.reason, signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(toLLMGuardError(signal.reason, signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
