from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from harness import ORIGIN, find, make_settings
from servers import RedisServer, RestartableRedis, closed_port_url

from llmguard import IPRateLimit, StorageUnavailable, create_app
from llmguard._storage import Storage
from llmguard.testing import FakeProvider


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    if request.param == "memory":
        yield Storage("memory://")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    shared = Storage(server.url, timeout=1)
    yield shared
    await shared.aclose()


async def hang() -> int:
    await anyio.sleep(10)
    return 0


async def fail() -> int:
    raise ConnectionError("connection refused")


# -- counting ---------------------------------------------------------------------------


async def test_incr_adds_and_gives_back(storage: Storage) -> None:
    assert await storage.get("tokens:198.51.100.9") == 0
    assert await storage.incr("tokens:198.51.100.9", expiry=60) == 1
    assert await storage.incr("tokens:198.51.100.9", expiry=60, amount=500) == 501
    assert await storage.incr("tokens:198.51.100.9", expiry=60, amount=-200) == 301
    assert await storage.get("tokens:198.51.100.9") == 301
    assert await storage.get("tokens:198.51.100.10") == 0


async def test_concurrent_increments_are_not_lost(storage: Storage) -> None:
    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(lambda: storage.incr("burst", expiry=60, amount=7))
    assert await storage.get("burst") == 350


async def test_a_count_expires(storage: Storage) -> None:
    await storage.incr("window", expiry=1, amount=5)
    started = time.monotonic()
    assert await storage.get("window") == 5
    deadline = started + 5
    while await storage.get("window") != 0:
        assert time.monotonic() < deadline, "the count never expired"
        await anyio.sleep(0.05)
    assert time.monotonic() - started > 0.5
    assert await storage.incr("window", expiry=60) == 1


async def test_two_storages_on_one_redis_share_their_counts(redis_server: RedisServer) -> None:
    redis_server.flush()
    first, second = Storage(redis_server.url), Storage(redis_server.url)
    try:
        await first.incr("monthly", expiry=60, amount=40)
        assert await second.incr("monthly", expiry=60, amount=2) == 42
        assert await first.get("monthly") == 42
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_memory_storages_are_separate() -> None:
    first, second = Storage(), Storage()
    await first.incr("monthly", expiry=60, amount=40)
    assert await second.get("monthly") == 0


# -- health -----------------------------------------------------------------------------


async def test_check_is_true_when_the_storage_answers(storage: Storage) -> None:
    assert await storage.check() is True


async def test_check_is_false_quickly_when_redis_is_not_there() -> None:
    storage = Storage(closed_port_url(), timeout=0.5)
    started = time.monotonic()
    assert await storage.check() is False
    assert time.monotonic() - started < 3
    await storage.aclose()


async def test_check_is_false_when_redis_goes_away() -> None:
    server = RedisServer()
    storage = Storage(server.url, timeout=0.5)
    try:
        assert await storage.check() is True
    finally:
        server.stop()
    started = time.monotonic()
    assert await storage.check() is False
    assert time.monotonic() - started < 3
    await storage.aclose()


# -- failures ---------------------------------------------------------------------------


async def test_guarded_passes_results_through() -> None:
    async def answer() -> int:
        return 42

    assert await Storage().guarded(answer()) == 42


