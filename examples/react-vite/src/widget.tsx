import { ChatWidget } from "@llmguard/sdk/react";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import "./proxy.ts"; // configure({ baseUrl }) for every SDK call

function App() {
  return <ChatWidget />; // done
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
