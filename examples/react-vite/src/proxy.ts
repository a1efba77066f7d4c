import { configure } from "@llmguard/sdk";

/**
 * The llmguard server this app talks to: `?proxy=` in the page's address, else
 * `VITE_LLMGUARD_URL` at build time, else a local `llmguard serve`.
 */
export const proxyUrl: string =
  new URLSearchParams(location.search).get("proxy") ?? import.meta.env.VITE_LLMGUARD_URL ?? "http://localhost:8000";

configure({ baseUrl: proxyUrl });
