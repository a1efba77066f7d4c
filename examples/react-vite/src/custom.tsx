import { useChat } from "@llmguard/sdk/react";
import { type KeyboardEvent, StrictMode } from "react";
import { createRoot } from "react-dom/client";

import "./proxy.ts"; // configure({ baseUrl }) for every SDK call

// The same chat as the widget, with markup of our own: useChat keeps the history, the input, the status
// and the rate-limit countdown (send() waits for it); "persist" keeps the conversation across reloads.
function CustomChat() {
  const { messages, input, setInput, send, isBusy: busy, error, retryIn, stop } = useChat({ persist: "custom" });

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
          {retryIn > 0 ? `Too many requests: try again in ${retryIn} s.` : error.message}
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
        <button type="submit" disabled={busy || retryIn > 0 || !input.trim()}>
          Send
        </button>
        <button type="button" onClick={stop} disabled={!busy}>
          Stop
        </button>
      </form>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <CustomChat />
  </StrictMode>,
);
