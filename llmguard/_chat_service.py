"""The chat service: the server's policy, applied once for every route, and one call's life.

Both chat routes (``ChatEndpoint`` for ``/api/chat``, the OpenAI-compatible
``/v1/chat/completions``) only parse; this service does the rest, the same way
for both:

1. **policy** — the server's model (or one of ``models`` the client names), its
   system prompt when the client sends none (and none at all from the client
   when it forbids them), its output cap; or all of these from the preset the
   client names (``_presets``) (:class:`ChatPolicy`);
2. **reserve** the worst case on the budget (``scope["llmguard"].budget``, from
   ``TokenBudget``), which may lower the output cap or refuse; near the monthly
   caps, the budget's degradation step (``_degrade``) picks a cheaper model or a
   lower cap first;
3. **call** the provider (``_upstream``) and answer in the route's format
   (``_wire``): a JSON reply, or a stream relayed event by event;
4. **record** what the provider answered on the reservation and **settle** it,
   on every exit path (see ``_charges`` for what is charged when).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from llmguard._degrade import Degradation
from llmguard._errors import InvalidRequest, LLMGuardError, UpstreamError, send_error
from llmguard._presets import Presets, check_presets
from llmguard._reservation import Reservation
from llmguard._state import Usage, request_state
from llmguard._upstream import (
    ProviderCall,
    ProviderRequest,
    ProviderStream,
    Upstream,
    parse_completion,
    timed_out,
)
from llmguard._wire import Wire

logger = logging.getLogger("llmguard.chat")

DEFAULT_MODEL = "gpt-4.1-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Without a TokenBudget, prompts are counted (for the log line) up to about the largest context
# window of a chat model; the provider refuses anything longer.
UNBUDGETED_PROMPT_LIMIT = 131_072


@dataclass(frozen=True)
class ChatPolicy:
    """What the server decides for every call, whatever the client asked."""

    model: str = DEFAULT_MODEL
    #: The models clients may ask for: the server's first.
    models: Sequence[str] = ()
    system_prompt: str = ""
    #: Whether a client may send its own system prompt; None ("auto"): only when the server has
    #: neither a system prompt nor presets.
    allow_client_system: bool | None = None
    #: The output cap: a client may ask for less, never more.
    max_tokens: int = 2000
    #: The locked prompts clients may name (``preset``).
    presets: Presets = field(default_factory=Presets)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens has value {self.max_tokens!r}: must be at least 1")
        if self.allow_client_system not in (None, True, False):
            raise ValueError(
                f"allow_client_system has value {self.allow_client_system!r}: expected True, False or None"
            )
        object.__setattr__(self, "models", tuple(dict.fromkeys((self.model, *self.models))))
        object.__setattr__(self, "presets", check_presets(self.presets))

    @property
    def client_system_allowed(self) -> bool:
        """Whether a client's own system prompt is accepted (``allow_client_system``, or "auto")."""
        if self.allow_client_system is None:
            return not (self.system_prompt or self.presets)
        return self.allow_client_system

    def provider_request(
        self,
        *,
        model: str | None,
        messages: Sequence[Mapping[str, str]],
        max_tokens: int | None,
        stream: bool,
        params: Mapping[str, Any],
        system_param: str,
        preset: str | None = None,
        allowed_presets: object = None,
    ) -> tuple[ProviderRequest, str | None]:
        """The call the provider will get for a parsed request, and the name of the preset it uses.

        ``messages`` carry the client's own system prompt, if any, as ``system``
        messages; ``system_param`` names where the client put it, for the 422
        when the server forbids one. ``preset`` is the preset the client named
        and ``allowed_presets`` the token's ``presets`` claim (None: any).
        """
        chosen = self.presets.choose(preset, allowed_presets)
        client_system = any(message["role"] == "system" for message in messages)
        if chosen is not None:
            name, locked = chosen
            if client_system:
                raise InvalidRequest(f"The preset {name!r} sets the system prompt; send none.", param=system_param)
            cap = locked.max_tokens or self.max_tokens
            if locked.temperature is not None:
                params = {**params, "temperature": locked.temperature}
            request = ProviderRequest(
                model=locked.model or model or self.model,
                messages=({"role": "system", "content": locked.system}, *messages),
                max_output_tokens=min(max_tokens or cap, cap),
                stream=stream,
                params=params,
            )
            return request, name
        if client_system:
            if not self.client_system_allowed:
                raise InvalidRequest("This server sets the system prompt; send none.", param=system_param)
        elif self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        request = ProviderRequest(
            model=model or self.model,
            messages=tuple(messages),
            max_output_tokens=min(max_tokens or self.max_tokens, self.max_tokens),
            stream=stream,
            params=params,
        )
        return request, None


