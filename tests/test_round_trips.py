"""What one request costs in Redis round trips, end to end through ``create_app``, pinned.

Every guard that counts talks to the storage, and with ``redis://`` each round
trip is a network wait on the request's path. The counts below are what the
stack costs today, watched from the server's side (``MONITOR``: the commands
clients sent, not the ones a script ran inside Redis). A change that adds a
round trip fails here; one that saves a round trip updates the number.

- ``/api/token``: the token route's rate limit (one `limits` script); under
  proof-of-work three or four more: the client's rung (its mints; with a token
  window, what it spent of it: one more read), the solution's single use, and
  the mint counted. ``/api/challenge``: its rate limit and the client's rung.
- ``/api/chat``: the rate limit (one `limits` script, and one more to read what
  is left of it, for the reply's ``RateLimit`` field), the budget hold (one
  script for every budget, the client window's last period read in it: the
  field's token window comes from it) and the settlement (one script). A hold
  lowered to the room left costs one more; a single-use token one more (its
  ``jti`` count). With ``DEGRADE``, the month's use is read (one script for both
  monthly caps) at most once a second per process, not on every request.
- ``/api/usage``: its own rate limit (one script), the chat limit read (one
  script) and the token window with the monthly caps (one script), never a
  single-use token's count.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import redis
from servers import RedisServer

from llmguard import Settings, create_app
from llmguard._degrade import parse_degrade
from llmguard.testing import FakeProvider, solve_challenge_payload

ORIGIN = "https://app.example.com"
KEY = "sk-test-round-trips-0123456789"
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}
END = "llmguard-round-trips-end"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@contextmanager
def watching(server: RedisServer) -> Iterator[list[str]]:
    """The commands clients send to ``server`` inside the block (what scripts run inside is left out)."""
    commands: list[str] = []
    marker = redis.Redis(port=server.port, socket_timeout=5)
    marker.ping()  # its handshake happens now, not inside the block
    with redis.Redis(port=server.port, socket_timeout=5).monitor() as monitor:  # type: ignore[no-untyped-call]  # redis-py leaves monitor() unannotated

        def listen() -> None:
            for event in monitor.listen():
                if event["command"] == f"ECHO {END}":
                    return
                if event["client_type"] != "lua":
                    commands.append(event["command"].split(" ", 1)[0].upper())

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        yield commands
        marker.echo(END)
        listener.join(timeout=5)
    marker.close()


@asynccontextmanager
async def client_of(server: RedisServer, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    server.flush()
    values: dict[str, Any] = {
        "openai_api_key": KEY,
        "jwt_secret": "round-trips-secret-0123456789abcdefghijklmnop",
        "allowed_origins": (ORIGIN,),
        "storage_url": server.url,
        "upstream_retries": 0,
        "tokens_per_ip": "100000/day",
        "monthly_token_cap": 10_000_000,
        "monthly_spend_cap_usd": 1000.0,
        "token_challenge": "off",
    }
    app = create_app(Settings(**{**values, **overrides}), transport=FakeProvider(api_key=KEY).transport())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"origin": ORIGIN}
        ) as client:
            # Warm: the scripts are loaded and the pool's connections open before anything is counted.
            minted = await client.post("/api/token")
            if minted.status_code == 401:  # under a challenge: solve it
                solution = solve_challenge_payload(minted.json()["challenge"])
                minted = await client.post("/api/token", json={"solution": solution})
            token = minted.json()["token"]
            response = await client.post("/api/chat", json=HELLO, headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            yield client


async def test_minting_a_token_is_one_round_trip(redis_server: RedisServer) -> None:
    async with client_of(redis_server) as client:
        with watching(redis_server) as commands:
            assert (await client.post("/api/token")).status_code == 200
    assert commands == ["EVALSHA"]


@pytest.mark.parametrize(
    ("overrides", "challenge", "mint"),
    [
        pytest.param({}, 3, 5, id="with-a-token-window"),
        pytest.param({"tokens_per_ip": None}, 2, 4, id="no-token-window"),
    ],
)
async def test_minting_under_proof_of_work_costs_a_pinned_number_of_round_trips(
    redis_server: RedisServer, overrides: dict[str, Any], challenge: int, mint: int
) -> None:
    """The rate limit and the client's rung (its mints, and what it spent of its token window, in one read);
    a mint also marks the solution used and counts itself."""
    async with client_of(redis_server, token_challenge="pow", **overrides) as client:
        with watching(redis_server) as commands:
            answer = (await client.get("/api/challenge")).json()
        assert len(commands) == challenge, commands
        solution = solve_challenge_payload(answer)
        with watching(redis_server) as commands:
            response = await client.post("/api/token", json={"solution": solution})
        assert response.status_code == 200, response.text
    assert len(commands) == mint, commands


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, 4, id="every-budget-on"),
        pytest.param(
            {"tokens_per_ip": None, "monthly_token_cap": None, "monthly_spend_cap_usd": None}, 2, id="no-budget"
        ),
        pytest.param({"jwt_max_uses": 1}, 5, id="single-use-tokens"),
        pytest.param({"tokens_per_ip": "1000/day"}, 5, id="hold-lowered-to-the-room-left"),
    ],
)
async def test_one_chat_request_costs_a_pinned_number_of_round_trips(
    redis_server: RedisServer, overrides: dict[str, Any], expected: int
) -> None:
    async with client_of(redis_server, **overrides) as client:
        token = (await client.post("/api/token")).json()["token"]
        with watching(redis_server) as commands:
            response = await client.post("/api/chat", json=HELLO, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    assert len(commands) == expected, commands
    assert set(commands) == {"EVALSHA"}, commands


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        # Within the reading interval (a second in production) the process goes on its last reading of the month.
        pytest.param(3600.0, 4, id="reading-still-fresh"),
        # A stale reading is one more round trip: both monthly counters read in one script.
        pytest.param(0.0, 5, id="reading-refreshed"),
    ],
)
async def test_degradation_reads_the_month_at_most_once_an_interval(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, interval: float, expected: int
) -> None:
    monkeypatch.setattr("llmguard._budget.READING_INTERVAL", interval)
    async with client_of(redis_server, degrade=parse_degrade("80%:gpt-4.1-nano:300")) as client:
        token = (await client.post("/api/token")).json()["token"]
        with watching(redis_server) as commands:
            response = await client.post("/api/chat", json=HELLO, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    assert len(commands) == expected, commands
    assert set(commands) == {"EVALSHA"}, commands


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, 3, id="every-budget-on"),
        # Nothing to read but the chat limit: no script for the window and caps.
        pytest.param(
            {"tokens_per_ip": None, "monthly_token_cap": None, "monthly_spend_cap_usd": None}, 2, id="no-budget"
        ),
        # The token is checked, not counted: no jti command.
        pytest.param({"jwt_max_uses": 1}, 3, id="single-use-tokens"),
    ],
)
async def test_reading_usage_costs_a_pinned_number_of_round_trips(
    redis_server: RedisServer, overrides: dict[str, Any], expected: int
) -> None:
    async with client_of(redis_server, **overrides) as client:
        token = (await client.post("/api/token")).json()["token"]
        with watching(redis_server) as commands:
            response = await client.get("/api/usage", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    assert len(commands) == expected, commands
    assert set(commands) == {"EVALSHA"}, commands
