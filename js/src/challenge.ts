/** The CAPTCHA a server asks for before it mints a token (`TOKEN_CHALLENGE=turnstile` or `hcaptcha`). */
export interface CaptchaChallenge {
  kind: "turnstile" | "hcaptcha";
  /** The site key to render the provider's widget with. */
  siteKey: string;
  /** Turnstile's `action` (`null` for hCaptcha). */
  action: string | null;
  /** The provider's script (`api.js?render=explicit`), which defines `window.turnstile` or `window.hcaptcha`. */
  script: string;
}

/**
 * Shows the server's CAPTCHA to the person and resolves to the provider's response token
 * (Turnstile's `cf-turnstile-response`, hCaptcha's `h-captcha-response`); stop when `signal` aborts.
 * `<llmguard-chat>` has its own, which renders the CAPTCHA in the panel.
 *
 * @example
 * ```ts
 * configure({ attest: (challenge, signal) => showMyCaptchaDialog(challenge, signal) })
 * ```
 */
export type Attest = (challenge: CaptchaChallenge, signal: AbortSignal) => Promise<string>;

/**
 * The `solution` for the challenge of a `ChallengeRequired`/`ChallengeFailed` answer: a
 * proof-of-work solved off the main thread (the solver is downloaded now, not with the SDK), or a
 * CAPTCHA's response token from `attest`; `null` when there is none (a CAPTCHA and no `attest`).
 */
export async function solve(challenge: Record<string, unknown>, signal: AbortSignal, attest: Attest | undefined): Promise<string | null> {
  const { kind, site_key: siteKey = "", action, script = "" } = challenge as Record<string, string | undefined>;
  if (kind === "pow") {
    // The browser build's solver is the file beside it (sdk-pow.js, built as an entry of its own,
    // see vite.config.ts), imported by a URL the bundler leaves alone.
    const { solvePow } = __LLMGUARD_BROWSER_BUILD__
      ? ((await import(/* @vite-ignore */ "./sdk-" + "pow.js")) as typeof import("./pow.ts"))
      : await import("./pow.ts");
    return solvePow(challenge as never, signal);
  }
  return kind && attest ? attest({ kind: kind as CaptchaChallenge["kind"], siteKey, action: action ?? null, script }, signal) : null;
}
