/**
 * The widget's styles, inside its shadow root: the page's CSS cannot break it,
 * and it cannot break the page. Theme it from outside with these custom
 * properties (they cross the shadow boundary) on `llmguard-chat`:
 *
 * | property | what |
 * | --- | --- |
 * | `--llmguard-font` | font family and size |
 * | `--llmguard-height` | the panel's height (default 32rem) |
 * | `--llmguard-radius` | corner radius |
 * | `--llmguard-accent`, `--llmguard-accent-text` | buttons, focus rings, the user's bubbles |
 * | `--llmguard-background`, `--llmguard-text`, `--llmguard-muted` | panel colours |
 * | `--llmguard-assistant-background`, `--llmguard-border` | the assistant's bubbles, lines |
 * | `--llmguard-error` | error text and border |
 *
 * and `::part(panel | header | title | log | message | user | assistant | error | note | input | send | stop | usage)`
 * (`usage`: the `show-usage` line, in `--llmguard-muted`).
 */
const DARK = `
  color-scheme: dark;
  --_accent: var(--llmguard-accent, #60a5fa);
  --_accent-text: var(--llmguard-accent-text, #0b1220);
  --_background: var(--llmguard-background, #0f172a);
  --_text: var(--llmguard-text, #e5e7eb);
  --_muted: var(--llmguard-muted, #94a3b8);
  --_assistant: var(--llmguard-assistant-background, #1e293b);
  --_border: var(--llmguard-border, #334155);
  --_error: var(--llmguard-error, #f87171);
`;

export const STYLES = `
:host {
  display: block;
  color-scheme: light;
  --_accent: var(--llmguard-accent, #2563eb);
  --_accent-text: var(--llmguard-accent-text, #ffffff);
  --_background: var(--llmguard-background, #ffffff);
  --_text: var(--llmguard-text, #111827);
  --_muted: var(--llmguard-muted, #6b7280);
  --_assistant: var(--llmguard-assistant-background, #f3f4f6);
  --_border: var(--llmguard-border, #e5e7eb);
  --_error: var(--llmguard-error, #b91c1c);
  --_radius: var(--llmguard-radius, 0.75rem);
  font: var(--llmguard-font, 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif);
}
:host([theme="dark"]) {${DARK}}
@media (prefers-color-scheme: dark) {
  :host([theme="auto"]) {${DARK}}
}
* { box-sizing: border-box; }
.panel {
  position: relative;
  display: flex;
  flex-direction: column;
  height: var(--llmguard-height, 32rem);
  min-width: 0;
  background: var(--_background);
  color: var(--_text);
  border: 1px solid var(--_border);
  border-radius: var(--_radius);
  overflow: hidden;
}
header { display: flex; align-items: center; gap: 0.5rem; padding: 0.6rem 0.9rem; border-bottom: 1px solid var(--_border); }
h2 { margin: 0; font-size: 1rem; font-weight: 600; flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.log { flex: 1; overflow-y: auto; padding: 0.9rem; display: flex; flex-direction: column; gap: 0.75rem; overscroll-behavior: contain; }
.log:focus-visible { outline: 2px solid var(--_accent); outline-offset: -2px; }
.empty { margin: auto; color: var(--_muted); text-align: center; }
.message { max-width: 88%; padding: 0.55rem 0.8rem; border-radius: var(--_radius); overflow-wrap: anywhere; min-width: 0; }
.user { align-self: flex-end; background: var(--_accent); color: var(--_accent-text); white-space: pre-wrap; }
.assistant { align-self: flex-start; background: var(--_assistant); }
.assistant > :first-child { margin-top: 0; }
.assistant > :last-child { margin-bottom: 0; }
.assistant p, .assistant ul, .assistant ol, .assistant blockquote { margin: 0.4rem 0; }
.assistant ul, .assistant ol { padding-left: 1.3rem; }
.assistant h1, .assistant h2, .assistant h3, .assistant h4, .assistant h5, .assistant h6 { font-size: 1em; margin: 0.6rem 0 0.3rem; }
.assistant a { color: var(--_accent); }
.assistant blockquote { border-left: 3px solid var(--_border); padding-left: 0.7rem; color: var(--_muted); }
.assistant code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.assistant :not(pre) > code { background: color-mix(in srgb, var(--_text) 8%, transparent); padding: 0.05rem 0.3rem; border-radius: 0.3rem; }
.code-block { margin: 0.5rem 0; border: 1px solid var(--_border); border-radius: 0.5rem; overflow: hidden; background: var(--_background); }
.code-bar { display: flex; align-items: center; justify-content: space-between; padding: 0.2rem 0.3rem 0.2rem 0.6rem; border-bottom: 1px solid var(--_border); color: var(--_muted); font-size: 0.8em; }
.code-block pre { margin: 0; padding: 0.6rem; overflow-x: auto; }
.table { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4rem 0; }
th, td { border: 1px solid var(--_border); padding: 0.25rem 0.5rem; }
.typing::after { content: "▍"; animation: blink 1s steps(1) infinite; color: var(--_muted); }
@keyframes blink { 50% { opacity: 0; } }
@media (prefers-reduced-motion: reduce) { .typing::after { animation: none; } }
.jump {
  position: absolute; left: 50%; transform: translateX(-50%); bottom: 5.2rem;
  background: var(--_background); color: var(--_text); border: 1px solid var(--_border);
  border-radius: 999px; padding: 0.3rem 0.8rem; box-shadow: 0 2px 8px rgb(0 0 0 / 15%);
}
.error { display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem; margin: 0 0.9rem 0.6rem; padding: 0.5rem 0.7rem; border: 1px solid var(--_error); color: var(--_error); border-radius: 0.5rem; font-size: 0.92em; }
.error[hidden] { display: none; }
.error-text { flex: 1 1 10rem; min-width: 0; }
.countdown { font-variant-numeric: tabular-nums; }
.note { margin: 0 0.9rem 0.6rem; color: var(--_muted); font-size: 0.92em; }
.usage { margin: -0.5rem 0.9rem 0.6rem; color: var(--_muted); font-size: 0.85em; font-variant-numeric: tabular-nums; }
form { display: flex; gap: 0.5rem; align-items: flex-end; padding: 0.6rem 0.9rem 0.9rem; border-top: 1px solid var(--_border); }
textarea {
  flex: 1; min-width: 0; resize: none; font: inherit; color: inherit; background: transparent;
  border: 1px solid var(--_border); border-radius: 0.5rem; padding: 0.5rem 0.6rem; max-height: 9rem;
}
button {
  font: inherit; border: 0; border-radius: 0.5rem; padding: 0.5rem 0.9rem; cursor: pointer;
  background: var(--_accent); color: var(--_accent-text);
}
button.secondary, .copy { background: transparent; color: var(--_text); border: 1px solid var(--_border); }
.copy { padding: 0.1rem 0.5rem; font-size: 0.9em; }
button:disabled { opacity: 0.5; cursor: not-allowed; }
button[hidden] { display: none; }
button:focus-visible, textarea:focus-visible, a:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 480px) {
  .message { max-width: 94%; }
  header, form { padding-left: 0.6rem; padding-right: 0.6rem; }
  .log { padding: 0.6rem; }
}
`;
