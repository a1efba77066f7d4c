"""The fake OpenAI-compatible provider behind ``llmguard.testing`` and the offline demo."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens

_WORDS = re.compile(r"\s*\S+\s*")


def demo_reply(messages: Sequence[Mapping[str, Any]]) -> str:
    """The offline demo's answer: friendly, and honest that no model was called."""
    said = ""
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            said = " ".join(message["content"].split())
            break
    if len(said) > 120:
        said = said[:117] + "..."
    echo = f" You said: “{said}”." if said else ""
    return (
        "Hello from llmguard's offline demo!"
        + echo
        + " This reply streams word by word from a fake provider: no model was called and no key"
        " was used. Set OPENAI_API_KEY and start without --demo to talk to a real model,"
        " with the same token, origin and budget guards in front of it."
    )


@dataclass
class FakeReply:
    """What the fake provider does with one request.

    ``text`` is split into word deltas unless ``chunks`` gives them. ``delay``
    is the pause before each delta, ``first_byte_delay`` the pause before the
    response starts. Like a real model, a reply is cut at the request's
    ``max_tokens`` (one delta counts as one token). ``cut_after=N`` ends a stream after N deltas without a
    finish reason or ``[DONE]``; with ``abrupt=True`` the connection is dropped
    instead. ``usage=False`` leaves usage out even when it is asked for.
    ``reasoning_tokens`` are hidden output tokens, spent (and billed) before the
    first visible delta, as reasoning models do.
    """

    text: str | None = None
    chunks: Sequence[str] | None = None
    status: int = 200
    error: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float | None = None
    first_byte_delay: float = 0.0
    cut_after: int | None = None
    abrupt: bool = False
    usage: bool = True
    finish_reason: str = "stop"
    body: bytes | None = None
    reasoning_tokens: int = 0

    @classmethod
    def failure(
        cls,
        status: int,
        message: str = "The fake provider refused this request.",
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        retry_after: float | None = None,
    ) -> FakeReply:
        headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
        error = {"message": message, "type": type, "param": None, "code": code}
        return cls(status=status, error=error, headers=headers)


@dataclass
class RecordedRequest:
    """One request as the fake provider received it, and what it billed for it so far.

    Like a real provider, the fake bills the prompt as soon as it reads it
    (``prompt_tokens``: the messages, and every other field that carries text,
    such as a ``response_format`` schema) and the output it produces
    (``completion_tokens``): a JSON reply is generated whole, whether or not
    anyone waits for it; a stream spends its hidden reasoning tokens first,
    then one token per delta sent, until it is cut off.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    received_at: float = field(default_factory=time.monotonic)
    deltas_sent: int = 0
    finished: bool = False
    disconnected_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def billed_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Abort(Exception):
    """Raised inside the fake to drop a connection mid-stream."""


_ABORT = object()


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes | AsyncIterator[bytes | object]


class FakeProvider:
    """An OpenAI-compatible ``/chat/completions`` and ``/models`` that never leaves the machine."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model: str = "gpt-4.1-mini",
        delay: float = 0.0,
        reply: Callable[[Sequence[Mapping[str, Any]]], str] = demo_reply,
    ) -> None:
        self.api_key = api_key
        self.model = model
        self.delay = delay
        self.reply = reply
        self.requests: list[RecordedRequest] = []
        self._queue: deque[FakeReply] = deque()
        self._lock = threading.Lock()

    def enqueue(self, *replies: FakeReply) -> None:
        """Script the next requests' replies, in order (thread-safe)."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that answers in-process, streaming included."""
        return _FakeTransport(self)

    # -- ASGI ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        record, scripted = self._record(scope["method"], scope["path"], headers, body)

        async with anyio.create_task_group() as tasks:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if record is not None and not record.finished:
                    record.disconnected_at = time.monotonic()
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            response = await self._respond(record, scripted, scope["method"], scope["path"], headers)
            raw_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
            await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
            if isinstance(response.body, bytes):
                await send({"type": "http.response.body", "body": response.body})
            else:
                async for chunk in response.body:
                    if chunk is _ABORT:
                        raise _Abort("dropping the connection, as scripted")
                    assert isinstance(chunk, bytes)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            tasks.cancel_scope.cancel()

    # -- behaviour ----------------------------------------------------------------

    @property
    def billed_tokens(self) -> int:
        """Every token billed so far, over all requests: what the owner would pay for."""
        return sum(request.billed_tokens for request in self.requests)

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[RecordedRequest | None, FakeReply]:
        """Record a chat request and take its scripted reply (nothing to record for other paths)."""
        if method != "POST" or not path.endswith("/chat/completions"):
            return None, FakeReply()
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        record = RecordedRequest(method=method, path=path, headers=headers, json=payload)
        with self._lock:
            self.requests.append(record)
            scripted = self._queue.popleft() if self._queue else FakeReply()
        return record, scripted

    async def _respond(
        self, record: RecordedRequest | None, scripted: FakeReply, method: str, path: str, headers: dict[str, str]
    ) -> _Response:
        if record is None:
            if method == "GET" and path.endswith("/models"):
                # As OpenAI's: the model list needs the key too (llmguard check asks it to test the key).
                listed_for = headers.get("authorization", "").removeprefix("Bearer ").strip()
                if self.api_key is not None and listed_for != self.api_key:
                    message = f"Incorrect API key provided: {_mask(listed_for)}."
                    return _error_response(401, message, "invalid_request_error", "invalid_api_key")
                entry = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
                return _json_response(200, {"object": "list", "data": [entry]})
            return _error_response(404, "Unknown path.", "invalid_request_error", None)
        payload = record.json
        presented = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.api_key is not None and presented != self.api_key:
            message = f"Incorrect API key provided: {_mask(presented)}. You can find your API key in your account."
            record.finished = True
            return _error_response(401, message, "invalid_request_error", "invalid_api_key")
        if scripted.status >= 400 or scripted.body is not None:
            await self._think(record, scripted)
            record.finished = True
            error = dict(scripted.error or {"message": "error", "type": "server_error"})
            if scripted.status == 401:
                error["message"] = f"Incorrect API key provided: {_mask(presented)}."
            body_bytes = scripted.body if scripted.body is not None else json.dumps({"error": error}).encode()
            return _Response(scripted.status, {"content-type": "application/json", **scripted.headers}, body_bytes)
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            record.finished = True
            return _error_response(400, "'messages' is required.", "invalid_request_error", None)

        text = scripted.text if scripted.text is not None else self.reply(payload["messages"])
        chunks, finish_reason, usage = _generate(payload, scripted, text)
        prompt_tokens, completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        reasoning_tokens = completion_tokens - len(chunks)
        # Billed from the moment the model reads the prompt, whoever waits for the answer: a JSON
        # reply is generated whole, a stream token by token (its hidden tokens first) until cut off.
        record.prompt_tokens = prompt_tokens
        record.completion_tokens = reasoning_tokens if payload.get("stream") else completion_tokens
        await self._think(record, scripted)
        model = str(payload.get("model", self.model))
        if payload.get("stream"):
            wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            delay = self.delay if scripted.delay is None else scripted.delay
            shown_usage = usage if wants_usage and scripted.usage else None
            stream = _stream(record, scripted, chunks, model, shown_usage, finish_reason, delay)
            headers_out = {
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                **scripted.headers,
            }
            return _Response(200, headers_out, stream)
        record.finished = True
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(chunks)},
                    "finish_reason": finish_reason,
                }
            ],
        }
        if scripted.usage:
            completion["usage"] = usage
        return _json_response(200, completion, scripted.headers)

    async def _think(self, record: RecordedRequest, scripted: FakeReply) -> None:
        """The pause before the first byte, noting when the caller gave up waiting."""
        if scripted.first_byte_delay:
            try:
                await anyio.sleep(scripted.first_byte_delay)
            except anyio.get_cancelled_exc_class():
                record.disconnected_at = time.monotonic()
                raise


