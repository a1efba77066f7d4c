"""TokenBudget: prompt size, per-client token windows, monthly token and dollar caps, reservations."""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from conftest import KEY, ORIGIN, find, make_settings
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from servers import ThreadedServer
from starlette.requests import Request

from llmguard import ChatEndpoint, TokenBudget, create_app
from llmguard._budget import ClientBudgets
from llmguard._charges import (
    IN_FLIGHT_TOKENS,
    Counter,
    charge,
    client_wait,
    humane,
    next_month,
    output_room,
    refusal,
    units,
)
from llmguard._errors import SpendCapReached, TokenCapReached
from llmguard._prices import DEFAULT_PRICES, Price
from llmguard._state import RequestState, Usage
from llmguard._storage import Storage
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard.testing import FakeProvider, FakeReply

MODEL = make_settings().openai_model
LIMIT_PARAM = make_settings().token_limit_param
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}
STREAM = {**HELLO, "stream": True}
# What the server (and the fake provider, which uses the same estimate) counts for HELLO.
PROMPT = estimate_prompt_tokens(["Hello"])
IP = "203.0.113.7"


def words(count: int) -> FakeReply:
    """A reply of ``count`` deltas; the fake reports one completion token per delta."""
    return FakeReply(chunks=["word "] * count)


# -- an app with its storage in reach ------------------------------------------------


class Guarded:
    """The bundled app in-process, with clients from any IP and its budget's counters."""

    def __init__(self, app: Any, provider: FakeProvider, clients: list[httpx.AsyncClient]) -> None:
        self.app = app
        self.provider = provider
        self.budget = find(app, TokenBudget)
        self._clients = clients

    def client(self, ip: str = IP) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 50000)),
            base_url="http://testserver",
            headers={"origin": ORIGIN},
        )
        self._clients.append(client)
        return client

    async def token(self, client: httpx.AsyncClient | None = None, headers: dict[str, str] | None = None) -> str:
        response = await (client or self.client()).post("/api/token", headers=headers or {})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def chat(
        self, body: Any = HELLO, *, token: str | None = None, client: httpx.AsyncClient | None = None
    ) -> httpx.Response:
        client = client or self.client()
        token = token or await self.token(client)
        headers = {"authorization": f"Bearer {token}"}
        if isinstance(body, bytes):
            return await client.post("/api/chat", content=body, headers=headers)
        return await client.post("/api/chat", json=body, headers=headers)

    async def client_tokens(self, client: str = f"ip:{IP}") -> int:
        """Tokens counted on one client's window (this period and the last one)."""
        return await client_tokens(self.budget, client)

    async def month(self, kind: str = "tokens") -> int:
        return await self.budget.storage.get(f"budget:month-{kind}:{datetime.now(timezone.utc):%Y-%m}")

    async def counters(self) -> tuple[int, int, int]:
        return await self.client_tokens(), await self.month("tokens"), await self.month("spend")


async def client_tokens(budget: TokenBudget, client: str) -> int:
    assert budget.window is not None
    period = int(time.time() // budget.window.get_expiry())
    return sum([await budget.storage.get(f"budget:client:{client}:{p}") for p in (period - 1, period)])


Factory = Callable[..., Any]


@pytest.fixture
async def guarded(provider: FakeProvider) -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []
    lifespans: list[Any] = []

    async def make(*, authenticate: Any = None, transport: Any = None, **overrides: Any) -> Guarded:
        app = create_app(
            make_settings(**overrides), authenticate=authenticate, transport=transport or provider.transport()
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        lifespans.append(lifespan)
        return Guarded(app, provider, clients)

    yield make
    for client in clients:
        await client.aclose()
    for lifespan in reversed(lifespans):
        await lifespan.__aexit__(None, None, None)


async def eventually(condition: Callable[[], Any]) -> None:
    """Wait until ``condition()`` (sync or async) holds; fail after five seconds."""
    with anyio.fail_after(5):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await anyio.sleep(0.01)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert body["message"]
    return body


def seconds_to_next_month() -> float:
    now = datetime.now(timezone.utc)
    return next_month(now).timestamp() - now.timestamp()


# -- prompt size -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "body"),
    [
        pytest.param({}, {"messages": [{"role": "user", "content": "x" * 400}]}, id="one-long-message"),
        pytest.param(
            {},
            {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 40} for i in range(9)]},
            id="long-history",
        ),
        pytest.param({"system_prompt": "y" * 400}, HELLO, id="server-system-prompt"),
        pytest.param({}, {**HELLO, "system": "z" * 400}, id="client-system-prompt"),
        pytest.param({}, {"messages": [{"role": "user", "content": "x" * 400}], "stream": True}, id="stream"),
    ],
)
async def test_an_oversized_prompt_gets_413_and_never_reaches_the_provider(
    guarded: Factory, settings: dict[str, Any], body: Any
) -> None:
    app = await guarded(max_prompt_tokens=50, monthly_token_cap=100_000, **settings)
    response = await app.chat(body)
    error = assert_error(response, 413, "PromptTooLarge")
    assert "50" in error["message"]
    assert app.provider.requests == []
    assert await app.month() == 0


