import { useChat } from "@ai-sdk/react";
import { getAuthHeaders } from "@llmguard/sdk";
import { DefaultChatTransport } from "ai";
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

import { proxyUrl } from "./proxy.ts"; // also configure({ baseUrl }), which getAuthHeaders uses

// The Vercel AI SDK's useChat on llmguard's /api/chat, which speaks the AI SDK's UI message stream.
// getAuthHeaders gives { Authorization: "Bearer <token>" } with a fresh short-lived token each request.
const transport = new DefaultChatTransport({ api: `${proxyUrl}/api/chat`, headers: getAuthHeaders });

function AISDKChat() {
  const { messages, sendMessage, status, error, stop } = useChat({ transport });
  const [input, setInput] = useState("");
  const busy = status === "submitted" || status === "streaming";

  return (
    <main>
      <h1>The Vercel AI SDK's useChat, through llmguard</h1>
      <ol className="messages" aria-label="Conversation" aria-busy={busy}>
        {messages.map((message) => (
          <li key={message.id} className={message.role}>
            {message.parts.map((part, index) => (part.type === "text" ? <span key={index}>{part.text}</span> : null))}
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
          const text = input.trim();
          if (!text || busy) return;
          setInput("");
          void sendMessage({ text });
        }}
      >
        <label htmlFor="message">Message</label>
        <input
          id="message"
          autoComplete="off"
          value={input}
          placeholder="Ask anything…"
          onChange={(event) => setInput(event.target.value)}
        />
        <button type="submit" disabled={busy || !input.trim()}>
          Send
        </button>
        <button type="button" onClick={() => void stop()} disabled={!busy}>
          Stop
        </button>
      </form>
    </main>
  );
}

function describe(error: Error): string {
  // A refused request (429, 401…) reaches useChat as the response body: llmguard's JSON error.
  try {
    const body: unknown = JSON.parse(error.message);
    if (body && typeof body === "object" && "message" in body && typeof body.message === "string") return body.message;
  } catch {
    // not JSON: an error chunk's text, or a network failure
  }
  return error.message;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <AISDKChat />
  </StrictMode>,
);
