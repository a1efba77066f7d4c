from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from harness import HELLO, ORIGIN, CountingApp, Harness, asgi_client, assert_error, preflight
from servers import RedisServer, closed_port_url

from llmguard._errors import StorageUnavailable
from llmguard._rate_limit import IPRateLimit
from llmguard._storage import Storage

# The IETF httpapi-ratelimit-headers draft: a structured-field List of one Item, a String
# (the policy name) with integer parameters.
STRUCTURED_ITEM = re.compile(r'^"[A-Za-z0-9_-]+"(;[a-z][a-z0-9_.*-]*=\d+)+$')
EXPOSED = {"retry-after", "ratelimit", "ratelimit-policy"}


async def statuses(client: httpx.AsyncClient, count: int, path: str = "/api/chat") -> list[int]:
    return [(await client.post(path)).status_code for _ in range(count)]


def params(header: str) -> dict[str, str]:
    assert STRUCTURED_ITEM.match(header), header
    name, *pairs = header.split(";")
    return {"name": name.strip('"'), **dict(pair.split("=", 1) for pair in pairs)}


def assert_refusal(response: httpx.Response, *, name: str, limit: int, window: int) -> int:
    """Check a 429 is the documented refusal; return its Retry-After."""
    body = assert_error(response, 429, "RateLimitExceeded")
    assert response.headers["cache-control"] == "no-store"

    retry_after = response.headers["retry-after"]
    assert re.fullmatch(r"[1-9]\d*", retry_after), retry_after
    wait = int(retry_after)
    assert 1 <= wait <= window
    unit = "second" if wait == 1 else "seconds"
    assert f"Try again in {wait} {unit}" in body["message"]

    assert params(response.headers["ratelimit-policy"]) == {"name": name, "q": str(limit), "w": str(window)}
    assert params(response.headers["ratelimit"]) == {"name": name, "r": "0", "t": retry_after}
    return wait


# -- standalone -------------------------------------------------------------------------


async def test_the_request_after_the_limit_is_refused_and_never_reaches_the_app() -> None:
    endpoint = CountingApp()
    async with asgi_client(IPRateLimit(endpoint, limit="3/minute")) as client:
        served = [await client.post("/api/chat") for _ in range(3)]
        refused = await client.post("/api/chat")

    assert [r.status_code for r in served] == [200, 200, 200]
    assert all(r.headers["ratelimit-policy"] == '"chat";q=3;w=60' for r in served)
    assert_refusal(refused, name="chat", limit=3, window=60)
    assert endpoint.calls == 3


@pytest.mark.parametrize(
    ("limit", "name", "policy"),
    [
        ("3/minute", "chat", '"chat";q=3;w=60'),
        ("10 per 30 seconds", "chat", '"chat";q=10;w=30'),
        ("100/hour", "token", '"token";q=100;w=3600'),
        ("5/day", "my_route-2", '"my_route-2";q=5;w=86400'),
    ],
)
async def test_the_policy_field_states_the_limit(limit: str, name: str, policy: str) -> None:
    async with asgi_client(IPRateLimit(CountingApp(), limit=limit, name=name)) as client:
        response = await client.post("/api/chat")
    assert response.status_code == 200
    assert response.headers["ratelimit-policy"] == policy
    assert STRUCTURED_ITEM.match(policy)


async def test_without_remaining_answers_carry_the_policy_alone() -> None:
    async with asgi_client(IPRateLimit(CountingApp(), limit="3/minute")) as client:
        response = await client.post("/api/chat")
    assert "ratelimit" not in response.headers


async def test_with_remaining_answers_say_what_is_left_and_when_a_request_frees() -> None:
    async with asgi_client(IPRateLimit(CountingApp(), limit="3/minute", remaining=True)) as client:
        served = [await client.post("/api/chat") for _ in range(3)]
        refused = await client.post("/api/chat")
    left = [params(response.headers["ratelimit"]) for response in served]
    assert [field["r"] for field in left] == ["2", "1", "0"]
    assert all(field["name"] == "chat" and 0 <= int(field["t"]) <= 60 for field in left)
    assert_refusal(refused, name="chat", limit=3, window=60)


async def test_the_limits_members_come_before_those_of_the_app_behind_it() -> None:
    inner = {"ratelimit-policy": '"tokens";q=1000;w=3600', "ratelimit": '"tokens";r=900;t=120'}
    async with asgi_client(IPRateLimit(CountingApp(headers=inner), limit="3/minute", remaining=True)) as client:
        response = await client.post("/api/chat")
    assert response.headers["ratelimit-policy"] == '"chat";q=3;w=60, "tokens";q=1000;w=3600'
    chat, tokens = response.headers["ratelimit"].split(", ")
    assert params(chat)["r"] == "2"
    assert tokens == '"tokens";r=900;t=120'