async def test_a_prompt_within_max_prompt_tokens_is_served(guarded: Factory) -> None:
    app = await guarded(max_prompt_tokens=estimate_prompt_tokens(["x" * 400]))
    response = await app.chat({"messages": [{"role": "user", "content": "x" * 400}]})
    assert response.status_code == 200, response.text


# -- the per-client window -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_past_its_token_window_gets_429_with_when_to_retry(guarded: Factory, stream: bool) -> None:
    app = await guarded(tokens_per_ip="60/hour", max_tokens=40)
    app.provider.enqueue(words(40))
    client = app.client()
    token = await app.token(client)
    first = await app.chat(STREAM if stream else HELLO, token=token, client=client)
    assert first.status_code == 200, first.text
    assert await app.client_tokens() == PROMPT + 40

    refused = await app.chat(STREAM if stream else HELLO, token=token, client=client)
    error = assert_error(refused, 429, "TokenBudgetExceeded")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2 * 3600
    assert error["retry_after"] == retry_after
    assert "try again" in error["message"].lower()
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    assert len(app.provider.requests) == 1
    assert await app.client_tokens() == PROMPT + 40, "a refusal must give its reservation back"


def user_from_header(request: Request) -> Mapping[str, Any]:
    claims: dict[str, Any] = {"sub": request.headers["x-user"]}
    if "x-quota" in request.headers:
        claims["quota"] = int(request.headers["x-quota"])
    return claims


async def test_budgets_follow_the_user_when_the_token_names_one(guarded: Factory) -> None:
    app = await guarded(tokens_per_ip="60/hour", max_tokens=40, authenticate=user_from_header)
    app.provider.enqueue(words(40), words(40))
    client = app.client()  # both users behind one IP (an office, a mobile carrier)
    alice = await app.token(client, {"x-user": "alice"})
    bob = await app.token(client, {"x-user": "bob"})

    assert (await app.chat(token=alice, client=client)).status_code == 200
    assert_error(await app.chat(token=alice, client=client), 429, "TokenBudgetExceeded")
    assert (await app.chat(token=bob, client=client)).status_code == 200

    assert await app.client_tokens("user:alice") == PROMPT + 40
    assert await app.client_tokens("user:bob") == PROMPT + 40
    assert await app.client_tokens(f"ip:{IP}") == 0


async def test_without_a_user_the_budget_follows_the_ip(guarded: Factory) -> None:
    app = await guarded(tokens_per_ip="60/hour", max_tokens=40)
    app.provider.enqueue(words(40), words(40))
    here = app.client(IP)
    assert (await app.chat(client=here)).status_code == 200
    # A fresh token does not buy a fresh budget.
    assert_error(await app.chat(client=here), 429, "TokenBudgetExceeded")
    assert (await app.chat(client=app.client("198.51.100.20"))).status_code == 200
    assert await app.client_tokens("ip:198.51.100.20") == PROMPT + 40


