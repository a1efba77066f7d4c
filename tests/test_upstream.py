from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import aiohttp
import anyio
import httpx
import pytest
import yarl
from aiohttp.client_reqrep import ConnectionKey
from harness import KEY
from multidict import CIMultiDict, CIMultiDictProxy

from llmguard import UpstreamError
from llmguard._aiohttp import AiohttpErrors
from llmguard._upstream import (
    MAX_RETRY_DELAY,
    ProviderRequest,
    Upstream,
    _backoff,
    _provider_code,
    _retry_after,
    keepalive_expiry,
    never_sent,
    timed_out,
)
from llmguard.testing import FakeProvider, FakeReply

BASE_URL = "https://provider.example/v1/"
PAYLOAD = json.dumps({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}]}).encode()


# -- _retry_after ---------------------------------------------------------------------


def http_date(delta: timedelta) -> str:
    return format_datetime(datetime.now(timezone.utc) + delta, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"retry-after": "3"}, 3.0, id="seconds"),
        pytest.param({"retry-after": "1.5"}, 1.5, id="fractional-seconds"),
        pytest.param({"retry-after": "0"}, 0.0, id="zero"),
        pytest.param({"retry-after": "-4"}, 0.0, id="negative-is-now"),
        pytest.param({"retry-after-ms": "250"}, 0.25, id="milliseconds"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, id="milliseconds-win"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "9"}, 9.0, id="bad-milliseconds-fall-back"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({"retry-after": ""}, None, id="empty"),
        pytest.param({"retry-after": "Wed, 99 Foo 2015 07:28:00 GMT"}, None, id="broken-date"),
        pytest.param({"retry-after": http_date(timedelta(hours=-1))}, 0.0, id="date-in-the-past"),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert _retry_after(httpx.Headers(headers)) == expected


def test_retry_after_http_date_is_seconds_from_now() -> None:
    seconds = _retry_after(httpx.Headers({"retry-after": http_date(timedelta(seconds=30))}))
    assert seconds is not None
    assert 28 <= seconds <= 30


# -- _provider_code -------------------------------------------------------------------


def error_body(**error: object) -> bytes:
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(error_body(code="rate_limit_exceeded", type="requests"), "rate_limit_exceeded", id="code"),
        pytest.param(error_body(code=None, type="insufficient_quota"), "insufficient_quota", id="type-when-no-code"),
        pytest.param(error_body(code="model.not_found_2"), "model.not_found_2", id="dots"),
        pytest.param(error_body(code="not-a-code"), None, id="dashes-as-in-keys"),
        pytest.param(error_body(code="req_0123456789abcdefghij"), None, id="an-id"),
        pytest.param(error_body(code="Incorrect API key provided"), None, id="spaces"),
        pytest.param(error_body(code=KEY), None, id="the-key"),
        pytest.param(error_body(code="sk-" + "0123456789abcdef" * 2), None, id="lowercase-hex-key"),
        pytest.param(error_body(code="a" * 65), None, id="too-long"),
        pytest.param(error_body(code="bad\ncode"), None, id="newline"),
        pytest.param(error_body(code="<script>"), None, id="markup"),
        pytest.param(error_body(code=429), None, id="number"),
        pytest.param(error_body(message="no code"), None, id="no-code"),
        pytest.param(json.dumps({"error": "rate_limited"}).encode(), None, id="error-a-string"),
        pytest.param(b"[]", None, id="array"),
        pytest.param(b"<html>502</html>", None, id="html"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"[" * 100_000, None, id="deep-nesting"),
    ],
)
def test_provider_code_keeps_only_safe_identifiers(body: bytes, expected: str | None) -> None:
    assert _provider_code(body) == expected


# -- backoff --------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for _ in range(50):
        assert 0.4 <= _backoff(0) <= 0.6
        assert 0.8 <= _backoff(1) <= 1.2
        assert _backoff(20) == MAX_RETRY_DELAY
    assert len({_backoff(0) for _ in range(20)}) > 1


# -- Upstream -------------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the retry pauses instead of sleeping through them."""
    recorded: list[float] = []
    real_sleep = anyio.sleep

    async def sleep(delay: float) -> None:
        recorded.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("llmguard._upstream.anyio.sleep", sleep)
    return recorded


def upstream_for(provider: FakeProvider, retries: int = 2) -> Upstream:
    return Upstream(base_url=BASE_URL, api_key=KEY, retries=retries, transport=provider.transport())


