import { getToken } from "@llmguard/sdk";
import OpenAI from "openai";
import type { ChatCompletionMessageParam } from "openai/resources/chat/completions";

import { proxyUrl } from "./proxy.ts"; // also configure({ baseUrl }), which getToken uses

// The official SDK, pointed at llmguard's OpenAI-compatible route. The API key is the short-lived
// token from llmguard (minted, cached and refreshed by getToken), never a provider key: the SDK
// calls getToken before each request.
const openai = new OpenAI({ baseURL: `${proxyUrl}/v1`, apiKey: getToken, dangerouslyAllowBrowser: true });

const messages: ChatCompletionMessageParam[] = [];

const list = element<HTMLOListElement>("messages");
const errorLine = element<HTMLParagraphElement>("error");
const form = element<HTMLFormElement>("form");
const input = element<HTMLInputElement>("message");
const send = element<HTMLButtonElement>("send");

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = input.value.trim();
  if (!content || send.disabled) return;
  input.value = "";
  void ask(content);
});

async function ask(content: string): Promise<void> {
  messages.push({ role: "user", content });
  show("user", content);
  const bubble = show("assistant", "");
  errorLine.hidden = true;
  send.disabled = true;
  list.setAttribute("aria-busy", "true");
  let reply = "";
  try {
    const stream = await openai.chat.completions.create({ model: "gpt-4.1-mini", messages, stream: true });
    for await (const chunk of stream) {
      reply += chunk.choices[0]?.delta.content ?? ""; // the last chunk (usage) has no choices
      bubble.textContent = reply;
    }
    messages.push({ role: "assistant", content: reply });
  } catch (error) {
    messages.pop(); // not answered: leave it out of the history
    if (!reply) bubble.remove();
    errorLine.textContent = describe(error);
    errorLine.hidden = false;
  } finally {
    send.disabled = false;
    list.setAttribute("aria-busy", "false");
  }
}

function describe(error: unknown): string {
  // llmguard answers errors in OpenAI's shape, so the SDK raises its own typed errors.
  if (error instanceof OpenAI.RateLimitError) {
    const seconds = error.headers?.get("retry-after");
    return seconds ? `Too many requests: wait ${seconds} s. (${error.message})` : error.message;
  }
  if (error instanceof OpenAI.AuthenticationError) return `Not allowed: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}

function show(role: "user" | "assistant", text: string): HTMLLIElement {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  list.append(item);
  return item;
}

function element<Type extends HTMLElement>(id: string): Type {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from the page`);
  return found as Type;
}
