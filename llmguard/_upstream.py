"""The provider conversation: what is sent, how, and what comes back.

- ``ProviderRequest`` is the only place a provider payload is built, on every
  route, and the prompt's token bound is taken over exactly that payload.
- ``Upstream`` sends it with the server's key through one pooled client,
  retries only what the provider cannot have billed, and maps failures to
  errors that never relay the provider's text.
- ``Completion`` (a whole reply) and ``ProviderStream`` (a streamed one, read
  event by event) say what the provider answered: its text, how it finished,
  the usage it reported, whether it reasoned. Nothing here knows the client's
  wire format (``_wire``) or the budget (``_chat_service`` records on it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import anyio
import httpx

from llmguard._errors import UpstreamError
from llmguard._state import Usage
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard._version import __version__

logger = logging.getLogger("llmguard.upstream")

#: What carries the provider calls (see ``Upstream``).
TransportName = Literal["auto", "httpx", "aiohttp"]
#: The request field that carries the output cap (see ``token_limit_param``).
TokenParam = Literal["auto", "max_tokens", "max_completion_tokens"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Provider waits longer than this are not slept through: the client is told instead.
MAX_RETRY_DELAY = 8.0
# The longest wait passed on to a client, whatever a provider's header says.
MAX_RETRY_AFTER = 86400
# Payload fields that are settings, not text: the provider bills no tokens for them.
UNBILLED_FIELDS = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "n",
        "max_tokens",
        "max_completion_tokens",
    }
)
MAX_ERROR_BODY = 64 * 1024
# Codes such as `rate_limit_exceeded` or `model_not_found`: words and underscores. A long
# unbroken run of letters and digits looks like a key or an id, and is never relayed.
_SAFE_CODE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_KEY_LIKE = re.compile(r"[a-z0-9]{17,}")


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One chat call as the provider will receive it, apart from the output cap the budget sets.

    ``messages`` are ``{"role", "content"}`` mappings, the server's system
    prompt already in place; ``params`` are the other fields the route lets
    through (``temperature``, ``stop``, ``response_format``, ...).
    """

    model: str
    messages: Sequence[Mapping[str, str]]
    max_output_tokens: int
    stream: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)

    def prompt_tokens(self, *, stop_above: int | None = None) -> int:
        """An upper bound of the input tokens the provider bills for this payload.

        Every field that can carry billable text counts: each message's content
        (with the chat format's overhead for its role) and, as JSON, every other
        field but the numeric settings (so a ``response_format`` schema, ``stop``
        sequences, and any field a route lets through later). With
        ``stop_above=N`` counting may stop once past ``N``: a result above ``N``
        only says "more than N".
        """
        total = estimate_prompt_tokens((message["content"] for message in self.messages), stop_above=stop_above)
        billable = {name: value for name, value in self.params.items() if name not in UNBILLED_FIELDS}
        if billable and (stop_above is None or total <= stop_above):
            text = json.dumps(billable, ensure_ascii=False, separators=(",", ":"))
            total += estimate_text_tokens(text, stop_above=None if stop_above is None else stop_above - total)
        return total

    def body(self, *, output_tokens: int, token_param: str) -> bytes:
        """The JSON the provider gets, with ``output_tokens`` as its output cap (in ``token_param``)."""
        payload: dict[str, Any] = {
            **self.params,
            "model": self.model,
            "messages": list(self.messages),
            token_param: output_tokens,
        }
        if self.stream:
            payload["stream"] = True
            # Always asked for: budgets settle on it, whatever the client asked.
            payload["stream_options"] = {"include_usage": True}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class Upstream:
    """Calls ``{base_url}/chat/completions`` with the server's key.

    The client is created on first use (so it belongs to the running event
    loop, and mounting without a lifespan still works) and closed by
    ``aclose()``, which the bundled app's lifespan calls. Nothing from the
    browser's request but the validated payload ever reaches the provider.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        retries: int = 2,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        max_connections: int = 4096,
        transport: httpx.AsyncBaseTransport | TransportName = "auto",
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty: the provider key is required")
        if retries < 0:
            raise ValueError(f"retries has value {retries!r}: must be 0 or more")
        if isinstance(transport, str):
            check_choice("transport", transport, TransportName)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.retries = retries
        self.headers = {
            "authorization": f"Bearer {api_key}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "user-agent": f"llmguard/{__version__}",
        }
        # Streams go quiet while a model thinks, so reads get the whole request's time;
        # the overall deadline is enforced by the caller, not by httpx.
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        self.limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(100, max_connections),
            keepalive_expiry=keepalive_expiry(base_url),
        )
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=self.limits,
                transport=self._make_transport(),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    @property
    def transport_name(self) -> str:
        """What carries the provider calls: ``httpx``, ``aiohttp``, or the injected transport's class."""
        if not isinstance(self.transport, str):
            return type(self.transport).__name__
        if self.transport == "auto":
            return "aiohttp" if _aiohttp_installed() else "httpx"
        return self.transport

    def _make_transport(self) -> httpx.AsyncBaseTransport | None:
        if not isinstance(self.transport, str):
            return self.transport
        if self.transport_name != "aiohttp":
            return None  # httpx's own
        if not _aiohttp_installed():
            raise ValueError("transport 'aiohttp' needs httpx-aiohttp: pip install 'llmguard[speed]'")
        from llmguard import _aiohttp

        # httpx's own pool slows down as concurrent requests grow (655 requests/s at 64 at once in
        # bench/, against 2231 for aiohttp's); through httpx-aiohttp the API stays httpx's.
        return _aiohttp.transport(self.limits)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def open(self) -> None:
        """Make the pooled client now (its transport may take a moment to import) rather than on first use."""
        _ = self.client

    @asynccontextmanager
    async def chat(self, payload: bytes, call: ProviderCall | None = None) -> AsyncIterator[httpx.Response]:
        """A 2xx response whose body is still unread.

        ``UpstreamError`` from here means the provider billed nothing: it
        answered with an error, or was never reached. 429 and 5xx answers and
        failures to connect are retried with backoff (honouring
        ``Retry-After``). A failure after the request may have reached the
        provider (a read timeout, a connection cut before the answer) is *not*
        retried, since the provider may have billed it, and propagates as
        httpx's own error: what it cost is unknown. ``call`` says, at any
        moment, whether the provider may have billed anything so far (for a
        caller whose deadline cuts this short). A retry that would outlast the
        caller's deadline is not waited for: the refusal is returned instead.
        """
        response = await self._send_with_retries(payload, call or ProviderCall())
        try:
            yield response
        finally:
            await response.aclose()

    async def _send_with_retries(self, payload: bytes, call: ProviderCall) -> httpx.Response:
        attempt = 0
        while True:
            delay: float | None
            try:
                request = self.client.build_request("POST", self.url, content=payload, headers=self.headers)
                call.may_have_billed = True
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                if not never_sent(exc):
                    raise
                call.may_have_billed = False
                logger.warning("provider unreachable: %s", type(exc).__name__)
                if timed_out(exc):
                    error = UpstreamError("The AI provider did not answer in time.", status_code=504)
                else:
                    error = UpstreamError("The AI provider could not be reached.")
                delay = _backoff(attempt)
            else:
                if response.status_code < 400:
                    return response
                call.may_have_billed = False  # an error answer: providers bill none
                error, delay = await _refusal(response, attempt)
            if delay is None or attempt >= self.retries or delay > MAX_RETRY_DELAY:
                raise error
            if anyio.current_time() + delay >= anyio.current_effective_deadline():
                raise error  # the caller's deadline comes first: say why, rather than time out
            attempt += 1
            logger.info("retrying the provider in %.2fs (attempt %d)", delay, attempt + 1)
            await anyio.sleep(delay)