async def call(upstream: Upstream) -> bytes:
    try:
        async with upstream.chat(PAYLOAD) as response:
            return await response.aread()
    finally:
        await upstream.aclose()


async def test_chat_posts_the_payload_with_the_server_key(provider: FakeProvider) -> None:
    body = await call(upstream_for(provider))
    assert json.loads(body)["object"] == "chat.completion"
    sent = provider.last_request
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"].startswith("llmguard/")
    assert sent.json == json.loads(PAYLOAD)


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        Upstream(base_url=BASE_URL, api_key=KEY, retries=-1)


async def test_retryable_statuses_are_retried_honouring_retry_after(
    provider: FakeProvider, sleeps: list[float]
) -> None:
    provider.enqueue(
        FakeReply.failure(429, retry_after=2),
        FakeReply.failure(503, retry_after=0.5),
        FakeReply(text="At last."),
    )
    body = await call(upstream_for(provider, retries=2))
    assert json.loads(body)["choices"][0]["message"]["content"] == "At last."
    assert len(provider.requests) == 3
    assert sleeps == [2.0, 0.5]


async def test_retries_without_retry_after_back_off(provider: FakeProvider, sleeps: list[float]) -> None:
    provider.enqueue(FakeReply.failure(500), FakeReply.failure(502), FakeReply())
    await call(upstream_for(provider, retries=2))
    assert len(provider.requests) == 3
    assert len(sleeps) == 2
    assert 0.4 <= sleeps[0] <= 0.6
    assert 0.8 <= sleeps[1] <= 1.2


async def test_retries_stop_after_the_configured_count(provider: FakeProvider, sleeps: list[float]) -> None:
    provider.enqueue(*(FakeReply.failure(503, retry_after=0) for _ in range(5)))
    with pytest.raises(UpstreamError) as caught:
        await call(upstream_for(provider, retries=2))
    assert len(provider.requests) == 3
    assert caught.value.status_code == 502
    assert caught.value.context["upstream_status"] == 503


async def test_zero_retries_means_one_attempt(provider: FakeProvider, sleeps: list[float]) -> None:
    provider.enqueue(FakeReply.failure(503, retry_after=0), FakeReply())
    with pytest.raises(UpstreamError):
        await call(upstream_for(provider, retries=0))
    assert len(provider.requests) == 1
    assert sleeps == []


async def test_a_wait_longer_than_the_max_is_not_slept_through(provider: FakeProvider, sleeps: list[float]) -> None:
    provider.enqueue(FakeReply.failure(429, "slow down", code="rate_limit_exceeded", retry_after=30), FakeReply())
    with pytest.raises(UpstreamError) as caught:
        await call(upstream_for(provider, retries=2))
    assert len(provider.requests) == 1
    assert sleeps == []
    assert caught.value.retry_after == 30
    assert caught.value.context == {"upstream_status": 429, "upstream_code": "rate_limit_exceeded"}


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        pytest.param(FakeReply.failure(400), 400, id="400"),
        pytest.param(FakeReply.failure(401), 401, id="401"),
        pytest.param(FakeReply.failure(403), 403, id="403"),
        pytest.param(FakeReply.failure(404), 404, id="404"),
        pytest.param(FakeReply.failure(422), 422, id="422"),
        pytest.param(FakeReply.failure(429, code="insufficient_quota", retry_after=0), 429, id="insufficient-quota"),
    ],
)
async def test_refusals_are_not_retried(
    provider: FakeProvider, sleeps: list[float], failure: FakeReply, status: int
) -> None:
    provider.enqueue(failure, FakeReply())
    with pytest.raises(UpstreamError) as caught:
        await call(upstream_for(provider, retries=2))
    assert len(provider.requests) == 1
    assert sleeps == []
    assert caught.value.status_code == 502
    assert caught.value.context["upstream_status"] == status
    assert caught.value.retry_after is None


async def test_a_401_names_the_key_problem_without_quoting_the_provider(provider: FakeProvider) -> None:
    provider.enqueue(FakeReply.failure(401))
    with pytest.raises(UpstreamError) as caught:
        await call(upstream_for(provider))
    text = caught.value.message + json.dumps(caught.value.context)
    assert "credentials" in caught.value.message
    assert KEY[:8] not in text
    assert KEY[-4:] not in text
    assert "Incorrect" not in text


