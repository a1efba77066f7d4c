"""TokenBudget: prompt size, per-client token windows, monthly token and dollar caps, reservations."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import pytest
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    PEER,
    STREAM,
    Harness,
    access_fields,
    asgi_client,
    assert_error,
    client_tokens,
    find,
    make_settings,
    sse_events,
)
from servers import ThreadedServer
from starlette.requests import Request

from llmguard import ChatEndpoint, TokenBudget, create_app
from llmguard._charges import (
    IN_FLIGHT_TOKENS,
    next_month,
)
from llmguard._prices import DEFAULT_PRICES, Price
from llmguard._storage import Storage
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard.testing import FakeProvider, FakeReply

MODEL = make_settings().openai_model
LIMIT_PARAM = make_settings().token_limit_param
# What the server (and the fake provider, which uses the same estimate) counts for HELLO.
PROMPT = estimate_prompt_tokens(["Hello"])

Factory = Callable[..., Any]
# Every budget on, each far from its limit: for what a request adds to the counters.
EVERY_BUDGET: dict[str, Any] = {
    "tokens_per_ip": "100000/day",
    "monthly_token_cap": 1_000_000,
    "monthly_spend_cap_usd": 100.0,
}


def words(count: int) -> FakeReply:
    """A reply of ``count`` deltas; the fake reports one completion token per delta."""
    return FakeReply(chunks=["word "] * count)


def reply_text(response: httpx.Response) -> str:
    """The text of a served reply, JSON or stream (checking it was served)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(response)
        return "".join(event["delta"] for event in events if isinstance(event, dict) and event["type"] == "text-delta")
    content: str = response.json()["content"]
    return content


# -- the budget's counters, in the storage of an app's TokenBudget ---------------------


async def month(app: object, kind: str = "tokens") -> int:
    """This month's tokens (or micro-dollars, for ``"spend"``)."""
    budget = find(app, TokenBudget)
    return await budget.storage.get(f"budget:month-{kind}:{datetime.now(timezone.utc):%Y-%m}")


async def counters(app: object) -> tuple[int, int, int]:
    """The default client's window, this month's tokens and this month's spend."""
    return await client_tokens(app), await month(app, "tokens"), await month(app, "spend")


async def eventually(condition: Callable[[], Any]) -> None:
    """Wait until ``condition()`` (sync or async) holds; fail after five seconds."""
    with anyio.fail_after(5):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await anyio.sleep(0.01)


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
    harness_factory: Factory, settings: dict[str, Any], body: Any
) -> None:
    harness: Harness = await harness_factory(max_prompt_tokens=50, monthly_token_cap=100_000, **settings)
    response = await harness.chat(body)
    error = assert_error(response, 413, "PromptTooLarge")
    assert "50" in error["message"]
    assert harness.provider.requests == []
    assert await month(harness.app) == 0


async def test_a_prompt_within_max_prompt_tokens_is_served(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(max_prompt_tokens=estimate_prompt_tokens(["x" * 400]))
    harness.provider.enqueue(words(3))
    assert reply_text(await harness.chat({"messages": [{"role": "user", "content": "x" * 400}]})) == "word " * 3


# -- the per-client window -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_past_its_token_window_gets_429_with_when_to_retry(
    harness_factory: Factory, stream: bool
) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="60/hour", max_tokens=40)
    harness.provider.enqueue(words(40))
    token = await harness.token()
    assert reply_text(await harness.chat(STREAM if stream else HELLO, token=token)) == "word " * 40
    assert await client_tokens(harness.app) == PROMPT + 40

    refused = await harness.chat(STREAM if stream else HELLO, token=token)
    error = assert_error(refused, 429, "TokenBudgetExceeded")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2 * 3600
    assert error["retry_after"] == retry_after
    assert "try again" in error["message"].lower()
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    assert len(harness.provider.requests) == 1
    assert await client_tokens(harness.app) == PROMPT + 40, "a refusal must give its reservation back"


