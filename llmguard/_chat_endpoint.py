"""ChatEndpoint: validates a chat request, calls the provider, answers JSON or a stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from starlette.responses import JSONResponse
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

    The server decides what the provider sees: its model, its output cap, its
    system prompt when the client sends none, ``n = 1``. The caller's headers
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        state = request_state(scope)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"allow": "POST"})
            body = await read_body(scope, receive, max_bytes=self.max_body_bytes)
            request = parse_chat_request(parse_json(body), server_model=self.model)
            messages = self.provider_messages(request)
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        state.model = self.model
        prompt_estimate = estimate_prompt_tokens(message["content"] for message in messages)
        cap = min(request.max_tokens or self.max_tokens, self.max_tokens)
        if state.budget is not None:
            try:
                cap = await state.budget.reserve(model=self.model, prompt_tokens=prompt_estimate, max_output_tokens=cap)
            except LLMGuardError as error:
                await send_error(scope, send, error)
                return
        payload = self.payload(request, messages, cap)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
            if request.stream:
                await self.stream_reply(scope, send, payload, state, prompt_estimate)
            else:
                await self.json_reply(scope, receive, send, payload, state, prompt_estimate)
            tasks.cancel_scope.cancel()

    def provider_messages(self, request: ChatRequest) -> list[dict[str, str]]:
        if request.system is not None and not self.allow_client_system:
            raise InvalidRequest("This server sets the system prompt; leave 'system' out.", param="system")
        system = request.system if request.system is not None else self.system_prompt
        messages = [{"role": "system", "content": system}] if system else []
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        return messages

    def payload(self, request: ChatRequest, messages: list[dict[str, str]], cap: int) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, self.max_tokens_param: cap}
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    async def json_reply(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        payload: bytes,
        state: RequestState,
        prompt_estimate: int,
    ) -> None:
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload) as response:
                    # The provider accepted the prompt: it is charged even if the client leaves now.
                    state.usage = Usage(prompt_estimate, 0, estimated=True)
                    body = await response.aread()
            content, finish_reason, usage = _parse_completion(body)
        except (TimeoutError, httpx.HTTPError, LLMGuardError) as exc:
            error = _failure(exc)
        else:
            state.usage = usage or Usage(prompt_estimate, estimate_text_tokens(content), estimated=True)
            reply = {
                "role": "assistant",
                "content": content,
                "finish_reason": finish_reason,
                "usage": state.usage.as_dict(),
            }
            await JSONResponse(reply, headers={"cache-control": "no-store"})(scope, receive, send)
            return
        await send_error(scope, send, error)

    async def stream_reply(
        self, scope: Scope, send: Send, payload: bytes, state: RequestState, prompt_estimate: int
    ) -> None:
        started = False
        streamed_chars: list[str] = []
        usage: Usage | None = None
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        raise UpstreamError("The AI provider did not answer with a stream.")
                    await send({"type": "http.response.start", "status": 200, "headers": ui.HEADERS})
                    started = True
                    await _send_chunk(send, ui.start())
                    finish_reason, usage = await self._relay(response, send, streamed_chars)
            text_end = ui.TEXT_END if streamed_chars else b""
            usage = usage or _estimate(prompt_estimate, streamed_chars)
            await _send_chunk(send, text_end + ui.FINISH_STEP + ui.finish(finish_reason, usage.as_dict()))
            await send({"type": "http.response.body", "body": b""})
            return
        except (TimeoutError, httpx.HTTPError, LLMGuardError) as exc:
            error = _failure(exc)
        finally:
            # Runs on client disconnect too: what was streamed is what gets charged.
            if started:
                state.usage = usage or _estimate(prompt_estimate, streamed_chars)
        if not started:
            await send_error(scope, send, error)
            return
        state.error_code = error.code
        logger.warning("stream ended with %s: %s", error.code, error.message)
        await _send_chunk(send, ui.error(error.code, error.message))
        await send({"type": "http.response.body", "body": b""})

    async def _relay(
        self, response: httpx.Response, send: Send, streamed: list[str]
    ) -> tuple[str | None, Usage | None]:
        """Forward each provider delta as one ``text-delta`` the moment it arrives."""
        finish_reason: str | None = None
        usage: Usage | None = None
        async for data in _sse_data(response):
            if data == "[DONE]":
                return finish_reason, usage
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                raise UpstreamError("The AI provider sent a malformed stream.") from None
            if not isinstance(chunk, dict):
                raise UpstreamError("The AI provider sent a malformed stream.")
            if "error" in chunk:
                raise UpstreamError("The AI provider failed mid-reply.")
            choices = chunk.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                choice = choices[0]
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    prefix = b"" if streamed else ui.TEXT_START
                    streamed.append(content)
                    await _send_chunk(send, prefix + ui.text_delta(content))
                if isinstance(choice.get("finish_reason"), str):
                    finish_reason = choice["finish_reason"]
            usage = _usage(chunk.get("usage")) or usage
        if finish_reason is None:
            raise UpstreamError("The AI provider's stream ended before the reply was complete.")
        return finish_reason, usage

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


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each Server-Sent Event (multi-line data joined, comments skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


def _parse_completion(body: bytes) -> tuple[str, str | None, Usage | None]:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (ValueError, RecursionError, LookupError, TypeError, AttributeError):
        raise UpstreamError("The AI provider sent a malformed reply.") from None
    if not isinstance(content, str):
        raise UpstreamError("The AI provider sent a malformed reply.")
    return content, finish_reason if isinstance(finish_reason, str) else None, _usage(data.get("usage"))


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return None
    return Usage(prompt, completion)  # type: ignore[arg-type]


def _estimate(prompt_estimate: int, streamed: list[str]) -> Usage:
    return Usage(prompt_estimate, estimate_text_tokens("".join(streamed)), estimated=True)


def _failure(error: Exception) -> LLMGuardError:
    """What to tell the client when the provider call failed."""
    if isinstance(error, LLMGuardError):
        return error
    if isinstance(error, TimeoutError):
        return UpstreamError("The AI provider took too long to answer.", status_code=504)
    return UpstreamError("The connection to the AI provider broke.")