async def test_a_failed_read_of_what_is_left_leaves_the_field_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request was counted: a read that fails after it costs the answer nothing but the field."""
    limiter = IPRateLimit(CountingApp(), limit="3/minute", remaining=True)

    async def fails(key: str) -> tuple[int, int]:
        raise StorageUnavailable()

    monkeypatch.setattr(limiter, "window_stats", fails)
    async with asgi_client(limiter) as client:
        response = await client.post("/api/chat")
    assert response.status_code == 200
    assert response.headers["ratelimit-policy"] == '"chat";q=3;w=60'
    assert "ratelimit" not in response.headers


async def test_each_client_ip_has_its_own_count() -> None:
    endpoint = CountingApp()
    app = IPRateLimit(endpoint, limit="2/minute")
    async with asgi_client(app, "198.51.100.1") as first, asgi_client(app, "198.51.100.2") as second:
        assert await statuses(first, 3) == [200, 200, 429]
        assert await statuses(second, 3) == [200, 200, 429]
    assert endpoint.calls == 4


async def test_routes_sharing_one_storage_keep_separate_counts() -> None:
    storage = Storage()
    chat = IPRateLimit(CountingApp(), limit="2/minute", name="chat", storage=storage)
    token = IPRateLimit(CountingApp(), limit="2/minute", name="token", storage=storage)
    async with asgi_client(chat) as chat_client, asgi_client(token) as token_client:
        assert await statuses(chat_client, 3) == [200, 200, 429]
        assert await statuses(token_client, 3) == [200, 200, 429]


async def test_options_requests_are_not_counted() -> None:
    endpoint = CountingApp()
    async with asgi_client(IPRateLimit(endpoint, limit="2/minute")) as client:
        for _ in range(5):
            assert (await client.options("/api/chat")).status_code == 200
        assert await statuses(client, 3) == [200, 200, 429]
    assert endpoint.calls == 7


async def test_waiting_retry_after_is_enough_and_not_much_more(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock the test moves: ten seconds into a minute, far from any real time.
    now = [1_800_000_010.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    async with asgi_client(IPRateLimit(CountingApp(), limit="3/minute")) as client:
        assert await statuses(client, 3) == [200, 200, 200]
        for _ in range(4):
            wait = assert_refusal(await client.post("/api/chat"), name="chat", limit=3, window=60)
            now[0] += wait - 1
            assert (await client.post("/api/chat")).status_code == 429, "Retry-After is longer than needed"
            now[0] += 1.001  # the request's own travel time
            assert (await client.post("/api/chat")).status_code == 200, "Retry-After is too short"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"limit": "lots"}, "limit", id="limit-not-a-rate"),
        pytest.param({"limit": "0/minute"}, "limit", id="limit-zero"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": 'chat";q=1'}, "name", id="name-breaks-the-field"),
        pytest.param({"failure": "maybe"}, "failure", id="failure"),
        pytest.param({"storage": "mongodb://localhost"}, "storage", id="storage-scheme"),
    ],
)
def test_bad_options_raise_a_value_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        IPRateLimit(CountingApp(), **options)


# -- storage failures -------------------------------------------------------------------


async def connection_refused(*args: object, **kwargs: object) -> bool:
    raise ConnectionError("connection refused")


async def hangs(*args: object, **kwargs: object) -> bool:
    await anyio.sleep(10)
    return True


@pytest.fixture
async def broken_storage_factory() -> Any:
    """A network storage (never reached) whose backend fails, built per failure mode."""
    made: list[Storage] = []

    def make(failure: str, behaviour: Callable[..., Any]) -> Storage:
        storage = Storage(closed_port_url(), failure=failure, timeout=0.2)  # type: ignore[arg-type]
        backend: Any = storage.backend
        backend.acquire_sliding_window_entry = behaviour
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.aclose()


FAILURES = [pytest.param(connection_refused, id="error"), pytest.param(hangs, id="hang")]


@pytest.mark.parametrize("behaviour", FAILURES)
@pytest.mark.parametrize("failure", ["closed", "open"])
async def test_a_failing_storage_answers_quickly_as_the_policy_says(
    broken_storage_factory: Any, failure: str, behaviour: Callable[..., Any]
) -> None:
    """Failing closed answers 503 without reaching the app; failing open serves the request."""
    endpoint = CountingApp()
    app = IPRateLimit(endpoint, limit="3/minute", storage=broken_storage_factory(failure, behaviour))
    started = time.monotonic()
    async with asgi_client(app) as client:
        response = await client.post("/api/chat")
    assert time.monotonic() - started < 3  # bounded by the storage timeout (0.2 s), not by the hang (10 s)

    if failure == "closed":
        assert_error(response, 503, "StorageUnavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["cache-control"] == "no-store"
        assert endpoint.calls == 0
    else:
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        assert endpoint.calls == 1


async def test_failing_open_warns_once_not_once_per_request(
    broken_storage_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmguard.storage")
    app = IPRateLimit(CountingApp(), limit="3/minute", storage=broken_storage_factory("open", connection_refused))
    async with asgi_client(app) as client:
        assert await statuses(client, 10) == [200] * 10

    logged = [r for r in caplog.records if r.name == "llmguard.storage" and r.levelno >= logging.WARNING]
    assert [r.levelname for r in logged] == ["WARNING"], [(r.levelname, r.getMessage()) for r in logged]


# -- through the app --------------------------------------------------------------------


@pytest.fixture
async def limited(harness_factory: Callable[..., Any]) -> Harness:
    harness: Harness = await harness_factory(rate_limit_max=3, token_rate_limit="2/minute")
    return harness


async def test_token_minting_is_limited_and_browser_code_can_read_why(limited: Harness) -> None:
    assert await statuses(limited.client, 2, "/api/token") == [200, 200]
    refused = await limited.client.post("/api/token")

    assert_refusal(refused, name="token", limit=2, window=60)
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in refused.headers["access-control-expose-headers"].split(",")}
    assert exposed >= EXPOSED


async def test_chat_is_limited_and_a_refused_request_costs_nothing(limited: Harness) -> None:
    token = await limited.token()
    served = [await limited.chat(HELLO, token=token) for _ in range(3)]
    refused = await limited.chat(HELLO, token=token)

    assert [r.status_code for r in served] == [200, 200, 200]
    assert all(r.headers["ratelimit-policy"] == '"chat";q=3;w=60' for r in served)
    assert_refusal(refused, name="chat", limit=3, window=60)
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert len(limited.provider.requests) == 3


async def test_using_up_chat_leaves_token_minting_alone(limited: Harness) -> None:
    token = await limited.token()
    assert [(await limited.chat(HELLO, token=token)).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert (await limited.client.post("/api/token")).status_code == 200


async def test_using_up_token_minting_leaves_chat_alone(limited: Harness) -> None:
    token = await limited.token()
    assert await statuses(limited.client, 2, "/api/token") == [200, 429]
    assert [(await limited.chat(HELLO, token=token)).status_code for _ in range(3)] == [200, 200, 200]


async def test_another_client_ip_is_not_affected(limited: Harness) -> None:
    assert await statuses(limited.client, 3, "/api/token") == [200, 200, 429]
    other = limited.client_from("198.51.100.77")
    assert await statuses(other, 3, "/api/token") == [200, 200, 429]


async def test_preflights_are_not_counted(limited: Harness) -> None:
    for _ in range(5):
        assert (await limited.client.options("/api/token", headers=preflight("content-type"))).status_code == 204
    assert await statuses(limited.client, 3, "/api/token") == [200, 200, 429]


async def test_the_chat_window_comes_from_rate_limit_window(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(rate_limit_max=5, rate_limit_window=30)
    response = await harness.chat(HELLO)
    assert response.status_code == 200
    assert response.headers["ratelimit-policy"] == '"chat";q=5;w=30'


# -- with a real Redis ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


async def test_two_apps_on_one_redis_share_one_limit(redis_server: RedisServer) -> None:
    redis_server.flush()
    storages = [Storage(redis_server.url, timeout=1), Storage(redis_server.url, timeout=1)]
    endpoints = [CountingApp(), CountingApp()]
    first, second = (IPRateLimit(e, limit="3/minute", storage=s) for e, s in zip(endpoints, storages, strict=True))
    try:
        async with asgi_client(first) as to_first, asgi_client(second) as to_second:
            answers = [(await client.post("/api/chat")).status_code for client in [to_first, to_second] * 3]
            async with asgi_client(second, "198.51.100.2") as someone_else:
                other = (await someone_else.post("/api/chat")).status_code
    finally:
        for storage in storages:
            await storage.aclose()

    assert answers == [200, 200, 200, 429, 429, 429]
    assert [e.calls for e in endpoints] == [2, 2]
    assert other == 200


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_concurrent_burst_gets_exactly_the_limit(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        storage = Storage(server.url, timeout=2)
    else:
        storage = Storage()
    endpoint = CountingApp()
    answers: list[int] = []
    try:
        async with asgi_client(IPRateLimit(endpoint, limit="5/minute", storage=storage)) as client:

            async def one() -> None:
                answers.append((await client.post("/api/chat")).status_code)

            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(one)
    finally:
        await storage.aclose()

    assert sorted(answers) == [200] * 5 + [429] * 25
    assert endpoint.calls == 5


@pytest.mark.parametrize("failure", ["closed", "open"])
async def test_when_redis_dies(failure: str) -> None:
    server = RedisServer()
    storage = Storage(server.url, failure=failure, timeout=0.5)  # type: ignore[arg-type]
    try:
        async with asgi_client(IPRateLimit(CountingApp(), limit="3/minute", storage=storage)) as client:
            assert (await client.post("/api/chat")).status_code == 200
            server.stop()
            started = time.monotonic()
            response = await client.post("/api/chat")
            elapsed = time.monotonic() - started
    finally:
        server.stop()
        await storage.aclose()

    assert elapsed < 3
    if failure == "closed":
        assert_error(response, 503, "StorageUnavailable")
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert response.status_code == 200
        assert response.json() == {"ok": True}