class ChatService:
    """Answers a provider request on the route's wire: reserve, call, relay, record, settle."""

    def __init__(self, policy: ChatPolicy, upstream: Upstream, *, token_param: str, request_timeout: float) -> None:
        if not request_timeout > 0:
            raise ValueError(f"request_timeout has value {request_timeout!r}: must be positive")
        self.policy = policy
        self.upstream = upstream
        #: The payload field that carries the output cap for this provider.
        self.token_param = token_param
        self.request_timeout = request_timeout

    async def answer(self, scope: Scope, receive: Receive, send: Send, request: ProviderRequest, wire: Wire) -> None:
        """Reserve the budget, call the provider, answer in ``wire``'s format, settle."""
        state = request_state(scope)
        state.model = request.model
        # Counting stops past what can be served: a hostile megabyte costs milliseconds, not seconds.
        limit = UNBUDGETED_PROMPT_LIMIT if state.budget is None else state.budget.max_prompt_tokens
        prompt_tokens = request.prompt_tokens(stop_above=limit)
        try:
            degraded = None if state.budget is None else await state.budget.degradation()
            if degraded is not None:
                request = _degraded(request, degraded)
                state.model, state.degraded = request.model, degraded
            model, output_cap = request.model, request.max_output_tokens
            if state.budget is None:
                reservation = Reservation.unbudgeted(
                    model=model, prompt_tokens=prompt_tokens, max_output_tokens=output_cap
                )
            else:
                reservation = await state.budget.reserve(
                    model=model, prompt_tokens=prompt_tokens, max_output_tokens=output_cap
                )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        try:
            payload = request.body(output_tokens=reservation.output_tokens, token_param=self.token_param)
            state.provider_started = time.perf_counter()
            if request.stream:
                # A stream the client left is cancelled at once: the provider stops generating.
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_cancel_on_disconnect, receive, tasks.cancel_scope)
                    await self._stream_reply(scope, send, payload, reservation, wire, degraded)
                    tasks.cancel_scope.cancel()
            else:
                # Not cancelled when the client leaves: the provider bills a call it received whether or not
                # anyone waits for the answer, so the call runs to its end (REQUEST_TIMEOUT at most) and is
                # charged what the provider reports.
                await self._json_reply(scope, send, payload, reservation, wire, degraded)
        finally:
            state.provider_ended = time.perf_counter()
            with anyio.CancelScope(shield=True):
                state.usage = await reservation.settle()
            state.cost_usd = reservation.cost_usd

    async def _json_reply(
        self,
        scope: Scope,
        send: Send,
        payload: bytes,
        reservation: Reservation,
        wire: Wire,
        degraded: Degradation | None,
    ) -> None:
        call = ProviderCall()
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload, call) as response:
                    body = await response.aread()
            completion = parse_completion(body)
            request_state(scope).first_token_at = time.perf_counter()  # a whole reply: every token at once
        except (UpstreamError, TimeoutError, httpx.HTTPError) as exc:
            if not call.may_have_billed:
                reservation.refused()  # refused, never reached, or the deadline came between attempts
            await send_error(scope, send, _failure(exc))
            return
        _record(reservation, completion)
        reply = wire.reply(body, completion, reservation.due(), degraded)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(reply)).encode()),
            (b"cache-control", b"no-store"),
            *_degraded_header(degraded),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    async def _stream_reply(
        self,
        scope: Scope,
        send: Send,
        payload: bytes,
        reservation: Reservation,
        wire: Wire,
        degraded: Degradation | None,
    ) -> None:
        call = ProviderCall()
        state = request_state(scope)
        stream: ProviderStream | None = None
        started = False
        error: LLMGuardError | None = None
        try:
            with anyio.fail_after(self.request_timeout):
                async with self.upstream.chat(payload, call) as response:
                    stream = ProviderStream(response)
                    headers = [*wire.stream_headers, *_degraded_header(degraded)]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                    await _send_chunk(send, wire.start(degraded))
                    async for event in stream.events():
                        if event.text and state.first_token_at is None:
                            state.first_token_at = time.perf_counter()
                        out = wire.event(event)
                        if out:
                            await _send_chunk(send, out)
        except (UpstreamError, TimeoutError, httpx.HTTPError) as exc:
            error = _failure(exc)
        finally:
            # Runs when the client went away too (cancelled): what was streamed is what gets charged.
            if stream is not None:
                _record(reservation, stream)
            elif not call.may_have_billed:
                reservation.refused()  # refused by the provider, or never reached it
        if error is None:
            finish = wire.finish(stream.finish_reason if stream else None, reservation.due(), degraded)
            await _send_chunk(send, finish)
            await send({"type": "http.response.body", "body": b""})
            return
        if not started:
            await send_error(scope, send, error)
            return
        state.error_code = error.code
        logger.warning("stream ended with %s: %s", error.code, error.message)
        await _send_chunk(send, wire.error(error))
        await send({"type": "http.response.body", "body": b""})

    def open(self) -> None:
        """Make the pooled provider client now rather than on the first request."""
        self.upstream.open()

    async def aclose(self) -> None:
        await self.upstream.aclose()


class _Reply(Protocol):
    """What the provider answered, whole (``Completion``) or so far (``ProviderStream``)."""

    @property
    def usage(self) -> Usage | None: ...
    @property
    def reasoning(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
    def output_tokens(self) -> int: ...


def _record(reservation: Reservation, reply: _Reply) -> None:
    if reply.reasoning:
        reservation.saw_reasoning()
    reservation.answered(reply.usage, reply.output_tokens(), complete=reply.finished)


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _send_chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _degraded(request: ProviderRequest, step: Degradation) -> ProviderRequest:
    """``request`` with the step's model and output cap (a lower cap only: never more than asked)."""
    cap = request.max_output_tokens if step.max_tokens is None else min(request.max_output_tokens, step.max_tokens)
    return replace(request, model=step.model or request.model, max_output_tokens=cap)


def _degraded_header(degraded: Degradation | None) -> list[tuple[bytes, bytes]]:
    return [] if degraded is None else [(b"x-llmguard-degraded", degraded.percent.encode())]


def _failure(error: Exception) -> LLMGuardError:
    """What to tell the client when the provider call failed."""
    if isinstance(error, LLMGuardError):
        return error
    if timed_out(error):
        return UpstreamError("The AI provider took too long to answer.", status_code=504)
    return UpstreamError("The connection to the AI provider broke.")