@pytest.mark.parametrize(
    ("window", "quota", "second_status"),
    [
        pytest.param("60/hour", 1000, 200, id="larger-quota"),
        pytest.param("100000/day", 60, 429, id="smaller-quota"),
    ],
)
async def test_a_quota_claim_replaces_the_window_amount(
    guarded: Factory, window: str, quota: int, second_status: int
) -> None:
    app = await guarded(tokens_per_ip=window, max_tokens=40, authenticate=user_from_header)
    app.provider.enqueue(words(40), words(40), words(40))
    client = app.client()
    token = await app.token(client, {"x-user": "carol", "x-quota": str(quota)})
    assert (await app.chat(token=token, client=client)).status_code == 200
    assert (await app.chat(token=token, client=client)).status_code == second_status
    # The quota is that user's: another user keeps the window's amount.
    other = await app.token(client, {"x-user": "dave"})
    assert (await app.chat(token=other, client=client)).status_code == 200


async def test_a_zero_quota_allows_nothing(guarded: Factory) -> None:
    # An app that hands out what is left of a user's plan must be able to say "nothing left".
    app = await guarded(tokens_per_ip="100000/day", authenticate=user_from_header)
    client = app.client()
    token = await app.token(client, {"x-user": "erin", "x-quota": "0"})
    assert_error(await app.chat(token=token, client=client), 429, "TokenBudgetExceeded")
    assert app.provider.requests == []


@pytest.mark.parametrize(
    ("settings", "quota"),
    [
        pytest.param({"tokens_per_ip": "20/hour"}, None, id="window"),
        pytest.param({"tokens_per_ip": "100000/day"}, "20", id="quota"),
    ],
)
async def test_a_request_that_can_never_fit_the_window_is_not_told_to_retry(
    guarded: Factory, settings: dict[str, Any], quota: str | None
) -> None:
    # The prompt and the smallest output (16 tokens) are more than the whole allowance:
    # no wait makes room, so a Retry-After would send the client back for the same refusal.
    app = await guarded(authenticate=user_from_header, **settings)
    client = app.client()
    token = await app.token(client, {"x-user": "frank", **({"x-quota": quota} if quota else {})})
    response = await app.chat(token=token, client=client)
    assert response.json()["error"] == "TokenBudgetExceeded"
    assert "retry-after" not in response.headers
    assert app.provider.requests == []


# -- reservation and settlement ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "stream", "completion"),
    [
        pytest.param(words(7), False, 7, id="json"),
        pytest.param(words(7), True, 7, id="stream"),
        # Without a reported usage, what came back is bounded: the text's upper-bound estimate.
        pytest.param(
            FakeReply(chunks=["word "] * 7, usage=False),
            False,
            estimate_text_tokens("word " * 7),
            id="json-without-usage",
        ),
        pytest.param(
            FakeReply(chunks=["word "] * 7, usage=False),
            True,
            max(7, estimate_text_tokens("word " * 7)),
            id="stream-without-usage",
        ),
        # A stream the provider cut after 3 deltas: what came, and what may have been in flight.
        pytest.param(
            FakeReply(chunks=["word "] * 7, cut_after=3),
            True,
            max(3, estimate_text_tokens("word " * 3)) + IN_FLIGHT_TOKENS,
            id="stream-cut-by-the-provider",
        ),
    ],
)
async def test_the_counters_settle_to_what_the_reply_used(
    guarded: Factory, reply: FakeReply, stream: bool, completion: int
) -> None:
    app = await guarded(tokens_per_ip="100000/day", monthly_token_cap=1_000_000, monthly_spend_cap_usd=100.0)
    app.provider.enqueue(reply)
    response = await app.chat(STREAM if stream else HELLO)
    assert response.status_code == 200, response.text
    if not stream:
        assert response.json()["usage"]["total_tokens"] == PROMPT + completion
    price = DEFAULT_PRICES[MODEL]
    assert await app.counters() == (PROMPT + completion, PROMPT + completion, price.micro_usd(PROMPT, completion))


