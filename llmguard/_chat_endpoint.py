"""ChatEndpoint: validates a chat request, calls the provider, answers JSON or a stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from llmguard import _ui_stream as ui
from llmguard._chat_request import ChatRequest, parse_chat_request, parse_json, read_body
from llmguard._errors import InvalidRequest, LLMGuardError, MethodNotAllowed, UpstreamError, send_error
from llmguard._settings import DEFAULT_BASE_URL, DEFAULT_MODEL
from llmguard._state import RequestState, Usage, request_state
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard._upstream import Upstream, token_limit_param

logger = logging.getLogger("llmguard.chat")


class ChatEndpoint:
    """``POST`` a chat, get the assistant's reply as JSON or as an AI SDK UI message stream.

    ``transport`` carries the provider calls: ``"auto"`` uses aiohttp's
    connection pool through httpx-aiohttp when it is installed (``pip install
    'llmguard[speed]'``: much faster under concurrency), else httpx's own; an
    httpx transport object replaces both (tests use ``FakeProvider.transport()``).

    The server decides what the provider sees: its model (or one of
    ``models`` the client names), its output cap, its system prompt when the
    client sends none, ``n = 1``. The caller's headers
    (``Authorization`` included) are never forwarded. The usage the provider
    reports (or an estimate when it reports none, or the client went away) is
    left in ``scope["llmguard"].usage`` for the layers around this endpoint.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        system_prompt: str = "",
        allow_client_system: bool = True,
        max_tokens: int = 2000,
        max_tokens_param: str = "auto",
        max_body_bytes: int = 1_048_576,
        request_timeout: float = 120,
        retries: int = 2,
        models: Sequence[str] = (),
        transport: httpx.AsyncBaseTransport | Literal["auto", "httpx", "aiohttp"] = "auto",
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty: the provider key is required")
        for name, value in (("max_tokens", max_tokens), ("max_body_bytes", max_body_bytes)):
            if value < 1:
                raise ValueError(f"{name} has value {value!r}: must be at least 1")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout has value {request_timeout!r}: must be positive")
        if max_tokens_param not in ("auto", "max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"max_tokens_param has value {max_tokens_param!r}: "
                "expected 'auto', 'max_tokens' or 'max_completion_tokens'"
            )
        self.model = model
        self._models = tuple(dict.fromkeys((model, *models)))
        self.system_prompt = system_prompt
        self.allow_client_system = allow_client_system
        self.max_tokens = max_tokens
        self.max_tokens_param = token_limit_param(base_url, max_tokens_param)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.upstream = Upstream(
            base_url=base_url,
            api_key=api_key,
            retries=retries,
            read_timeout=request_timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the pooled provider connections (the bundled app's lifespan does this)."""
        await self.upstream.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"allow": "POST"})
            body = await read_body(scope, receive, max_bytes=self.max_body_bytes)
            request = parse_chat_request(parse_json(body), server_model=self.model, models=self.models)
            messages = self.provider_messages(request)
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        params = {} if request.temperature is None else {"temperature": request.temperature}
        await self.complete(
            scope,
            receive,
            send,
            model=request.model or self.model,
            messages=messages,
            max_tokens=request.max_tokens,
            params=params,
            stream=request.stream,
            wire=UIMessageWire(),
        )

    @property
    def models(self) -> tuple[str, ...]:
        """The models clients may ask for: the server's first."""
        return self._models

    def provider_messages(self, request: ChatRequest) -> list[dict[str, str]]:
        if request.system is not None and not self.allow_client_system:
            raise InvalidRequest("This server sets the system prompt; leave 'system' out.", param="system")
        system = request.system if request.system is not None else self.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        return messages

    async def complete(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int | None,
        params: dict[str, Any],
        stream: bool,
        wire: Wire,
    ) -> None:
        """Reserve the budget, call the provider and answer in ``wire``'s format (every route does this)."""
        state = request_state(scope)
        state.model = model
        prompt_estimate = estimate_prompt_tokens(message["content"] for message in messages)
        cap = min(max_tokens or self.max_tokens, self.max_tokens)
        if state.budget is not None:
            try:
                cap = await state.budget.reserve(model=model, prompt_tokens=prompt_estimate, max_output_tokens=cap)
            except LLMGuardError as error:
                await send_error(scope, send, error)
                return
        payload: dict[str, Any] = {**params, "model": model, "messages": messages, self.max_tokens_param: cap}
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
            if stream:
                await self._stream_reply(scope, send, body, state, prompt_estimate, wire)
            else:
                await self._json_reply(scope, send, body, state, prompt_estimate, wire)
            tasks.cancel_scope.cancel()

    async def _json_reply(
        self, scope: Scope, send: Send, payload: bytes, state: RequestState, prompt_estimate: int, wire: Wire
    ) -> None:
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload) as response:
                    # The provider accepted the prompt: it is charged even if the client leaves now.
                    state.usage = Usage(prompt_estimate, 0, estimated=True)
                    body = await response.aread()
            completion = parse_completion(body)
        except (TimeoutError, httpx.HTTPError, LLMGuardError) as exc:
            await send_error(scope, send, _failure(exc))
            return
        usage = completion.usage or Usage(prompt_estimate, estimate_text_tokens(completion.content), estimated=True)
        state.usage = usage
        reply = wire.reply(body, completion, usage)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(reply)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    async def _stream_reply(
        self, scope: Scope, send: Send, payload: bytes, state: RequestState, prompt_estimate: int, wire: Wire
    ) -> None:
        started = False
        progress = _Progress()
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        raise UpstreamError("The AI provider did not answer with a stream.")
                    await send({"type": "http.response.start", "status": 200, "headers": wire.stream_headers})
                    started = True
                    await _send_chunk(send, wire.start())
                    await self._relay(response, send, wire, progress)
            usage = progress.usage or _estimate(prompt_estimate, progress.streamed)
            await _send_chunk(send, wire.finish(progress.finish_reason, usage))
            await send({"type": "http.response.body", "body": b""})
            return
        except (TimeoutError, httpx.HTTPError, LLMGuardError) as exc:
            error = _failure(exc)
        finally:
            # Runs on client disconnect too: what was streamed is what gets charged.
            if started:
                state.usage = progress.usage or _estimate(prompt_estimate, progress.streamed)
        if not started:
            await send_error(scope, send, error)
            return
        state.error_code = error.code
        logger.warning("stream ended with %s: %s", error.code, error.message)
        await _send_chunk(send, wire.error(error))
        await send({"type": "http.response.body", "body": b""})

    async def _relay(self, response: httpx.Response, send: Send, wire: Wire, progress: _Progress) -> None:
        """Forward each provider event in the route's format the moment it arrives."""
        async for data in _sse_data(response):
            if data == b"[DONE]":
                return
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                raise UpstreamError("The AI provider sent a malformed stream.") from None
            if not isinstance(chunk, dict):
                raise UpstreamError("The AI provider sent a malformed stream.")
            if "error" in chunk:
                raise UpstreamError("The AI provider failed mid-reply.")
            content = ""
            choices = chunk.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                choice = choices[0]
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    content = text
                    progress.streamed.append(text)
                if isinstance(choice.get("finish_reason"), str):
                    progress.finish_reason = choice["finish_reason"]
            progress.usage = usage_from(chunk.get("usage")) or progress.usage
            out = wire.event(data, chunk, content)
            if out:
                await _send_chunk(send, out)
        if progress.finish_reason is None:
            raise UpstreamError("The AI provider's stream ended before the reply was complete.")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Served on its own (uvicorn llmguard...:endpoint), the endpoint owns its lifespan.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _send_chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    """The ``data`` of each Server-Sent Event, as bytes (multi-line data joined, comments skipped).

    Read from the raw bytes, not through text lines: on a busy stream this loop is the
    proxy's per-event cost, and the OpenAI route forwards the bytes as they came.
    """
    pending = b""
    lines: list[bytes] = []
    async for block in response.aiter_bytes():
        pending += block
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if lines:
                    yield b"\n".join(lines)
                    lines = []
            elif line.startswith(b"data:"):
                lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if pending.startswith(b"data:"):
        lines.append(pending[6:] if pending.startswith(b"data: ") else pending[5:])
    if lines:
        yield b"\n".join(lines)