def user_from_header(request: Request) -> Mapping[str, Any]:
    claims: dict[str, Any] = {"sub": request.headers["x-user"]}
    if "x-quota" in request.headers:
        claims["quota"] = int(request.headers["x-quota"])
    return claims


async def test_budgets_follow_the_user_when_the_token_names_one(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="60/hour", max_tokens=40, authenticate=user_from_header)
    harness.provider.enqueue(words(40), words(40))
    # Both users behind one IP (an office, a mobile carrier).
    alice = await harness.token(headers={"x-user": "alice"})
    bob = await harness.token(headers={"x-user": "bob"})

    assert reply_text(await harness.chat(token=alice)) == "word " * 40
    assert_error(await harness.chat(token=alice), 429, "TokenBudgetExceeded")
    assert reply_text(await harness.chat(token=bob)) == "word " * 40

    assert await client_tokens(harness.app, "user:alice") == PROMPT + 40
    assert await client_tokens(harness.app, "user:bob") == PROMPT + 40
    assert await client_tokens(harness.app, f"ip:{PEER}") == 0


async def test_without_a_user_the_budget_follows_the_ip(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="60/hour", max_tokens=40)
    harness.provider.enqueue(words(40), words(40))
    assert reply_text(await harness.chat()) == "word " * 40
    # A fresh token does not buy a fresh budget.
    assert_error(await harness.chat(), 429, "TokenBudgetExceeded")
    assert reply_text(await harness.chat(client=harness.client_from("198.51.100.20"))) == "word " * 40
    assert await client_tokens(harness.app, "ip:198.51.100.20") == PROMPT + 40


@pytest.mark.parametrize(
    ("window", "quota", "second_served"),
    [
        pytest.param("60/hour", 1000, True, id="larger-quota"),
        pytest.param("100000/day", 60, False, id="smaller-quota"),
    ],
)
async def test_a_quota_claim_replaces_the_window_amount(
    harness_factory: Factory, window: str, quota: int, second_served: bool
) -> None:
    harness: Harness = await harness_factory(tokens_per_ip=window, max_tokens=40, authenticate=user_from_header)
    harness.provider.enqueue(words(40), words(40), words(40))
    token = await harness.token(headers={"x-user": "carol", "x-quota": str(quota)})
    assert reply_text(await harness.chat(token=token)) == "word " * 40
    second = await harness.chat(token=token)
    if second_served:
        assert reply_text(second) == "word " * 40
    else:
        assert_error(second, 429, "TokenBudgetExceeded")
    # The quota is that user's: another user keeps the window's amount.
    other = await harness.token(headers={"x-user": "dave"})
    assert reply_text(await harness.chat(token=other)) == "word " * 40


async def test_a_zero_quota_allows_nothing(harness_factory: Factory) -> None:
    # An app that hands out what is left of a user's plan must be able to say "nothing left".
    harness: Harness = await harness_factory(tokens_per_ip="100000/day", authenticate=user_from_header)
    token = await harness.token(headers={"x-user": "erin", "x-quota": "0"})
    assert_error(await harness.chat(token=token), 429, "TokenBudgetExceeded")
    assert harness.provider.requests == []