def _generate(payload: dict[str, Any], scripted: FakeReply, text: str) -> tuple[list[str], str, dict[str, Any]]:
    """The reply's chunks, its finish reason and its usage, as a model with this output cap would bill them."""
    chunks = list(scripted.chunks) if scripted.chunks is not None else _WORDS.findall(text)
    finish_reason = scripted.finish_reason
    reasoning_tokens = scripted.reasoning_tokens
    cap = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if isinstance(cap, int) and cap > 0:
        # Like a real model: the output cap counts hidden and visible tokens, and cuts the reply there.
        reasoning_tokens = min(reasoning_tokens, cap)
        if reasoning_tokens + len(chunks) > cap:
            chunks, finish_reason = chunks[: cap - reasoning_tokens], "length"
    prompt_tokens = billable_prompt_tokens(payload)
    completion_tokens = reasoning_tokens + len(chunks)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return chunks, finish_reason, usage


async def _stream(
    record: RecordedRequest,
    scripted: FakeReply,
    chunks: list[str],
    model: str,
    usage: dict[str, int] | None,
    finish_reason: str,
    delay: float,
) -> AsyncIterator[bytes | object]:
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for index, chunk in enumerate(chunks):
            if scripted.cut_after is not None and index >= scripted.cut_after:
                record.finished = True
                if scripted.abrupt:
                    yield _ABORT
                return
            if delay:
                await anyio.sleep(delay)
            yield event([{"index": 0, "delta": {"content": chunk}, "finish_reason": None}])
            record.deltas_sent += 1
            record.completion_tokens += 1
        yield event([{"index": 0, "delta": {}, "finish_reason": finish_reason}])
        if usage is not None:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"
        record.finished = True
    finally:
        if not record.finished and record.disconnected_at is None:
            record.disconnected_at = time.monotonic()


class _FakeTransport(httpx.AsyncBaseTransport):
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        record, scripted = self.provider._record(request.method, request.url.path, headers, body)
        response = await self.provider._respond(record, scripted, request.method, request.url.path, headers)
        if isinstance(response.body, bytes):
            return httpx.Response(response.status, headers=response.headers, content=response.body)
        return httpx.Response(response.status, headers=response.headers, stream=_ByteStream(response.body))


class _ByteStream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes | object]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            if chunk is _ABORT:
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            assert isinstance(chunk, bytes)
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def billable_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """The input tokens the fake bills for a chat payload, counted as a provider counts them.

    The messages' text, and every other field that carries text (a
    ``response_format`` schema, ``stop`` sequences): providers bill those as
    input too.
    """
    messages = payload.get("messages") or []
    texts = [str(message.get("content", "")) for message in messages if isinstance(message, dict)]
    tokens = estimate_prompt_tokens(texts)
    extra = {name: payload[name] for name in ("response_format", "stop", "tools") if name in payload}
    if extra:
        tokens += estimate_text_tokens(json.dumps(extra, ensure_ascii=False, separators=(",", ":")))
    return tokens


def _mask(key: str) -> str:
    # As OpenAI does: enough of the key to recognise it, which is why llmguard never relays it.
    if len(key) <= 12:
        return key
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def _json_response(status: int, data: object, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, {"content-type": "application/json", **(headers or {})}, json.dumps(data).encode())


def _error_response(status: int, message: str, kind: str, code: str | None) -> _Response:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return _json_response(status, {"error": error})
