import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { chromium, type Browser } from "playwright-core";

const repository = fileURLToPath(new URL("../..", import.meta.url));
const python = process.env["LLMGUARD_PYTHON"] ?? `${repository}.venv/bin/python`;

export interface RunningServer {
  url: string;
  logs: () => string;
  stop: () => Promise<void>;
}

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Start `llmguard serve` (the demo by default) and wait until /healthz answers. */
export async function startLLMGuard(
  options: { args?: string[]; env?: Record<string, string> } = {},
): Promise<RunningServer> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    python,
    ["-m", "llmguard", "serve", "--port", String(port), ...(options.args ?? ["--demo"])],
    // The bundled server asks for a proof-of-work by default: tests that are not about challenges turn it off.
    { cwd: repository, env: { PATH: process.env["PATH"] ?? "", TOKEN_CHALLENGE: "off", ...options.env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout?.on("data", (data: Buffer) => (output += data.toString()));
  child.stderr?.on("data", (data: Buffer) => (output += data.toString()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`llmguard exited with ${child.exitCode}:\n${output}`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`llmguard did not start:\n${output}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url,
    logs: () => output,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Debian's Chromium, headless, with nothing that reaches for the network. */
export async function launchChromium(): Promise<Browser> {
  return await chromium.launch({
    executablePath: process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

export interface StaticSite {
  /** Where the site answers: its own origin, which the proxy must allow. */
  origin: string;
  close: () => Promise<void>;
}

/**
 * Serve `folder` (`/` is index.html) from an origin of its own, as any host of a built app would
 * (with `headers` on every answer, such as a CDN's CORS header).
 */
export async function serveStatic(folder: string, headers: Record<string, string> = {}): Promise<StaticSite> {
  const root = normalize(folder).replace(/[\\/]+$/, "");
  const site: Server = createHttpServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url ?? "/", "http://site").pathname);
    const file = normalize(join(root, path === "/" ? "index.html" : path));
    if (!file.startsWith(root + sep)) {
      response.writeHead(404).end();
      return;
    }
    readFile(file).then(
      (body) => response.writeHead(200, { ...headers, "content-type": CONTENT_TYPES[extname(file)] ?? "application/octet-stream" }).end(body),
      () => response.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve) => site.listen(0, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${(site.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => site.close(() => resolve())),
  };
}

/**
 * Build examples/react-vite with its own Vite into `folder` (`npm ci` in the example first, and
 * `npm run build` in js/: the example links the SDK's dist/).
 */
export async function buildReactExample(folder: string): Promise<void> {
  const example = fileURLToPath(new URL("../../examples/react-vite/", import.meta.url));
  const vite = join(example, "node_modules", "vite", "bin", "vite.js");
  try {
    await promisify(execFile)(process.execPath, [vite, "build", "--outDir", folder, "--emptyOutDir", "--logLevel", "warn"], {
      cwd: example,
    });
  } catch (error) {
    throw new Error(`Could not build examples/react-vite (run npm ci there, and npm run build in js/): ${String(error)}`);
  }
}

/** A fresh temporary folder (for a build). */
export async function temporaryFolder(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