def failing_transport(error: Callable[[httpx.Request], Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise error(request)

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(lambda r: httpx.ConnectError("connection refused", request=r), 502, id="connect"),
        pytest.param(lambda r: httpx.ConnectTimeout("connect timed out", request=r), 504, id="connect-timeout"),
        pytest.param(lambda r: httpx.PoolTimeout("pool timed out", request=r), 504, id="pool"),
    ],
)
async def test_a_provider_never_reached_is_retried_then_refused(
    sleeps: list[float], error: Callable[[httpx.Request], Exception], status: int
) -> None:
    # Nothing reached the provider, so nothing was billed: retrying costs nothing.
    transport, seen = failing_transport(error)
    upstream = Upstream(base_url=BASE_URL, api_key=KEY, retries=2, transport=transport)
    with pytest.raises(UpstreamError) as caught:
        await call(upstream)
    assert caught.value.status_code == status
    assert len(seen) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(lambda r: httpx.RemoteProtocolError("server hung up", request=r), id="protocol"),
        pytest.param(lambda r: httpx.ReadError("reset by peer", request=r), id="read"),
        pytest.param(lambda r: httpx.ReadTimeout("read timed out", request=r), id="read-timeout"),
    ],
)
async def test_a_failure_after_the_request_was_sent_is_never_retried(
    sleeps: list[float], error: Callable[[httpx.Request], Exception]
) -> None:
    # The provider may have billed the request: a retry could be billed a second time.
    transport, seen = failing_transport(error)
    upstream = Upstream(base_url=BASE_URL, api_key=KEY, retries=2, transport=transport)
    with pytest.raises(httpx.TransportError):
        await call(upstream)
    assert len(seen) == 1
    assert sleeps == []


async def test_a_failed_attempt_then_success_returns_the_success(sleeps: list[float]) -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"ok": True})

    upstream = Upstream(base_url=BASE_URL, api_key=KEY, retries=2, transport=httpx.MockTransport(handler))
    assert json.loads(await call(upstream)) == {"ok": True}
    assert len(attempts) == 2


async def test_the_client_is_pooled_and_closed(provider: FakeProvider) -> None:
    upstream = upstream_for(provider)
    first = upstream.client
    async with upstream.chat(PAYLOAD) as response:
        await response.aread()
    async with upstream.chat(PAYLOAD) as response:
        await response.aread()
    assert upstream.client is first
    await upstream.aclose()
    assert first.is_closed


# -- which transport carries the calls -------------------------------------------------


def test_auto_uses_aiohttps_pool_when_installed_and_httpx_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmguard._upstream as upstream_module

    assert Upstream(base_url=BASE_URL, api_key=KEY).transport_name == "aiohttp"  # the dev extras have it
    assert Upstream(base_url=BASE_URL, api_key=KEY, transport="httpx").transport_name == "httpx"
    monkeypatch.setattr(upstream_module, "_aiohttp_installed", lambda: False)
    assert Upstream(base_url=BASE_URL, api_key=KEY).transport_name == "httpx"
    with pytest.raises(ValueError, match="llmguard\\[speed\\]"):
        _ = Upstream(base_url=BASE_URL, api_key=KEY, transport="aiohttp").client


def test_an_unknown_transport_name_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        Upstream(base_url=BASE_URL, api_key=KEY, transport="curl")  # type: ignore[arg-type]


async def test_the_aiohttp_pool_reaches_a_real_provider(fake_upstream: tuple[FakeProvider, str]) -> None:
    provider, url = fake_upstream
    provider.reset()
    upstream = Upstream(base_url=f"{url}/v1", api_key=KEY, transport="aiohttp")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    async with upstream.chat(body) as response:
        text = (await response.aread()).decode()
    await upstream.aclose()
    assert "data: [DONE]" in text
    assert provider.last_request.headers["authorization"] == f"Bearer {KEY}"


# -- the payload and its count -------------------------------------------------------------


