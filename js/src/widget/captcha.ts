// The widget's CAPTCHA, loaded (a chunk of its own) only when a server asks for one: the provider's
// script, once per page, and its widget rendered in the panel until the person has passed it.
// Rendered into a child of <llmguard-chat> (shown through the panel's `captcha` slot), not inside
// the shadow root, where the providers' scripts do not look.
// This module imports nothing from the SDK's core (see pow.ts).

/** What `window.turnstile` and `window.hcaptcha` offer for explicit rendering. */
interface Provider {
  render(element: HTMLElement, options: Record<string, unknown>): string | number | undefined;
  remove?(id: string | number | undefined): void;
}

const scripts = new Map<string, Promise<unknown>>();

function load(document: Document, src: string): Promise<unknown> {
  let loading = scripts.get(src);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.async = true;
      script.onload = resolve;
      script.onerror = () => {
        scripts.delete(src);
        script.remove();
        reject(new Error(`Could not load ${src}`));
      };
      document.head.append(script);
    });
    scripts.set(src, loading);
  }
  return loading;
}

/** Show the CAPTCHA of `challenge` in `host` and resolve to its response token. */
export async function renderCaptcha(
  host: HTMLElement,
  { kind, siteKey, action, script }: { kind: string; siteKey: string; action: string | null; script: string },
  signal: AbortSignal,
): Promise<string> {
  const document = host.ownerDocument;
  const window = document.defaultView as unknown as Record<string, Provider | undefined>;
  if (!window[kind]) await load(document, script);
  const provider = window[kind];
  if (!provider) throw new Error(`${script} did not define window.${kind}`);
  signal.throwIfAborted();
  const box = document.createElement("div");
  box.slot = "captcha";
  host.append(box);
  let id: string | number | undefined;
  try {
    return await new Promise<string>((resolve, reject) => {
      signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      id = provider.render(box, {
        sitekey: siteKey,
        ...(action && { action }),
        callback: resolve,
        "error-callback": () => reject(new Error(`The ${kind} check failed.`)),
      });
    });
  } finally {
    try {
      provider.remove?.(id);
    } catch {
      // Already gone with its element.
    }
    box.remove();
  }
}
