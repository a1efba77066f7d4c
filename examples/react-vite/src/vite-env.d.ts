/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The llmguard server, when it is not http://localhost:8000 (see src/proxy.ts). */
  readonly VITE_LLMGUARD_URL?: string;
}