def showing_reasoning(*, stream: bool) -> httpx.MockTransport:
    """A provider whose reply shows reasoning (as DeepSeek-style providers do) and reports no usage,
    for a model whose name says nothing of it; a stream of it is cut before it finishes."""

    def handler(request: httpx.Request) -> httpx.Response:
        if not stream:
            message = {"role": "assistant", "content": "Paris.", "reasoning_content": "The capital of France."}
            return httpx.Response(200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
        events = [{"reasoning_content": "Thinking"}, {"content": "Par"}]
        body = b"".join(
            b"data: " + json.dumps({"choices": [{"index": 0, "delta": d}]}).encode() + b"\n\n" for d in events
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_that_shows_reasoning_is_charged_as_a_reasoning_model(guarded: Factory, stream: bool) -> None:
    # Its hidden tokens are not in the text: without the provider's usage, the whole output cap.
    app = await guarded(tokens_per_ip="100000/day", max_tokens=300, transport=showing_reasoning(stream=stream))
    response = await app.chat(STREAM if stream else HELLO)
    assert response.status_code == 200, response.text
    assert await app.client_tokens() == PROMPT + 300


async def test_the_worst_case_is_held_while_the_provider_answers(guarded: Factory) -> None:
    app = await guarded(tokens_per_ip="100000/day", monthly_token_cap=1_000_000, max_tokens=300)
    app.provider.enqueue(FakeReply(chunks=["word "] * 5, first_byte_delay=0.3))
    held: tuple[int, int] | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app.chat)
        await eventually(lambda: bool(app.provider.requests))
        held = (await app.client_tokens(), await app.month())
    assert held == (PROMPT + 300, PROMPT + 300)
    assert (await app.client_tokens(), await app.month()) == (PROMPT + 5, PROMPT + 5)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 400])
async def test_a_provider_refusal_leaves_the_counters_where_they_were(
    guarded: Factory, stream: bool, status: int
) -> None:
    app = await guarded(tokens_per_ip="100000/day", monthly_token_cap=1_000_000, monthly_spend_cap_usd=100.0)
    app.provider.enqueue(words(7), FakeReply.failure(status))
    assert (await app.chat()).status_code == 200
    before = await app.counters()
    response = await app.chat(STREAM if stream else HELLO)
    assert_error(response, 502, "UpstreamError")
    assert await app.counters() == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param({"messages": []}, id="no-messages"),
        pytest.param({"messages": [{"role": "system", "content": "obey"}]}, id="system-message"),
        pytest.param({"messages": [{"role": "user", "content": 42}]}, id="not-text"),
    ],
)
async def test_an_invalid_request_leaves_the_counters_untouched(guarded: Factory, body: Any) -> None:
    app = await guarded(tokens_per_ip="100000/day", monthly_token_cap=1_000_000, monthly_spend_cap_usd=100.0)
    app.provider.enqueue(words(7))
    assert (await app.chat()).status_code == 200
    before = await app.counters()
    response = await app.chat(body)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"] == "InvalidRequest"
    assert await app.counters() == before
    assert len(app.provider.requests) == 1


# -- lowering the output cap ------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "lowered"),
    [
        pytest.param({"tokens_per_ip": "100/hour"}, 100 - (PROMPT + 40) - PROMPT, id="window"),
        pytest.param({"monthly_token_cap": 100}, 100 - (PROMPT + 40) - PROMPT, id="month-tokens"),
        # 125 µ$ cap, 68 µ$ spent (9 x 0.40 + 40 x 1.60, rounded up), 4 µ$ for the prompt:
        # 53 µ$ left at 1.60 µ$ an output token is 33 tokens.
        pytest.param({"monthly_spend_cap_usd": 0.000125}, 33, id="month-spend"),
    ],
)
async def test_with_little_left_the_provider_is_asked_for_fewer_tokens(
    guarded: Factory, settings: dict[str, Any], lowered: int
) -> None:
    app = await guarded(max_tokens=60, **settings)
    app.provider.enqueue(words(40), words(10))
    assert (await app.chat()).status_code == 200
    assert app.provider.last_request.json[LIMIT_PARAM] == 60

    response = await app.chat()
    assert response.status_code == 200, response.text
    assert response.json()["content"]
    assert app.provider.last_request.json[LIMIT_PARAM] == lowered


async def test_a_client_asking_for_fewer_tokens_reserves_fewer(guarded: Factory) -> None:
    app = await guarded(monthly_token_cap=1_000_000, max_tokens=500)
    app.provider.enqueue(FakeReply(chunks=["word "] * 5, first_byte_delay=0.3))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app.chat, {**HELLO, "max_tokens": 30})
        await eventually(lambda: bool(app.provider.requests))
        assert await app.month() == PROMPT + 30
    assert app.provider.last_request.json[LIMIT_PARAM] == 30


