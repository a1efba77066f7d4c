// The browser build served at /widget.js: the whole SDK plus <llmguard-chat>, registered on load.
//   <script type="module" src="https://your-proxy/widget.js"></script>
//   <llmguard-chat heading="Ask us"></llmguard-chat>
import { defineChatWidget } from "./chat-element.ts";

export * from "../index.ts";
export * from "./index.ts";

defineChatWidget();
