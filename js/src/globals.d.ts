/** True in the browser build served at /sdk.js (set by vite.config.ts). */
declare const __LLMGUARD_BROWSER_BUILD__: boolean;

/** A worker bundled by Vite into the importing module (`?worker&inline`), started from a blob: URL. */
declare module "*?worker&inline" {
  const WorkerConstructor: new (options?: { name?: string }) => Worker;
  export default WorkerConstructor;
}