@pytest.mark.parametrize("operation", [fail, hang], ids=["error", "hang"])
async def test_guarded_turns_errors_and_hangs_into_storage_unavailable(operation: Any) -> None:
    # A network storage (never reached here): in-process counters are not put under a timer.
    storage = Storage(closed_port_url(), timeout=0.2)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        await storage.guarded(operation())
    assert time.monotonic() - started < 3
    await storage.aclose()
    assert caught.value.status_code == 503
    assert caught.value.code == "StorageUnavailable"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_a_redis_that_is_not_there_is_storage_unavailable_within_the_timeout() -> None:
    storage = Storage(closed_port_url(), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await storage.incr("tokens", expiry=60)
    with pytest.raises(StorageUnavailable):
        await storage.get("tokens")
    assert time.monotonic() - started < 3
    await storage.aclose()


async def test_failures_never_log_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    storage = Storage(closed_port_url("secretpw"), failure="open", timeout=0.5)
    with pytest.raises(StorageUnavailable) as caught:
        await storage.incr("tokens", expiry=60)
    assert await storage.check() is False
    assert "secretpw" not in caplog.text
    assert "secretpw" not in str(caught.value)
    await storage.aclose()


@pytest.mark.parametrize(("failure", "fail_open"), [("closed", False), ("open", True)])
def test_the_failure_policy_is_a_plain_decision_the_guards_read(failure: Any, fail_open: bool) -> None:
    assert Storage(failure=failure).fail_open is fail_open


async def test_failures_are_logged_now_and_then_not_per_request(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="llmguard.storage")
    storage = Storage(failure="open")

    async def broken() -> int:
        raise ConnectionError("redis went away")

    async def warnings_after(seconds: float) -> int:
        now[0] += seconds
        with pytest.raises(StorageUnavailable):
            await storage.guarded(broken())
        return sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "llmguard.storage")

    assert [await warnings_after(s) for s in (0, 1, 10, 30)] == [1, 1, 1, 1]
    assert await warnings_after(3600) == 2
    first = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert "open" in first
    assert "ConnectionError" in first


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        pytest.param("mongodb://localhost:27017", {}, "storage url", id="mongodb"),
        pytest.param("memcached://localhost:11211", {}, "storage url", id="memcached"),
        pytest.param("", {}, "storage url", id="empty"),
        pytest.param("memory", {}, "storage url", id="memory-without-slashes"),
        pytest.param("redis://localhost:notaport/0", {}, "storage url", id="bad-redis-port"),
        pytest.param("memory://", {"failure": "maybe"}, "failure", id="bad-failure"),
        pytest.param("memory://", {"timeout": 0}, "timeout", id="zero-timeout"),
        pytest.param("memory://", {"timeout": -1.0}, "timeout", id="negative-timeout"),
    ],
)
def test_bad_configuration_raises_a_value_error_naming_it(url: str, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Storage(url, **options)


@pytest.mark.parametrize("url", ["memory://", "redis://localhost:6379/0", "redis+sentinel://h:26379/main"])
def test_good_urls_are_accepted_without_connecting(url: str) -> None:
    assert Storage(url).url == url


def test_the_repr_does_not_show_the_password() -> None:
    storage = Storage("redis://:secretpw@redis.internal:6379/0", failure="open")
    shown = repr(storage)
    assert "secretpw" not in shown
    assert shown.startswith("Storage(redis://")
    assert "open" in shown


async def test_shutting_the_app_down_closes_its_redis_connections(redis_server: RedisServer) -> None:
    app = create_app(make_settings(storage_url=redis_server.url), transport=FakeProvider().transport())
    before = redis_server.connected_clients()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/api/token", headers={"origin": ORIGIN})
        assert response.status_code == 200
        assert redis_server.connected_clients() > before
    storage = find(app, IPRateLimit).storage
    try:
        assert redis_server.connected_clients() == before
    finally:
        await storage.aclose()  # so that the leak does not become warnings in later tests


async def test_a_burst_of_concurrent_operations_waits_for_connections_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    # redis-py's default pool refuses past 100 connections ("Too many connections"); a burst of
    # concurrent requests got 503s before the pool could wait. Here 600 share 20 connections.
    storage = Storage(redis_server.url, timeout=2, max_connections=20)
    results = await asyncio.gather(*(storage.incr(f"burst:{index % 7}", expiry=60) for index in range(600)))
    await storage.aclose()
    # Each of the 7 keys was incremented once per operation on it: its highest count says so.
    highest: dict[int, int] = {}
    for index, result in enumerate(results):
        highest[index % 7] = max(highest.get(index % 7, 0), result)
    assert sum(highest.values()) == 600


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_hold_step_changes_several_counters_at_once_and_reads_with_zero(
    backend: str, redis_server: RedisServer
) -> None:
    storage = Storage("memory://" if backend == "memory" else redis_server.url, timeout=2)
    place = ("held", "", "", "")
    assert await storage.hold_step(
        "hold:x", [("a", (5, 0, 0, 0), 60), ("b", (3, 0, 0, 0), 60), ("c", (0,) * 4, 0)], place
    ) == [5, 3, 0]
    assert await storage.hold_step(
        "hold:y", [("a", (-2, 0, 0, 0), 60), ("c", (0,) * 4, 0), ("b", (0,) * 4, 0)], place
    ) == [3, 0, 3]
    assert await storage.get("a") == 3  # the same counters as incr and get see
    assert await storage.incr("b", expiry=60, amount=1) == 4
    assert await storage.hold_step("hold:z", [], place) == []
    await storage.aclose()


# -- a hold's life, by its marker ---------------------------------------------------------

HOLD = ("held", "", "", "")
LOWER = ("", "lowered", "", "")
SETTLE = ("settled", "settled", "settled", "")


def step(key: str, none: int, held: int = 0, lowered: int = 0) -> list[tuple[str, tuple[int, int, int, int], int]]:
    return [(key, (none, held, lowered, 0), 3600)]


async def test_a_hold_is_placed_lowered_and_settled_once(storage: Storage) -> None:
    assert await storage.hold_step("hold:a", step("month", 100), HOLD) == [100]
    assert await storage.hold_step("hold:a", step("month", 100), HOLD) == [100], "a repeated hold adds nothing"
    assert await storage.hold_step("hold:a", step("month", 0, held=-40), LOWER) == [60]
    # Settled at 25: from the lowered hold (60), by the marker.
    assert await storage.hold_step("hold:a", step("month", 25, held=25 - 100, lowered=25 - 60), SETTLE) == [25]
    assert await storage.get("month") == 25


async def test_a_settlement_that_finds_no_hold_adds_only_the_charge(storage: Storage) -> None:
    # The hold never landed (it timed out), or the storage lost it (Redis restarted).
    await storage.incr("month", expiry=3600, amount=7)
    assert await storage.hold_step("hold:b", step("month", 25, held=-75, lowered=-35), SETTLE) == [32]


async def test_a_counter_never_goes_below_zero(storage: Storage) -> None:
    await storage.hold_step("hold:c", step("month", 100), HOLD)
    await storage.incr("month", expiry=3600, amount=-100)  # as if the counter had expired under the hold
    assert await storage.hold_step("hold:c", step("month", 10, held=-90), SETTLE) == [0]


async def test_on_redis_a_late_or_repeated_step_after_the_settlement_changes_nothing(
    redis_server: RedisServer,
) -> None:
    # On Redis a command can arrive late (after its request gave up on it) or twice (redis-py
    # retries on a dead connection); in memory neither happens, and a settled marker goes at once.
    redis_server.flush()
    storage = Storage(redis_server.url, timeout=1)
    try:
        # The request gave up on its hold and settled (charging nothing) before the hold arrived.
        assert await storage.hold_step("hold:d", step("month", 0, held=-100), SETTLE) == [0]
        assert await storage.hold_step("hold:d", step("month", 100), HOLD) == [0]
        # A settlement repeated.
        await storage.hold_step("hold:e", step("month", 100), HOLD)
        assert await storage.hold_step("hold:e", step("month", 25, held=-75), SETTLE) == [25]
        assert await storage.hold_step("hold:e", step("month", 25, held=-75), SETTLE) == [25]
        assert await storage.get("month") == 25
    finally:
        await storage.aclose()


async def test_pooled_connections_survive_a_redis_restart() -> None:
    redis_server = RestartableRedis()
    with redis_server:
        storage = Storage(redis_server.url, timeout=1)
        try:
            # Several connections in the pool, all of them dead once Redis restarts.
            await asyncio.gather(*(storage.incr(f"k{index}", expiry=60) for index in range(8)))
            redis_server.kill()
            redis_server.restart()
            totals = await asyncio.gather(*(storage.incr(f"k{index}", expiry=60) for index in range(8)))
            assert totals == [1] * 8
        finally:
            await storage.aclose()