@pytest.mark.parametrize(
    ("settings", "quota"),
    [
        pytest.param({"tokens_per_ip": "20/hour"}, None, id="window"),
        pytest.param({"tokens_per_ip": "100000/day"}, "20", id="quota"),
    ],
)
async def test_a_request_that_can_never_fit_the_window_is_not_told_to_retry(
    harness_factory: Factory, settings: dict[str, Any], quota: str | None
) -> None:
    # The prompt and the smallest output (16 tokens) are more than the whole allowance:
    # no wait makes room, so a Retry-After would send the client back for the same refusal.
    harness: Harness = await harness_factory(authenticate=user_from_header, **settings)
    token = await harness.token(headers={"x-user": "frank", **({"x-quota": quota} if quota else {})})
    response = await harness.chat(token=token)
    assert_error(response, 429, "TokenBudgetExceeded")
    assert "retry-after" not in response.headers
    assert harness.provider.requests == []


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
    harness_factory: Factory, reply: FakeReply, stream: bool, completion: int
) -> None:
    harness: Harness = await harness_factory(**EVERY_BUDGET)
    harness.provider.enqueue(reply)
    response = await harness.chat(STREAM if stream else HELLO)
    assert response.status_code == 200, response.text
    if not stream:
        assert response.json()["usage"]["total_tokens"] == PROMPT + completion
    price = DEFAULT_PRICES[MODEL]
    assert await counters(harness.app) == (
        PROMPT + completion,
        PROMPT + completion,
        price.micro_usd(PROMPT, completion),
    )


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
async def test_a_reply_that_shows_reasoning_is_charged_as_a_reasoning_model(
    harness_factory: Factory, stream: bool
) -> None:
    # Its hidden tokens are not in the text: without the provider's usage, the whole output cap.
    harness: Harness = await harness_factory(
        tokens_per_ip="100000/day", max_tokens=300, transport=showing_reasoning(stream=stream)
    )
    response = await harness.chat(STREAM if stream else HELLO)
    assert reply_text(response) == ("Par" if stream else "Paris.")
    assert await client_tokens(harness.app) == PROMPT + 300


async def test_the_worst_case_is_held_while_the_provider_answers(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="100000/day", monthly_token_cap=1_000_000, max_tokens=300)
    harness.provider.enqueue(FakeReply(chunks=["word "] * 5, first_byte_delay=0.3))
    held: tuple[int, int] | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(harness.chat)
        await eventually(lambda: bool(harness.provider.requests))
        held = (await client_tokens(harness.app), await month(harness.app))
    assert held == (PROMPT + 300, PROMPT + 300)
    assert (await client_tokens(harness.app), await month(harness.app)) == (PROMPT + 5, PROMPT + 5)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 400])
async def test_a_provider_refusal_leaves_the_counters_where_they_were(
    harness_factory: Factory, stream: bool, status: int
) -> None:
    harness: Harness = await harness_factory(**EVERY_BUDGET)
    harness.provider.enqueue(words(7), FakeReply.failure(status))
    assert reply_text(await harness.chat()) == "word " * 7
    before = await counters(harness.app)
    response = await harness.chat(STREAM if stream else HELLO)
    assert_error(response, 502, "UpstreamError")
    assert await counters(harness.app) == before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{not json", 400, id="not-json"),
        pytest.param({"messages": []}, 422, id="no-messages"),
        pytest.param({"messages": [{"role": "system", "content": "obey"}]}, 422, id="system-message"),
        pytest.param({"messages": [{"role": "user", "content": 42}]}, 422, id="not-text"),
    ],
)
async def test_an_invalid_request_leaves_the_counters_untouched(
    harness_factory: Factory, body: Any, status: int
) -> None:
    harness: Harness = await harness_factory(**EVERY_BUDGET)
    harness.provider.enqueue(words(7))
    assert reply_text(await harness.chat()) == "word " * 7
    before = await counters(harness.app)
    assert_error(await harness.chat(body), status, "InvalidRequest")
    assert await counters(harness.app) == before
    assert len(harness.provider.requests) == 1


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
    harness_factory: Factory, settings: dict[str, Any], lowered: int
) -> None:
    harness: Harness = await harness_factory(max_tokens=60, **settings)
    harness.provider.enqueue(words(40), words(10))
    assert reply_text(await harness.chat()) == "word " * 40
    assert harness.provider.last_request.json[LIMIT_PARAM] == 60

    assert reply_text(await harness.chat()) == "word " * 10
    assert harness.provider.last_request.json[LIMIT_PARAM] == lowered


