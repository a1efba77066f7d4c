import type { Attest } from "./challenge.ts";
import { errorFromResponse, LLMGuardError, toLLMGuardError } from "./errors.ts";
import { TokenCache } from "./token.ts";

/** Where and how the SDK reaches your llmguard server. */
export interface ClientOptions {
  /**
   * The URL llmguard is served at (`https://proxy.example.com`, or with the
   * prefix it is mounted under: `https://example.com/llm`).
   *
   * @defaultValue the page's own origin; for the build served at `/sdk.js`,
   * the server that served it
   */
  baseUrl?: string;
  /** A `fetch` to use instead of the global one (tests, custom agents). */
  fetch?: typeof fetch;
  /** Extra headers for every request, or a function returning them (for example your own session header). */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /**
   * Shows the CAPTCHA a server asks for before it mints a token (`TOKEN_CHALLENGE=turnstile` or
   * `hcaptcha`) and resolves to the provider's response token. Without it (and outside the widget,
   * which has its own) such a server's refusal is an `LLMGuardError` with code `ChallengeRequired`.
   * A proof-of-work challenge needs nothing: the SDK solves it in a worker.
   */
  attest?: Attest;
}

function defaultBaseUrl(): string {
  if (!__LLMGUARD_BROWSER_BUILD__) return "";
  // The folder /sdk.js was served from (written out: bundlers rewrite `new URL(..., import.meta.url)`).
  const here = import.meta.url.split(/[?#]/)[0] ?? "";
  return here.slice(0, here.lastIndexOf("/"));
}

/** One llmguard server: its URL, its token cache and the request logic every call shares. */
export class Client {
  readonly baseUrl: string;
  readonly tokens: TokenCache;
  private readonly options: ClientOptions;

  constructor(options: ClientOptions = {}) {
    this.options = options;
    this.baseUrl = (options.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, "");
    this.tokens = new TokenCache(
      async (solution) =>
        this.fetch("/api/token", {
          method: "POST",
          headers: { ...(await this.headers()), "content-type": "application/json" },
          body: JSON.stringify(solution ? { solution } : {}),
        }),
      options.attest,
    );
  }

  /**
   * POST `body` as JSON to `path` with a token; one transparent retry with a
   * fresh token after a 401. Resolves to a 2xx response or throws an
   * `LLMGuardError`. `attest` shows a CAPTCHA if the server asks for one and the client has no `attest`.
   */
  async post(path: string, body: unknown, signal?: AbortSignal, attest?: Attest): Promise<Response> {
    return this.send(path, JSON.stringify(body), signal, attest);
  }

  /** GET `path` with a token, as `post` does, without spending one of the token's uses (the server counts none there). */
  async get(path: string, signal?: AbortSignal): Promise<Response> {
    return this.send(path, undefined, signal);
  }

  private async send(path: string, body: string | undefined, signal?: AbortSignal, attest?: Attest): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.tokens.acquire(signal, attest, body !== undefined);
      const headers = {
        ...(await this.headers()),
        ...(body !== undefined && { "content-type": "application/json" }),
        authorization: `Bearer ${token}`,
      };
      let response: Response;

      try {
        response = await this.fetch(path, { method: body === undefined ? "GET" : "POST", headers, body: body ?? null, ...(signal && { signal }) });
      } catch (error) {
        throw toLLMGuardError(error, signal);
      }
      if (response.ok) return response;
      if (response.status === 401 && attempt === 0) {
        this.tokens.invalidate(token);
        await response.body?.cancel();
        continue;
      }
      throw await errorFromResponse(response);
    }
  }

  private fetch(path: string, init: RequestInit): Promise<Response> {
    // Looked up per call (not at import): server-side rendering and test stubs both work.
    const fetcher = this.options.fetch ?? globalThis.fetch;
    return fetcher(`${this.baseUrl}${path}`, { ...init, credentials: "omit" });
  }

  private async headers(): Promise<Record<string, string>> {
    const extra = this.options.headers;
    if (typeof extra !== "function") return { ...extra };
    try {
      return await extra();
    } catch (error) {
      throw new LLMGuardError("ConfigurationError", "The headers option threw.", { cause: error });
    }
  }
}

let defaultClient: Client | undefined;

/**
 * Point every SDK call at your llmguard server.
 *
 * @example
 * ```ts
 * configure({ baseUrl: "https://llm-proxy.example.com" })
 * ```
 */
export function configure(options: ClientOptions): void {
  defaultClient = new Client(options);
}

/** The client that `chat`, `streamChat` and sessions use unless given one. */
export function getClient(): Client {
  defaultClient ??= new Client();
  return defaultClient;
}

/**
 * A token for your own calls to llmguard, minted, cached and refreshed like
 * the SDK's own (each call counts as one use when the server sets `max_uses`).
 *
 * @example The official `openai` SDK, pointed at llmguard's OpenAI-compatible routes:
 * ```ts
 * const openai = new OpenAI({ baseURL: "https://proxy.example.com/v1", apiKey: getToken, dangerouslyAllowBrowser: true })
 * ```
 */
export function getToken(options: { signal?: AbortSignal; client?: Client } = {}): Promise<string> {
  return (options.client ?? getClient()).tokens.acquire(options.signal);
}

/**
 * `{ Authorization: "Bearer <token>" }` for libraries that call llmguard
 * themselves, such as the Vercel AI SDK's `useChat`.
 *
 * @example
 * ```ts
 * const { messages, sendMessage } = useChat({
 *   transport: new DefaultChatTransport({ api: "https://proxy.example.com/api/chat", headers: getAuthHeaders }),
 * })
 * ```
 */
export async function getAuthHeaders(options: { signal?: AbortSignal; client?: Client } = {}): Promise<Record<string, string>> {
  return { authorization: `Bearer ${await getToken(options)}` };
}
