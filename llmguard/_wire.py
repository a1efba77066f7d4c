"""What each route's clients receive: where the provider's reply becomes theirs.

- ``/api/chat`` speaks the AI SDK UI message stream (v1) as Server-Sent Events,
  and llmguard's own JSON reply (:class:`UIMessageWire`): one provider delta
  becomes one ``text-delta``, forwarded the moment it arrives.
- ``/v1/chat/completions`` passes the provider's own ``chat.completion``
  objects and ``chat.completion.chunk`` events through (:class:`OpenAIWire`).

A wire only formats; what is sent when, and what it costs, is the chat
service's (``_chat_service``). When the request was degraded (``_degrade``),
``/api/chat`` says so in its reply (``"degraded"``) and in the stream's
``start`` and ``finish`` metadata; ``/v1`` says it in the
``x-llmguard-degraded`` header only (the service sends it), and its reply's
``model`` names the model used.
"""

from __future__ import annotations

import json
import secrets
from typing import Protocol

from llmguard._degrade import Degradation
from llmguard._errors import LLMGuardError
from llmguard._state import Usage
from llmguard._upstream import Completion, StreamEvent

UI_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
    (b"x-accel-buffering", b"no"),
]
OPENAI_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
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


class Wire(Protocol):
    """How one route writes replies for its clients (one instance per request)."""

    stream_headers: list[tuple[bytes, bytes]]

    def reply(self, body: bytes, completion: Completion, usage: Usage, degraded: Degradation | None) -> bytes:
        """The JSON body of a non-streamed reply (``body`` is the provider's)."""
        ...

    def start(self, degraded: Degradation | None) -> bytes:
        """What opens a stream."""
        ...

    def event(self, event: StreamEvent) -> bytes:
        """What one provider event becomes (maybe nothing)."""
        ...

    def finish(self, finish_reason: str | None, usage: Usage, degraded: Degradation | None) -> bytes:
        """What closes a complete stream."""
        ...

    def error(self, error: LLMGuardError) -> bytes:
        """What ends a stream that failed after it started."""
        ...


class UIMessageWire:
    """``/api/chat``: the AI SDK UI message stream, and llmguard's own JSON reply."""

    stream_headers = UI_STREAM_HEADERS

    def __init__(self) -> None:
        self.text_started = False

    def reply(self, body: bytes, completion: Completion, usage: Usage, degraded: Degradation | None) -> bytes:
        reply: dict[str, object] = {
            "role": "assistant",
            "content": completion.content,
            "finish_reason": completion.finish_reason,
            "usage": usage.as_dict(),
        }
        if degraded is not None:
            reply["degraded"] = degraded.as_dict()
        return _dumps(reply)

    def start(self, degraded: Degradation | None) -> bytes:
        start: dict[str, object] = {"type": "start", "messageId": "msg_" + secrets.token_hex(12)}
        if degraded is not None:
            start["messageMetadata"] = {"degraded": degraded.as_dict()}
        return sse(start) + sse({"type": "start-step"})

    def event(self, event: StreamEvent) -> bytes:
        if not event.text:
            return b""
        prefix = b"" if self.text_started else _TEXT_START
        self.text_started = True
        return prefix + sse({"type": "text-delta", "id": TEXT_ID, "delta": event.text})

    def finish(self, finish_reason: str | None, usage: Usage, degraded: Degradation | None) -> bytes:
        # The AI SDK validates this against its enum, which has no "unknown": an unnamed end is "other".
        reason = FINISH_REASONS.get(finish_reason or "", "other")
        metadata: dict[str, object] = {"usage": usage.as_dict()}
        if degraded is not None:
            metadata["degraded"] = degraded.as_dict()
        finish = sse({"type": "finish", "finishReason": reason, "messageMetadata": metadata})
        return (_TEXT_END if self.text_started else b"") + _FINISH_STEP + finish + DONE

    def error(self, error: LLMGuardError) -> bytes:
        return sse({"type": "error", "errorText": error.message, "code": error.code}) + DONE


class OpenAIWire:
    """The provider's own objects and events, passed through (its usage chunk only when asked for)."""

    stream_headers = OPENAI_STREAM_HEADERS

    def __init__(self, *, include_usage: bool) -> None:
        # The provider is always asked for usage (budgets settle on it); the client sees it if it asked.
        self.include_usage = include_usage

    def reply(self, body: bytes, completion: Completion, usage: Usage, degraded: Degradation | None) -> bytes:
        return body

    def start(self, degraded: Degradation | None) -> bytes:
        return b""

    def event(self, event: StreamEvent) -> bytes:
        chunk = event.chunk
        if not self.include_usage and not chunk.get("choices") and chunk.get("usage"):
            return b""
        return b"data: " + event.data + b"\n\n"

    def finish(self, finish_reason: str | None, usage: Usage, degraded: Degradation | None) -> bytes:
        return DONE

    def error(self, error: LLMGuardError) -> bytes:
        # What OpenAI sends when a stream fails: the SDKs raise it as an APIError.
        body = {"error": {"message": error.message, "type": error.openai_type, "code": error.code}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"


def sse(chunk: dict[str, object]) -> bytes:
    """One Server-Sent Event carrying ``chunk`` as compact JSON."""
    return b"data: " + _dumps(chunk) + b"\n\n"


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


_TEXT_START = sse({"type": "text-start", "id": TEXT_ID})
_TEXT_END = sse({"type": "text-end", "id": TEXT_ID})
_FINISH_STEP = sse({"type": "finish-step"})
