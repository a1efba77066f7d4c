/** True in the browser build served at /sdk.js (set by vite.config.ts). */
declare const __LLMGUARD_BROWSER_BUILD__: boolean;
