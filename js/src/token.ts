import { errorFromResponse, LLMGuardError, toLLMGuardError } from "./errors.ts";

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

/**
 * Mints tokens with `POST /api/token` on first use, caches them until shortly
 * before they expire (or their `max_uses` are spent), and shares one mint
 * between concurrent callers.
 */
export class TokenCache {
  private current: CachedToken | undefined;
  private pending: Promise<CachedToken> | undefined;

  constructor(private readonly mint: () => Promise<Response>) {}

  /** A token for one request (it counts as one use). */
  async acquire(signal?: AbortSignal): Promise<string> {
    if (signal?.aborted) throw toLLMGuardError(signal.reason, signal);
    for (;;) {
      const cached = this.current;
      if (cached && Date.now() < cached.refreshAt && (cached.usesLeft === null || cached.usesLeft > 0)) {
        if (cached.usesLeft !== null) cached.usesLeft -= 1;
        return cached.token;
      }
      this.pending ??= this.fetchToken().finally(() => {
        this.pending = undefined;
      });
      this.current = await abortable(this.pending, signal);
    }
  }

  /** Forget `token` (the server refused it), so the next request mints a new one. */
  invalidate(token: string): void {
    if (this.current?.token === token) this.current = undefined;
  }

  clear(): void {
    this.current = undefined;
  }

  private async fetchToken(): Promise<CachedToken> {
    let response: Response;
    try {
      response = await this.mint();
    } catch (error) {
      throw toLLMGuardError(error);
    }
    if (!response.ok) throw await errorFromResponse(response);
    let body: TokenResponse;
    try {
      body = (await response.json()) as TokenResponse;
    } catch (error) {
      throw new LLMGuardError("InvalidResponse", "The token endpoint did not answer JSON.", { cause: error });
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