# -- the monthly caps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        pytest.param({"monthly_token_cap": 50}, "TokenCapReached", id="tokens"),
        pytest.param({"monthly_spend_cap_usd": 0.00008}, "SpendCapReached", id="dollars"),
    ],
)
async def test_a_monthly_cap_refuses_everyone_with_503_until_next_month(
    guarded: Factory, settings: dict[str, Any], code: str
) -> None:
    app = await guarded(max_tokens=40, **settings)
    app.provider.enqueue(words(40))
    assert (await app.chat()).status_code == 200

    for ip in (IP, "198.51.100.20", "2001:db8::1"):
        refused = await app.chat(client=app.client(ip))
        error = assert_error(refused, 503, code)
        retry_after = int(refused.headers["retry-after"])
        assert error["retry_after"] == retry_after
        assert abs(retry_after - seconds_to_next_month()) <= 5
        assert "month" in error["message"]
    assert len(app.provider.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("prices", "price"),
    [
        pytest.param({}, DEFAULT_PRICES[MODEL], id="built-in-price"),
        pytest.param({MODEL: Price(1.0, 2.0)}, Price(1.0, 2.0), id="model-prices"),
    ],
)
async def test_the_access_log_carries_the_tokens_and_their_cost(
    guarded: Factory, caplog: pytest.LogCaptureFixture, stream: bool, prices: dict[str, Price], price: Price
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    app = await guarded(model_prices=prices)
    app.provider.enqueue(words(40))
    assert (await app.chat(STREAM if stream else HELLO)).status_code == 200
    fields = [r for r in caplog.records if r.name == "llmguard.access"][-1].llmguard  # type: ignore[attr-defined]
    assert fields["path"] == "/api/chat"
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (PROMPT, 40)
    expected = (PROMPT * price.input + 40 * price.output) / 1e6
    assert fields["cost_usd"] == pytest.approx(expected, abs=1e-6)


# -- concurrency -------------------------------------------------------------------------


class WorstCaseReplies(httpx.AsyncBaseTransport):
    """The fake provider, answering each request with exactly the output cap it was given.

    Replies that use their whole grant give nothing back at settlement, so the
    total asked of the provider can only stay within a budget if the
    reservations did.
    """

    def __init__(self, provider: FakeProvider, *, first_byte_delay: float) -> None:
        self.provider = provider
        self.inner = provider.transport()
        self.first_byte_delay = first_byte_delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        payload = json.loads(await request.aread())
        # No await between enqueue and the fake taking the reply: it goes to this request.
        self.provider.enqueue(FakeReply(chunks=["w"] * payload[LIMIT_PARAM], first_byte_delay=self.first_byte_delay))
        return await self.inner.handle_async_request(request)


def reported_total(response: httpx.Response) -> int:
    """The total tokens a served reply reported, JSON or stream."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        total: int = response.json()["usage"]["total_tokens"]
        return total
    for line in response.text.splitlines():
        if line.startswith("data: {") and (event := json.loads(line[6:]))["type"] == "finish":
            total = event["messageMetadata"]["usage"]["total_tokens"]
            return total
    raise AssertionError("no finish event in the stream")


@pytest.mark.parametrize(
    ("settings", "status", "code"),
    [
        pytest.param({"monthly_token_cap": 3000}, 503, "TokenCapReached", id="monthly-cap"),
        pytest.param({"tokens_per_ip": "3000/hour"}, 429, "TokenBudgetExceeded", id="client-window"),
    ],
)
async def test_a_burst_of_concurrent_requests_never_asks_the_provider_for_more_than_the_budget(
    guarded: Factory, provider: FakeProvider, settings: dict[str, Any], status: int, code: str
) -> None:
    delay = 0.5
    app = await guarded(max_tokens=500, transport=WorstCaseReplies(provider, first_byte_delay=delay), **settings)
    client = app.client()
    token = await app.token(client)
    bodies = [STREAM if i % 2 else HELLO for i in range(32)]
    responses: list[httpx.Response] = []

    async def one(body: Any) -> None:
        responses.append(await app.chat(body, token=token, client=client))

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tasks:
            for body in bodies:
                tasks.start_soon(one, body)

    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    received = [r.received_at for r in provider.requests]
    assert max(received) - min(received) < delay, "the requests did not overlap: this burst proves nothing"
    assert served
    assert refused
    assert len(served) == len(provider.requests)
    for response in refused:
        assert_error(response, status, code)
        assert int(response.headers["retry-after"]) >= 1

    asked = sum(PROMPT + r.json[LIMIT_PARAM] for r in provider.requests)
    assert asked <= 3000
    reported = sum(reported_total(r) for r in served)
    counter = await app.month() if "monthly_token_cap" in settings else await app.client_tokens()
    assert counter == reported == asked


# -- a client that goes away ------------------------------------------------------------


async def test_a_client_abort_mid_stream_is_charged_for_what_was_streamed(provider: FakeProvider) -> None:
    app = create_app(make_settings(tokens_per_ip="100000/day"), transport=provider.transport())
    budget = find(app, TokenBudget)
    provider.enqueue(FakeReply(chunks=["word "] * 200, delay=0.02))
    read: list[str] = []
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, headers={"origin": ORIGIN}, timeout=10) as client:
            token = (await client.post("/api/token")).json()["token"]
            headers = {"authorization": f"Bearer {token}"}
            async with client.stream("POST", "/api/chat", json=STREAM, headers=headers) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["type"] == "text-delta":
                        read.append(json.loads(line[6:])["delta"])
                        if len(read) == 3:
                            break
        reservation = PROMPT + make_settings().max_tokens
        settled: list[int] = []

        async def charged_now() -> bool:
            settled.append(await client_tokens(budget, "ip:127.0.0.1"))
            return settled[-1] != reservation

        await eventually(charged_now)
        charged = settled[-1]
        record = provider.last_request
        assert not record.finished, "the provider call should have been cut short"
        # At least what the provider sent (the client read some of it, the rest was in flight) ...
        assert PROMPT + record.deltas_sent <= charged
        assert PROMPT + estimate_text_tokens("".join(read)) <= charged
        # ... and at most that, bounded, plus what may have been in flight when the stream was cut
        # (+1: the fake counts a delta once the next one is asked for).
        sent = "word " * (record.deltas_sent + 1)
        assert charged <= PROMPT + max(record.deltas_sent + 1, estimate_text_tokens(sent)) + IN_FLIGHT_TOKENS


# -- the storage failing during the reservation ---------------------------------------


@pytest.mark.parametrize(
    ("failure", "status"),
    [pytest.param("closed", 503, id="closed"), pytest.param("open", 200, id="open")],
)
async def test_a_storage_failure_during_the_reservation_follows_the_policy(
    provider: FakeProvider, broken_redis_url: str, failure: Any, status: int
) -> None:
    storage = Storage(broken_redis_url, failure=failure, timeout=0.2)
    chat = ChatEndpoint(api_key=KEY, max_tokens=300, transport=provider.transport(), retries=0)
    app = TokenBudget(chat, storage=storage, tokens_per_client="1000/hour", monthly_token_cap=10_000)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            with anyio.fail_after(5):
                response = await client.post("/api/chat", json=HELLO)
    finally:
        await chat.aclose()
    assert response.status_code == status, response.text
    if failure == "closed":
        assert_error(response, 503, "StorageUnavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert provider.requests == []
    else:
        assert response.json()["content"]
        assert provider.last_request.json[LIMIT_PARAM] == 300


# -- units: when to retry -------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2025, 12, 15, 8, 30, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)),
        (datetime(2024, 2, 29, 12, tzinfo=timezone.utc), datetime(2024, 3, 1, tzinfo=timezone.utc)),
    ],
)
def test_next_month_starts_on_the_first_at_midnight_utc(moment: datetime, expected: datetime) -> None:
    assert next_month(moment) == expected


def fits_after(wait: float, *, now: float, previous: int, current: int, needed: int, limit: int, length: int) -> bool:
    """Whether the sliding window has room for ``needed`` tokens ``wait`` seconds from ``now``."""
    later = now + wait
    start = now - now % length
    if later < start + length:
        used = previous * (1 - (later % length) / length) + current
    elif later < start + 2 * length:
        used = current * (1 - (later % length) / length)
    else:
        used = 0
    return used + needed <= limit + 1e-9


@pytest.mark.parametrize(
    ("into", "previous", "current", "needed"),
    [
        pytest.param(0, 50, 30, 40, id="the-last-period-fades"),
        pytest.param(1200, 120, 0, 40, id="the-last-period-fades-later-on"),
        pytest.param(1800, 0, 80, 40, id="this-period-fades-in-the-next"),
        pytest.param(3000, 60, 70, 40, id="both"),
        pytest.param(100, 100, 0, 3, id="almost-room"),
    ],
)
def test_the_client_retry_after_is_when_the_window_has_room_again(
    into: int, previous: int, current: int, needed: int
) -> None:
    length, limit = 3600, 100
    now = 1000 * length + into
    carried = previous * (1 - into / length)
    assert not fits_after(0, now=now, previous=previous, current=current, needed=needed, limit=limit, length=length)
    wait = client_wait(limit=limit, carried=carried, current=current, needed=needed, now=now, length=length)
    state = {"now": now, "previous": previous, "current": current, "needed": needed, "limit": limit, "length": length}
    assert wait >= 1
    assert fits_after(wait, **state)
    # And not much sooner: the estimate is whole seconds, rounded up.
    assert wait == 1 or not fits_after(wait - 1.5, **state)


@pytest.mark.parametrize(
    ("kind", "code"),
    [("month-tokens", "TokenCapReached"), ("month-spend", "SpendCapReached")],
)
def test_a_monthly_refusal_says_to_retry_at_the_start_of_next_month(kind: Any, code: str) -> None:
    now = datetime(2025, 12, 31, 23, 59, 30, tzinfo=timezone.utc).timestamp()
    counter = Counter(kind, f"budget:{kind}:2025-12", 1000, 86400)
    error = refusal(counter, 1000, now=now, needed=25)
    assert (error.code, error.status_code, error.retry_after) == (code, 503, 30)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (2, "2 seconds"), (89, "89 seconds"), (90, "2 minutes"), (600, "10 minutes"), (5400, "2 hours")],
)
def test_retry_times_read_naturally(seconds: int, text: str) -> None:
    assert humane(seconds) == text


def test_the_refusal_message_says_when_to_retry() -> None:
    counter = Counter("client", "budget:client:ip:192.0.2.1:1000", 100, 7200, period=3600)
    error = refusal(counter, 80, now=1000 * 3600 + 1800, needed=40)
    assert (error.code, error.status_code) == ("TokenBudgetExceeded", 429)
    assert error.retry_after is not None
    assert f"Try again in {humane(error.retry_after)}." in error.message


# -- properties of the arithmetic and of reservations (hypothesis) -----------------------------

counts = st.integers(min_value=0, max_value=100_000)
caps = st.integers(min_value=1, max_value=100_000)
recorded = st.one_of(
    st.just(("nothing", None)),
    st.just(("refused", None)),
    st.tuples(st.just("usage"), st.tuples(counts, counts)),
    st.tuples(st.just("text"), st.tuples(counts, st.booleans())),
)


@given(prompt=counts, cap=caps, outcome=recorded, reasoning=st.booleans())
def test_a_charge_is_never_negative_and_never_below_what_was_seen(
    prompt: int, cap: int, outcome: tuple[str, Any], reasoning: bool
) -> None:
    kind, detail = outcome
    usage = Usage(*detail) if kind == "usage" else None
    text, complete = detail if kind == "text" else (None, False)
    charged = charge(
        prompt_tokens=prompt,
        output_cap=cap,
        refused=kind == "refused",
        usage=usage,
        output_text_tokens=text,
        complete=complete,
        reasoning=reasoning,
    )
    assert charged.prompt_tokens >= 0
    assert charged.completion_tokens >= 0
    if usage is not None:
        assert charged == usage  # the provider's word is final
    elif kind == "refused":
        assert charged.total_tokens == 0
    else:
        # Never more than the provider could bill (it got this output cap) ...
        assert charged.prompt_tokens == prompt
        assert charged.completion_tokens <= cap
        # ... never less than what came back, and the worst case whenever hidden tokens are possible.
        assert charged.completion_tokens >= min(cap, text or 0)
        if kind == "nothing" or reasoning:
            assert charged.completion_tokens == cap


prices = st.builds(Price, st.floats(0, 100), st.floats(0.01, 200))


@given(kind=st.sampled_from(["client", "month-tokens", "month-spend"]), price=prices, room=counts, prompt=counts)
def test_the_output_room_fits_in_the_room(kind: Any, price: Price, room: int, prompt: int) -> None:
    output = output_room(kind, price, room, prompt)
    if output >= 0:
        assert units(kind, price, prompt, output) <= room
        # And it is the largest that fits (one more token would not).
        assert units(kind, price, prompt, output + 1) > room or output >= 1 << 30


@given(
    length=st.sampled_from([60, 3600, 86400]),
    into=st.floats(0, 0.999),
    previous=st.integers(0, 1000),
    current=st.integers(0, 1000),
    needed=st.integers(1, 500),
    limit=st.integers(1, 1000),
)
def test_the_client_wait_is_when_there_is_room_again(
    length: int, into: float, previous: int, current: int, needed: int, limit: int
) -> None:
    now = 1000 * length + into * length
    state = {"now": now, "previous": previous, "current": current, "needed": needed, "limit": limit, "length": length}
    carried = previous * (1 - (now % length) / length)
    assume(needed <= limit and not fits_after(0, **state))
    wait = client_wait(limit=limit, carried=carried, current=current, needed=needed, now=now, length=length)
    assert wait >= 1
    assert fits_after(wait, **state)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


requests = st.lists(
    st.tuples(st.integers(1, 400), st.integers(1, 600), recorded, st.integers(0, 3)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(requests=requests, limit=st.integers(20, 3000), spend=st.booleans())
def test_concurrent_reservations_never_pass_the_cap_and_each_settles_once(
    requests: list[tuple[int, int, tuple[str, Any], int]], limit: int, spend: bool
) -> None:
    price = DEFAULT_PRICES[MODEL]

    async def scenario() -> None:
        storage = Storage("memory://")
        owner = TokenBudget(
            _no_app,
            storage=storage,
            tokens_per_client=None,
            monthly_token_cap=None if spend else limit,
            monthly_spend_cap_usd=limit / 1e6 if spend else None,  # micro-dollars: the same numbers
            min_output_tokens=1,
        )
        budgets = ClientBudgets(owner, "ip:192.0.2.1", RequestState())
        kind = "month-spend" if spend else "month-tokens"
        key = f"budget:{kind}:{datetime.now(timezone.utc):%Y-%m}"
        charges: list[int] = []

        async def one(prompt: int, cap: int, outcome: tuple[str, Any], pauses: int) -> None:
            try:
                reservation = await budgets.reserve(model=MODEL, prompt_tokens=prompt, max_output_tokens=cap)
            except (TokenCapReached, SpendCapReached):
                return
            assert 1 <= reservation.output_tokens <= cap
            assert await storage.get(key) <= limit, "the holds passed the cap"
            for _ in range(pauses):
                await anyio.lowlevel.checkpoint()  # let the others interleave
            kind_, detail = outcome
            if kind_ == "refused":
                reservation.refused()
            elif kind_ == "usage":
                # What a provider may bill: at most the prompt bound and the granted output cap.
                used = Usage(detail[0] % (prompt + 1), detail[1] % (reservation.output_tokens + 1))
                reservation.answered(used, 0, complete=True)
            elif kind_ == "text":
                reservation.answered(None, detail[0], complete=detail[1])
            charged = await reservation.settle()
            assert await reservation.settle() is charged  # twice, charged once
            charges.append(units(kind, price, charged.prompt_tokens, charged.completion_tokens))

        async with anyio.create_task_group() as tasks:
            for request in requests:
                tasks.start_soon(one, *request)
        await budgets.settle_all()  # the middleware's net: nothing more to do
        total = await storage.get(key)
        assert total == sum(charges)
        assert total <= limit

    anyio.run(scenario)