@dataclass(frozen=True, slots=True)
class Completion:
    """What a non-streamed provider reply says."""

    content: str
    finish_reason: str | None
    usage: Usage | None


def parse_completion(body: bytes) -> Completion:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (ValueError, RecursionError, LookupError, TypeError, AttributeError):
        raise UpstreamError("The AI provider sent a malformed reply.") from None
    if not isinstance(content, str):
        raise UpstreamError("The AI provider sent a malformed reply.")
    finish = finish_reason if isinstance(finish_reason, str) else None
    return Completion(content, finish, usage_from(data.get("usage")))


def usage_from(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return None
    return Usage(prompt, completion)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Progress:
    """A stream so far: what was relayed, how it ended, what it cost."""

    streamed: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


class Wire(Protocol):
    """How one route writes replies for its clients (one instance per request)."""

    stream_headers: list[tuple[bytes, bytes]]

    def reply(self, body: bytes, completion: Completion, usage: Usage) -> bytes:
        """The JSON body of a non-streamed reply (``body`` is the provider's)."""
        ...

    def start(self) -> bytes:
        """What opens a stream."""
        ...

    def event(self, data: bytes, chunk: dict[str, Any], content: str) -> bytes:
        """What one provider event becomes (``content``: its text delta, maybe empty)."""
        ...

    def finish(self, finish_reason: str | None, usage: Usage) -> bytes:
        """What closes a complete stream."""
        ...

    def error(self, error: LLMGuardError) -> bytes:
        """What ends a stream that failed after it started."""
        ...


class UIMessageWire:
    """``/api/chat``: the AI SDK UI message stream, and llmguard's own JSON reply."""

    stream_headers = ui.HEADERS

    def __init__(self) -> None:
        self.text_started = False

    def reply(self, body: bytes, completion: Completion, usage: Usage) -> bytes:
        reply = {
            "role": "assistant",
            "content": completion.content,
            "finish_reason": completion.finish_reason,
            "usage": usage.as_dict(),
        }
        return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode()

    def start(self) -> bytes:
        return ui.start()

    def event(self, data: bytes, chunk: dict[str, Any], content: str) -> bytes:
        if not content:
            return b""
        prefix = b"" if self.text_started else ui.TEXT_START
        self.text_started = True
        return prefix + ui.text_delta(content)

    def finish(self, finish_reason: str | None, usage: Usage) -> bytes:
        text_end = ui.TEXT_END if self.text_started else b""
        return text_end + ui.FINISH_STEP + ui.finish(finish_reason, usage.as_dict())

    def error(self, error: LLMGuardError) -> bytes:
        return ui.error(error.code, error.message)


def _estimate(prompt_estimate: int, streamed: list[str]) -> Usage:
    return Usage(prompt_estimate, estimate_text_tokens("".join(streamed)), estimated=True)


def _failure(error: Exception) -> LLMGuardError:
    """What to tell the client when the provider call failed."""
    if isinstance(error, LLMGuardError):
        return error
    if isinstance(error, TimeoutError):
        return UpstreamError("The AI provider took too long to answer.", status_code=504)
    return UpstreamError("The connection to the AI provider broke.")
