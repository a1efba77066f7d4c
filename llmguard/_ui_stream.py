"""The AI SDK UI message stream (v1), as Server-Sent Events."""

from __future__ import annotations

import json
import secrets

HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"
TEXT_ID = "t1"

# OpenAI's finish reasons, in the AI SDK's words.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
}


def event(chunk: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def start() -> bytes:
    message_id = "msg_" + secrets.token_hex(12)
    return event({"type": "start", "messageId": message_id}) + event({"type": "start-step"})


TEXT_START = event({"type": "text-start", "id": TEXT_ID})
TEXT_END = event({"type": "text-end", "id": TEXT_ID})
FINISH_STEP = event({"type": "finish-step"})


def text_delta(delta: str) -> bytes:
    return event({"type": "text-delta", "id": TEXT_ID, "delta": delta})


def finish(finish_reason: str | None, usage: dict[str, int]) -> bytes:
    # The AI SDK validates this against its enum, which has no "unknown": an unnamed end is "other".
    reason = FINISH_REASONS.get(finish_reason or "", "other")
    return event({"type": "finish", "finishReason": reason, "messageMetadata": {"usage": usage}}) + DONE


def error(code: str, message: str) -> bytes:
    return event({"type": "error", "errorText": message, "code": code}) + DONE