def test_the_prompt_count_covers_every_field_that_carries_text() -> None:
    messages = ({"role": "user", "content": "Hi"},)
    plain = ProviderRequest(model="gpt-4.1-mini", messages=messages, max_output_tokens=10)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "description": "word " * 500}}
    stuffed = ProviderRequest(
        model="gpt-4.1-mini",
        messages=messages,
        max_output_tokens=10,
        params={"response_format": schema, "stop": ["END"], "temperature": 0.5, "seed": 7},
    )
    assert stuffed.prompt_tokens() >= plain.prompt_tokens() + 500
    numbers_only = ProviderRequest(
        model="gpt-4.1-mini", messages=messages, max_output_tokens=10, params={"temperature": 1, "seed": 123456789}
    )
    assert numbers_only.prompt_tokens() == plain.prompt_tokens()


@pytest.mark.parametrize("limit", [0, 5, 100, 510, 10_000])
def test_counting_may_stop_past_the_limit_but_never_below_it(limit: int) -> None:
    request = ProviderRequest(
        model="gpt-4.1-mini",
        messages=({"role": "user", "content": "one two three " * 100},),
        max_output_tokens=10,
        params={"response_format": {"type": "json_object", "description": "word " * 200}},
    )
    full = request.prompt_tokens()
    stopped = request.prompt_tokens(stop_above=limit)
    if full <= limit:
        assert stopped == full
    else:
        assert limit < stopped <= full


def test_the_body_is_what_the_count_was_taken_over() -> None:
    request = ProviderRequest(
        model="m",
        messages=({"role": "user", "content": "Hi"},),
        max_output_tokens=99,
        stream=True,
        params={"stop": "X"},
    )
    body = json.loads(request.body(output_tokens=42, token_param="max_completion_tokens"))
    assert body == {
        "stop": "X",
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 42,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# -- what may have reached the provider, through aiohttp's pool -----------------------------


PROVIDER_URL = yarl.URL("https://provider.example/")
REQUEST_INFO = aiohttp.RequestInfo(PROVIDER_URL, "POST", CIMultiDictProxy(CIMultiDict()), PROVIDER_URL)


def failing_with(error: Exception, *, mapped_by: type[httpx.TransportError] | None) -> AiohttpErrors:
    """llmguard's aiohttp transport over one that raises ``error``: raw, as httpx-aiohttp lets some
    through, or as the httpx error it maps it to (``mapped_by``)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if mapped_by is None:
            raise error
        raise mapped_by("mapped", request=request) from error

    return AiohttpErrors(httpx.MockTransport(handler))


@pytest.mark.parametrize("mapped_by", [httpx.ConnectTimeout, None], ids=["as-httpx-aiohttp-maps-it", "raw"])
@pytest.mark.parametrize(
    ("error", "sent", "out_of_time"),
    [
        pytest.param(
            aiohttp.ClientConnectorError(ConnectionKey("p", 443, False, True, None, None, None), OSError(111, "x")),
            False,
            False,
            id="refused",
        ),
        pytest.param(aiohttp.ConnectionTimeoutError(), False, True, id="connect-timeout"),
        pytest.param(aiohttp.ClientConnectionResetError("Cannot write to closing transport"), False, False, id="reset"),
        pytest.param(aiohttp.ServerDisconnectedError(), True, False, id="hung-up"),
        pytest.param(aiohttp.SocketTimeoutError(), True, True, id="read-timeout"),
        pytest.param(
            aiohttp.ClientResponseError(REQUEST_INFO, (), status=400, message="bad status line"),
            True,
            False,
            id="bad-status-line",
        ),
    ],
)
async def test_aiohttp_errors_are_judged_by_aiohttp_s_own_class(
    error: Exception, sent: bool, out_of_time: bool, mapped_by: type[httpx.TransportError] | None
) -> None:
    # httpx-aiohttp maps a refused connection and a hang-up alike (ConnectTimeout), and lets some
    # errors through unmapped: only aiohttp's own class says whether the request went out.
    transport = failing_with(error, mapped_by=mapped_by)
    with pytest.raises(httpx.TransportError) as caught:
        await transport.handle_async_request(httpx.Request("POST", "https://provider.example/v1/chat/completions"))
    assert never_sent(caught.value) is not sent
    assert timed_out(caught.value) is out_of_time
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("base_url", "seconds"),
    [("https://api.openai.com/v1", 30.0), ("http://localhost:8000/v1", 4.0), ("https://api.groq.com/openai/v1", 4.0)],
)
def test_idle_connections_are_dropped_before_the_provider_drops_them(base_url: str, seconds: float) -> None:
    # uvicorn-based providers close idle connections after 5 s: reusing one then fails the request.
    assert keepalive_expiry(base_url) == seconds
