// The proof-of-work's worker (bundled into sdk-pow.js and started from a blob: URL, see pow.ts).
// altcha-lib's worker protocol: {type: "work", payload: {algorithm, challenge, salt, start, max}} is answered
// with {number, took}, or null when no number from start to max solves it. The search is
// synchronous: the worker is stopped by terminate(), not by a message.
import { searchSha256 } from "./pow-sha256.ts";

interface Work {
  type: string;
  payload: { algorithm: string; challenge: string; salt: string; start: number; max: number };
}

onmessage = ({ data: { type, payload } }: MessageEvent<Work>) => {
  if (type !== "work") return;
  const started = Date.now();
  const number = searchSha256(payload.salt, payload.challenge, payload.start, payload.max);
  postMessage(number < 0 ? null : { number, took: Date.now() - started });
};
