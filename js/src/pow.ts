// The proof-of-work solver, loaded (a chunk of its own) only when a server asks for a challenge:
// ALTCHA v1 (SHA-256), solved by our own SHA-256 search (pow-sha256.ts) in workers. The worker's code
// is inlined and started from a blob: URL, because a page may not start a worker from another
// origin's URL, and the SDK is often imported from the proxy (`import { chat } from "https://proxy/sdk.js"`).
// This module imports nothing from the SDK's core, so that the browser builds (sdk.js, widget.js)
// share one identical chunk file.
import { searchSha256 } from "./pow-sha256.ts";
import SolverWorker from "./pow-sha256.worker.ts?worker&inline";

/** What `GET /api/challenge` answers for `pow`, as far as the solver reads it. */
export interface PowChallenge {
  algorithm: string;
  challenge: string;
  maxnumber: number;
  salt: string;
  signature: string;
}

type Found = { number: number; took: number } | null;

/** Numbers tried between two looks at the clock when the main thread has to do the work. */
const BATCH = 500;
/** How long the main thread works before it lets the page run (a task boundary). */
const SLICE_MS = 12;

/**
 * The ALTCHA payload for `challenge` (what `POST /api/token` takes as `solution`), or `null` when no
 * number up to `maxnumber` solves it. Rejects with `signal.reason` when `signal` aborts (the
 * workers are terminated at once).
 */
export async function solvePow(challenge: PowChallenge, signal: AbortSignal): Promise<string | null> {
  const { algorithm, salt, signature } = challenge;
  // The only algorithm the server uses; any other is not solved here.
  if (algorithm !== "SHA-256") return null;
  const started = Date.now();
  let found: Found;
  try {
    found = await inWorkers(challenge, signal);
  } catch (error) {
    if (signal.aborted) throw error;
    // No worker could start (a Content-Security-Policy without `worker-src blob:`, or no Worker at all):
    // the main thread does the work in small slices, so the page keeps answering, only slower.
    found = await inSlices(challenge, signal);
  }
  return found && btoa(JSON.stringify({ algorithm, challenge: challenge.challenge, number: found.number, salt, signature, took: Date.now() - started }));
}

/** Split the numbers between a few workers; the first solution wins and every worker is terminated. */
function inWorkers({ algorithm, challenge, maxnumber, salt }: PowChallenge, signal: AbortSignal): Promise<Found> {
  // One worker per core (up to 4): the main thread only waits meanwhile.
  const count = Math.max(1, Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 2));
  const step = Math.ceil((maxnumber + 1) / count);
  const workers: Worker[] = [];
  return new Promise<Found>((resolve, reject) => {
    let left = count;
    const finish = (settle: () => void) => {
      for (const worker of workers) worker.terminate();
      signal.removeEventListener("abort", onAbort);
      settle();
    };
    const onAbort = () => finish(() => reject(signal.reason));
    signal.addEventListener("abort", onAbort);
    try {
      for (let index = 0; index < count; index++) {
        const worker = new SolverWorker();
        workers.push(worker);
        worker.onmessage = ({ data }: MessageEvent<Found>) => {
          if (data) finish(() => resolve(data));
          else if (--left === 0) finish(() => resolve(null));
        };
        // A worker that cannot run (blocked by the page's policy) fails here, before any answer.
        worker.onerror = (event) => finish(() => reject(event));
        const start = index * step;
        worker.postMessage({ type: "work", payload: { algorithm, challenge, salt, start, max: Math.min(maxnumber, start + step - 1) } });
      }
    } catch (error) {
      finish(() => reject(error));
    }
  });
}

async function inSlices({ challenge, maxnumber, salt }: PowChallenge, signal: AbortSignal): Promise<Found> {
  const started = Date.now();
  for (let start = 0; start <= maxnumber; ) {
    signal.throwIfAborted();
    for (const slice = performance.now(); start <= maxnumber && performance.now() - slice < SLICE_MS; start += BATCH) {
      const number = searchSha256(salt, challenge, start, Math.min(maxnumber, start + BATCH - 1));
      if (number >= 0) return { number, took: Date.now() - started };
    }
    // A task boundary between slices: timers, input and rendering go first.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  return null;
}