@dataclass(slots=True)
class ProviderCall:
    """What one provider call may have cost so far, whatever cut it short."""

    #: An attempt may have reached the provider (sent, and not answered with an error yet).
    may_have_billed: bool = False


def keepalive_expiry(base_url: str) -> float:
    """Seconds an idle provider connection is kept for reuse.

    Shorter than the provider's own idle timeout, or a reused connection may be one it is closing
    just then, and the request on it fails. OpenAI keeps connections for minutes; servers on
    uvicorn (vLLM, most self-hosted ones) close them after 5 s.
    """
    return 30.0 if urlsplit(base_url).hostname == "api.openai.com" else 4.0


def never_sent(error: httpx.TransportError) -> bool:
    """Whether the request provably never reached the provider (so it cannot have been billed)."""
    return isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def timed_out(error: Exception) -> bool:
    """Whether a failed provider call ran out of time (504), rather than broke (502)."""
    return isinstance(error, (TimeoutError, httpx.TimeoutException))


def _aiohttp_installed() -> bool:
    return importlib.util.find_spec("httpx_aiohttp") is not None


def check_choice(option: str, value: str, choices: object) -> None:
    """``ValueError`` naming ``option`` unless ``value`` is one of the ``choices`` Literal's values."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{option} has value {value!r}: expected one of {', '.join(map(repr, allowed))}")


def token_limit_param(base_url: str, choice: str = "auto") -> str:
    """The request field that carries the output cap for this provider."""
    if choice != "auto":
        return choice
    # OpenAI's newer models refuse `max_tokens`; most other providers only know `max_tokens`.
    return "max_completion_tokens" if urlsplit(base_url).hostname == "api.openai.com" else "max_tokens"


async def _refusal(response: httpx.Response, attempt: int) -> tuple[UpstreamError, float | None]:
    """Map a provider error to ours without relaying its text (OpenAI's 401 quotes the key)."""
    status = response.status_code
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
    provider_code = _provider_code(body)
    context: dict[str, str | int | float | bool | None] = {"upstream_status": status}
    if provider_code:
        context["upstream_code"] = provider_code
    retry_after = _retry_after(response.headers)

    if status in (401, 403):
        logger.error("the provider refused the server's API key (HTTP %d); check OPENAI_API_KEY", status)
        message = "The AI provider refused this server's credentials."
    elif status == 429 and provider_code == "insufficient_quota":
        logger.error("the provider account has no quota left (HTTP 429 insufficient_quota)")
        return UpstreamError("The AI provider account has run out of credit.", context=context), None
    elif status == 429:
        message = "The AI provider is rate limiting this server. Try again shortly."
    elif status in (400, 404, 409, 413, 422):
        message = "The AI provider rejected the request."
    else:
        message = "The AI provider failed to answer."
    rounded = None if retry_after is None else max(1, round(retry_after))
    error = UpstreamError(message, retry_after=rounded if status in RETRY_STATUSES else None, context=context)
    if status not in RETRY_STATUSES:
        return error, None
    return error, _backoff(attempt) if retry_after is None else retry_after


def _backoff(attempt: int) -> float:
    jitter = random.uniform(0.8, 1.2)  # noqa: S311 - spreads retries, not a secret
    return float(min(MAX_RETRY_DELAY, 0.5 * 2**attempt * jitter))


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), within [0, a day]."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return _clamped(float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _clamped(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return _clamped((when - datetime.now(timezone.utc)).total_seconds())


