import { isRateLimitError, type LLMGuardError } from "@llmguard/sdk";
import { useChat } from "@llmguard/sdk/react";
import { type KeyboardEvent, StrictMode } from "react";
import { createRoot } from "react-dom/client";

import "./proxy.ts"; // configure({ baseUrl }) for every SDK call

// The same chat as the widget, with markup of our own: useChat keeps the history, the input and the status.
function CustomChat() {
  const { messages, input, setInput, send, status, error, stop } = useChat();
  const busy = status === "submitted" || status === "streaming";

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      if (!busy) void send();
    }
  }

  return (
    <main>
      <h1>A chat of our own with useChat</h1>
      <ol className="messages" aria-label="Conversation" aria-busy={busy}>
        {messages.map((message) => (
          <li key={message.id} className={message.role}>
            {message.content}
          </li>
        ))}
      </ol>
      {error && (
        <p className="error" role="alert">
          {describe(error)}
        </p>
      )}
      <form
        onSubmit={(event) => {
          event.preventDefault();
          void send();
        }}
      >
        <label htmlFor="message">Message</label>
        <textarea
          id="message"
          rows={2}
          value={input}
          placeholder="Ask anything…"
          onChange={(event) => setInput(event.target.value)}
          onKeyDown={onKeyDown}
        />
        <button type="submit" disabled={busy || !input.trim()}>
          Send
        </button>
        <button type="button" onClick={stop} disabled={!busy}>
          Stop
        </button>
      </form>
    </main>
  );
}

function describe(error: LLMGuardError): string {
  // The server's message already says when to try again; retryAfter is the same wait, in seconds.
  if (isRateLimitError(error) && error.retryAfter) return `Too many requests: wait ${error.retryAfter} s. (${error.message})`;
  return error.message;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <CustomChat />
  </StrictMode>,
);
