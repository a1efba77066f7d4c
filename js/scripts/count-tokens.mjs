// The exact o200k_base token count (gpt-4o, gpt-4.1, o-series, gpt-5) of texts, for the Python
// tests of llmguard's estimate (tests/o200k_counter.py starts this once per test session).
// Reads one JSON string per line on stdin and answers each with one line on stdout: the count,
// or {"error": "..."}. Special-token text such as <|endoftext|> counts as ordinary text, as the
// OpenAI API treats it in a message.
import { createInterface } from "node:readline";
import { countTokens } from "gpt-tokenizer/encoding/o200k_base";

const ordinaryText = { disallowedSpecial: new Set() };

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  let answer;
  try {
    const text = JSON.parse(line);
    if (typeof text !== "string") throw new TypeError(`expected a JSON string, got ${typeof text}`);
    answer = countTokens(text, ordinaryText);
  } catch (error) {
    answer = { error: String(error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
