"""ChatEndpoint: validates a chat request, calls the provider, answers JSON or a stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from llmguard import _ui_stream as ui
from llmguard._budget import Reservation
from llmguard._chat_request import parse_chat_request, parse_json, read_body
from llmguard._errors import (
    InvalidRequest,
    LLMGuardError,
    MethodNotAllowed,
    RequestTimeout,
    UpstreamError,
    send_error,
)
from llmguard._settings import DEFAULT_BASE_URL, DEFAULT_MODEL
from llmguard._state import Usage, request_state
from llmguard._tokens import estimate_text_tokens
from llmguard._tokens import load as load_tokenizer
from llmguard._upstream import ProviderCall, ProviderRequest, Upstream, timed_out, token_limit_param

logger = logging.getLogger("llmguard.chat")

# Without a TokenBudget, prompts are counted (for the log line) up to about the largest context
# window of a chat model; the provider refuses anything longer.
UNBUDGETED_PROMPT_LIMIT = 131_072


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
        body_timeout: float = 10,
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
        for name, seconds in (("body_timeout", body_timeout), ("request_timeout", request_timeout)):
            if not seconds > 0:
                raise ValueError(f"{name} has value {seconds!r}: must be positive")
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
        self.body_timeout = body_timeout
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
            body = await self.read_body(scope, receive)
            request = parse_chat_request(parse_json(body), server_model=self.model, models=self.models)
            if request.system is not None and not self.allow_client_system:
                raise InvalidRequest("This server sets the system prompt; leave 'system' out.", param="system")
            messages = [{"role": message.role, "content": message.content} for message in request.messages]
            if request.system is not None:
                messages.insert(0, {"role": "system", "content": request.system})
            params = {} if request.temperature is None else {"temperature": request.temperature}
            provider_request = self.provider_request(
                model=request.model, messages=messages, max_tokens=request.max_tokens, stream=request.stream, **params
            )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        await self.complete(scope, receive, send, provider_request, UIMessageWire())

    @property
    def models(self) -> tuple[str, ...]:
        """The models clients may ask for: the server's first."""
        return self._models

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, within ``max_body_bytes`` and ``body_timeout`` (413 / 408 otherwise)."""
        try:
            with anyio.fail_after(self.body_timeout):
                return await read_body(scope, receive, max_bytes=self.max_body_bytes)
        except TimeoutError:
            # The rest of the body may still come: the connection cannot carry another request.
            message = f"The request body did not arrive within {self.body_timeout:g} seconds."
            raise RequestTimeout(message, headers={"connection": "close"}) from None

    def provider_request(
        self,
        *,
        model: str | None,
        messages: Sequence[Mapping[str, str]],
        max_tokens: int | None,
        stream: bool,
        **params: Any,
    ) -> ProviderRequest:
        """The server's policy, the same for every route: its model unless the client named an allowed
        one, its system prompt when the client sent none, and its output cap."""
        if self.system_prompt and not any(message["role"] == "system" for message in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return ProviderRequest(
            model=model or self.model,
            messages=tuple(messages),
            max_output_tokens=min(max_tokens or self.max_tokens, self.max_tokens),
            stream=stream,
            params=params,
        )

    async def complete(self, scope: Scope, receive: Receive, send: Send, request: ProviderRequest, wire: Wire) -> None:
        """Reserve the budget, call the provider, answer in ``wire``'s format, settle: every route does this."""
        state = request_state(scope)
        state.model = request.model
        # Counting stops past what can be served: a hostile megabyte costs milliseconds, not seconds.
        limit = UNBUDGETED_PROMPT_LIMIT if state.budget is None else state.budget.max_prompt_tokens
        prompt_tokens = request.prompt_tokens(stop_above=limit)
        try:
            if state.budget is None:
                reservation = Reservation.unbudgeted(
                    model=request.model, prompt_tokens=prompt_tokens, max_output_tokens=request.max_output_tokens
                )
            else:
                reservation = await state.budget.reserve(
                    model=request.model, prompt_tokens=prompt_tokens, max_output_tokens=request.max_output_tokens
                )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        try:
            body = request.body(output_tokens=reservation.output_tokens, token_param=self.max_tokens_param)
            if request.stream:
                # A stream the client left is cancelled at once: the provider stops generating.
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
                    await self._stream_reply(scope, send, body, reservation, wire)
                    tasks.cancel_scope.cancel()
            else:
                # Not cancelled when the client leaves: the provider bills a call it received whether or not
                # anyone waits for the answer, so the call runs to its end (REQUEST_TIMEOUT at most) and is
                # charged what the provider reports.
                await self._json_reply(scope, send, body, reservation, wire)
        finally:
            with anyio.CancelScope(shield=True):
                state.usage = await reservation.settle()
            state.cost_usd = reservation.cost_usd

    async def _json_reply(self, scope: Scope, send: Send, payload: bytes, reservation: Reservation, wire: Wire) -> None:
        call = ProviderCall()
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload, call) as response:
                    body = await response.aread()
            completion = parse_completion(body)
        except UpstreamError as error:
            if not call.may_have_billed:
                reservation.refused()
            await send_error(scope, send, error)
            return
        except (TimeoutError, httpx.HTTPError) as exc:
            if not call.may_have_billed:
                reservation.refused()  # the deadline came between attempts, with nothing in flight
            await send_error(scope, send, _failure(exc))
            return
        if completion.reasoning:
            reservation.saw_reasoning()
        # The reply is counted only when the provider did not say what it used.
        output = 0 if completion.usage else estimate_text_tokens(completion.content)
        reservation.answered(completion.usage, output, complete=True)
        reply = wire.reply(body, completion, reservation.due())
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(reply)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    async def _stream_reply(
        self, scope: Scope, send: Send, payload: bytes, reservation: Reservation, wire: Wire
    ) -> None:
        call = ProviderCall()
        streaming = started = False
        progress = _Progress()
        error: LLMGuardError | None = None
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload, call) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        # Billed, maybe (a whole reply where a stream was asked): charged the worst case.
                        raise UpstreamError("The AI provider did not answer with a stream.")
                    streaming = True
                    await send({"type": "http.response.start", "status": 200, "headers": wire.stream_headers})
                    started = True
                    await _send_chunk(send, wire.start())
                    await self._relay(response, send, wire, progress)
        except (UpstreamError, TimeoutError, httpx.HTTPError) as exc:
            error = _failure(exc)
        finally:
            # Runs when the client went away too (cancelled): what was streamed is what gets charged.
            if streaming:
                if progress.reasoning:
                    reservation.saw_reasoning()
                # What was relayed is counted only when the provider did not say what it used.
                output = 0 if progress.usage else max(progress.deltas, estimate_text_tokens("".join(progress.streamed)))
                reservation.answered(progress.usage, output, complete=progress.finish_reason is not None)
            elif not call.may_have_billed:
                reservation.refused()  # refused by the provider, or never reached it
        if error is None:
            await _send_chunk(send, wire.finish(progress.finish_reason, reservation.due()))
            await send({"type": "http.response.body", "body": b""})
            return
        if not started:
            await send_error(scope, send, error)
            return
        request_state(scope).error_code = error.code
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
                if isinstance(delta, dict):
                    text = delta.get("content")
                    if isinstance(text, str) and text:
                        content = text
                        progress.streamed.append(text)
                        progress.deltas += 1
                    if not progress.reasoning and shows_reasoning(delta):
                        progress.reasoning = True
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
                load_tokenizer()
                self.upstream.open()
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
    #: The reply shows hidden reasoning (``reasoning_content`` and the like).
    reasoning: bool = False


def parse_completion(body: bytes) -> Completion:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (ValueError, RecursionError, LookupError, TypeError, AttributeError):
        raise UpstreamError("The AI provider sent a malformed reply.") from None
    if not isinstance(content, str):
        raise UpstreamError("The AI provider sent a malformed reply.")
    finish = finish_reason if isinstance(finish_reason, str) else None
    return Completion(content, finish, usage_from(data.get("usage")), shows_reasoning(message))


def shows_reasoning(message: Mapping[str, Any]) -> bool:
    """Whether a reply (or a delta of one) carries reasoning, where providers that show it put it."""
    return bool(message.get("reasoning_content") or message.get("reasoning"))


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
    deltas: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning: bool = False


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


def _failure(error: Exception) -> LLMGuardError:
    """What to tell the client when the provider call failed."""
    if isinstance(error, LLMGuardError):
        return error
    if timed_out(error):
        return UpstreamError("The AI provider took too long to answer.", status_code=504)
    return UpstreamError("The connection to the AI provider broke.")