def _clamped(seconds: float) -> float | None:
    # A provider's header is input like any other: `1e999`, `nan` and `-5` are all seen in the wild.
    if math.isnan(seconds):
        return None
    return min(float(MAX_RETRY_AFTER), max(0.0, seconds))


def _provider_code(body: bytes) -> str | None:
    """The provider's machine-readable error code, if it is a plain identifier."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    if isinstance(code, str) and _SAFE_CODE.match(code) and not _KEY_LIKE.search(code):
        return code
    return None


# -- what the provider answered -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) provider reply."""

    content: str
    finish_reason: str | None
    usage: Usage | None
    #: The reply shows hidden reasoning (``reasoning_content`` and the like).
    reasoning: bool = False
    #: A whole reply is complete, whatever its finish reason says.
    finished: bool = True

    def output_tokens(self) -> int:
        """The reply's tokens as counted here, needed only when the provider did not say its usage."""
        return 0 if self.usage else estimate_text_tokens(self.content)


def parse_completion(body: bytes) -> Completion:
    """The provider's ``chat.completion`` object, or ``UpstreamError`` if it is not one."""
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


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One ``chat.completion.chunk`` of a provider stream."""

    #: The event's data as the provider sent it (the OpenAI route forwards it unchanged).
    data: bytes
    chunk: dict[str, Any]
    #: Its text delta, ``""`` when it has none.
    text: str


class ProviderStream:
    """A provider's streamed reply, read event by event.

    What the stream said so far (its text, finish reason, usage, reasoning)
    stays readable after whatever cut it short: the client leaving, the
    deadline, the provider breaking off. ``events()`` raises ``UpstreamError``
    for a stream that is malformed, reports an error, or ends unfinished.
    """

    def __init__(self, response: httpx.Response) -> None:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            # Billed, maybe (a whole reply where a stream was asked): the caller charges the worst case.
            raise UpstreamError("The AI provider did not answer with a stream.")
        self.response = response
        self.text: list[str] = []
        self.deltas = 0
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.reasoning = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def output_tokens(self) -> int:
        """The tokens relayed so far as counted here, needed only when the provider did not say its usage."""
        return 0 if self.usage else max(self.deltas, estimate_text_tokens("".join(self.text)))

    async def events(self) -> AsyncIterator[StreamEvent]:
        async for data in _sse_data(self.response):
            if data == b"[DONE]":
                return
            chunk = _stream_chunk(data)
            yield StreamEvent(data, chunk, self._read(chunk))
        if self.finish_reason is None:
            raise UpstreamError("The AI provider's stream ended before the reply was complete.")

    def _read(self, chunk: dict[str, Any]) -> str:
        """Take note of what one chunk says; its text delta."""
        text = ""
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    text = content
                    self.text.append(content)
                    self.deltas += 1
                if not self.reasoning and shows_reasoning(delta):
                    self.reasoning = True
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        self.usage = usage_from(chunk.get("usage")) or self.usage
        return text


def _stream_chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise UpstreamError("The AI provider sent a malformed stream.") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The AI provider sent a malformed stream.")
    if "error" in chunk:
        raise UpstreamError("The AI provider failed mid-reply.")
    return chunk


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


def shows_reasoning(message: Mapping[str, Any]) -> bool:
    """Whether a reply (or a delta of one) carries reasoning, where providers that show it put it."""
    return bool(message.get("reasoning_content") or message.get("reasoning"))


def usage_from(value: object) -> Usage | None:
    """The provider's ``usage`` object, if it is a well-formed one."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return None
    return Usage(prompt, completion)  # type: ignore[arg-type]