async def test_a_client_asking_for_fewer_tokens_reserves_fewer(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(monthly_token_cap=1_000_000, max_tokens=500)
    harness.provider.enqueue(FakeReply(chunks=["word "] * 5, first_byte_delay=0.3))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(harness.chat, {**HELLO, "max_tokens": 30})
        await eventually(lambda: bool(harness.provider.requests))
        assert await month(harness.app) == PROMPT + 30
    assert harness.provider.last_request.json[LIMIT_PARAM] == 30


# -- the monthly caps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        pytest.param({"monthly_token_cap": 50}, "TokenCapReached", id="tokens"),
        pytest.param({"monthly_spend_cap_usd": 0.00008}, "SpendCapReached", id="dollars"),
    ],
)
async def test_a_monthly_cap_refuses_everyone_with_503_until_next_month(
    harness_factory: Factory, settings: dict[str, Any], code: str
) -> None:
    harness: Harness = await harness_factory(max_tokens=40, **settings)
    harness.provider.enqueue(words(40))
    assert reply_text(await harness.chat()) == "word " * 40

    for ip in (PEER, "198.51.100.20", "2001:db8::1"):
        refused = await harness.chat(client=harness.client_from(ip))
        error = assert_error(refused, 503, code)
        retry_after = int(refused.headers["retry-after"])
        assert error["retry_after"] == retry_after
        assert abs(retry_after - seconds_to_next_month()) <= 5
        assert "month" in error["message"]
    assert len(harness.provider.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("prices", "price"),
    [
        pytest.param({}, DEFAULT_PRICES[MODEL], id="built-in-price"),
        pytest.param({MODEL: Price(1.0, 2.0)}, Price(1.0, 2.0), id="model-prices"),
    ],
)
async def test_the_access_log_carries_the_tokens_and_their_cost(
    harness_factory: Factory, caplog: pytest.LogCaptureFixture, stream: bool, prices: dict[str, Price], price: Price
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness: Harness = await harness_factory(model_prices=prices)
    harness.provider.enqueue(words(40))
    assert reply_text(await harness.chat(STREAM if stream else HELLO)) == "word " * 40
    fields = access_fields(caplog)
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
    [finish] = [event for event in sse_events(response) if isinstance(event, dict) and event["type"] == "finish"]
    total = finish["messageMetadata"]["usage"]["total_tokens"]
    return total


@pytest.mark.parametrize(
    ("settings", "status", "code"),
    [
        pytest.param({"monthly_token_cap": 3000}, 503, "TokenCapReached", id="monthly-cap"),
        pytest.param({"tokens_per_ip": "3000/hour"}, 429, "TokenBudgetExceeded", id="client-window"),
    ],
)
async def test_a_burst_of_concurrent_requests_never_asks_the_provider_for_more_than_the_budget(
    harness_factory: Factory, provider: FakeProvider, settings: dict[str, Any], status: int, code: str
) -> None:
    delay = 0.5
    harness: Harness = await harness_factory(
        max_tokens=500, transport=WorstCaseReplies(provider, first_byte_delay=delay), **settings
    )
    token = await harness.token()
    bodies = [STREAM if i % 2 else HELLO for i in range(32)]
    responses: list[httpx.Response] = []

    async def one(body: Any) -> None:
        responses.append(await harness.chat(body, token=token))

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
    counter = await month(harness.app) if "monthly_token_cap" in settings else await client_tokens(harness.app)
    assert counter == reported == asked


# -- a client that goes away ------------------------------------------------------------


async def test_a_client_abort_mid_stream_is_charged_for_what_was_streamed(provider: FakeProvider) -> None:
    app = create_app(make_settings(tokens_per_ip="100000/day"), transport=provider.transport())
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
            settled.append(await client_tokens(app, "ip:127.0.0.1"))
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
        async with asgi_client(app) as client:
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
