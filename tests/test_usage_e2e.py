"""GET /api/usage through real `llmguard serve` processes: one on Redis with every budget, one without a token window.

Each test plays its own client IP (X-Forwarded-For from loopback, which the servers trust), so the
tests do not share a request limit or a token window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from harness import HELLO, KEY, ORIGIN, SECRET, STREAM, assert_clean_logs, bearer, http_client, mint, sse_events
from servers import LLMGuardProcess, RedisServer

from llmguard.testing import FakeProvider

MONTHLY_TOKEN_CAP = 7_654_321
MONTHLY_SPEND_CAP_USD = "432.10"
RATE_LIMIT = 20
WINDOW = 50_000


@pytest.fixture(scope="module")
def provider(fake_upstream: tuple[FakeProvider, str]) -> tuple[FakeProvider, str]:
    fake_upstream[0].reset()
    return fake_upstream


def _env(provider: tuple[FakeProvider, str], **settings: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{provider[1]}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATE_LIMIT_MAX": str(RATE_LIMIT),
        "TOKEN_RATE_LIMIT": "1000/minute",
        "MAX_TOKENS": "100",
        "UPSTREAM_RETRIES": "0",
        **settings,
    }


@pytest.fixture(scope="module")
def server(provider: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMGuardProcess]:
    """Every budget on, single-use tokens, the counts in Redis."""
    with RedisServer() as redis_server:
        env = _env(
            provider,
            STORAGE_URL=redis_server.url,
            TOKENS_PER_IP=f"{WINDOW}/day",
            MONTHLY_TOKEN_CAP=str(MONTHLY_TOKEN_CAP),
            MONTHLY_SPEND_CAP_USD=MONTHLY_SPEND_CAP_USD,
            JWT_MAX_USES="1",
        )
        with LLMGuardProcess(env, tmp_path_factory.mktemp("usage") / "server.log") as process:
            yield process
    assert_clean_logs(process.logs())


def usage(server: LLMGuardProcess, ip: str, token: str) -> dict[str, Any]:
    with http_client(server, ip) as http:
        response = http.get("/api/usage", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def left(response: httpx.Response) -> dict[str, int]:
    """``r`` of each member of the RateLimit field."""
    return {
        name.strip('"'): int(rest.split("r=")[1].split(";")[0])
        for name, _, rest in (member.partition(";") for member in response.headers["ratelimit"].split(", "))
    }


def test_after_chats_the_numbers_move_by_exactly_what_was_charged(server: LLMGuardProcess) -> None:
    ip = "198.51.100.21"
    before = usage(server, ip, mint(server, ip))
    assert before["requests"] == {"limit": RATE_LIMIT, "remaining": RATE_LIMIT, "reset": 0, "window": 60}
    assert (before["tokens"]["limit"], before["tokens"]["remaining"]) == (WINDOW, WINDOW)

    charged = 0
    with http_client(server, ip) as http:
        for number in range(1, 4):
            # Single-use tokens: one per chat.
            reply = http.post("/api/chat", json=HELLO, headers=bearer(mint(server, ip)))
            assert reply.status_code == 200, reply.text
            charged += reply.json()["usage"]["total_tokens"]
            assert left(reply)["chat"] == RATE_LIMIT - number
        streamed = http.post("/api/chat", json=STREAM, headers=bearer(mint(server, ip)))
        [finish] = [event for event in sse_events(streamed) if isinstance(event, dict) and event["type"] == "finish"]
        charged += finish["messageMetadata"]["usage"]["total_tokens"]
        completion = http.post("/v1/chat/completions", json=HELLO, headers=bearer(mint(server, ip)))
        assert completion.status_code == 200, completion.text
        charged += completion.json()["usage"]["total_tokens"]
        # The reply's token window counts its hold (prompt + the output cap of 100), not its charge.
        assert WINDOW - charged - 100 <= left(completion)["tokens"] < WINDOW - charged

    after = usage(server, ip, mint(server, ip))
    assert after["requests"]["remaining"] == RATE_LIMIT - 5
    assert 0 < after["requests"]["reset"] <= 60
    assert after["tokens"]["remaining"] == WINDOW - charged
    assert (after["degraded"], after["near_cap"]) == (False, False)


def test_reading_usage_does_not_use_up_a_single_use_token(server: LLMGuardProcess) -> None:
    ip = "198.51.100.22"
    token = mint(server, ip)
    for _ in range(3):
        usage(server, ip, token)
    with http_client(server, ip) as http:
        assert http.post("/api/chat", json=HELLO, headers=bearer(token)).status_code == 200
        assert http.post("/api/chat", json=HELLO, headers=bearer(token)).status_code == 401


def test_a_quota_claim_sets_the_window_of_the_tokens_user(server: LLMGuardProcess) -> None:
    ip = "198.51.100.23"
    now = int(time.time())
    claims = {"iss": "llmguard", "aud": "llmguard", "iat": now, "exp": now + 300, "sub": "user-42", "quota": 1234}
    token = jwt.encode({**claims, "jti": "quota-read"}, SECRET, algorithm="HS256")
    tokens = usage(server, ip, token)["tokens"]
    assert (tokens["limit"], tokens["remaining"], tokens["window"]) == (1234, 1234, 86_400)
    with http_client(server, ip) as http:
        spending = jwt.encode({**claims, "jti": "quota-chat"}, SECRET, algorithm="HS256")
        reply = http.post("/api/chat", json=HELLO, headers=bearer(spending))
    assert reply.status_code == 200, reply.text
    assert usage(server, ip, token)["tokens"]["remaining"] == 1234 - reply.json()["usage"]["total_tokens"]
    # The same user from another address: the same window (the user's, not the IP's).
    assert (
        usage(server, "198.51.100.24", token)["tokens"]["remaining"]
        == tokens["remaining"] - (reply.json()["usage"]["total_tokens"])
    )


def test_the_answer_never_says_money_or_the_caps(server: LLMGuardProcess) -> None:
    ip = "198.51.100.25"
    with http_client(server, ip) as http:
        response = http.get("/api/usage", headers=bearer(mint(server, ip)))
    assert response.status_code == 200
    assert set(response.json()) == {"requests", "tokens", "degraded", "near_cap"}
    for secret in (str(MONTHLY_TOKEN_CAP), "432", "$", "usd", "spend", "cap_"):
        assert secret not in response.text.lower()


def test_without_a_token_window_tokens_is_null(
    provider: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = _env(provider, TOKENS_PER_IP="off")
    with LLMGuardProcess(env, tmp_path_factory.mktemp("usage-off") / "server.log") as process:
        ip = "198.51.100.26"
        body = usage(process, ip, mint(process, ip))
        assert body == {
            "requests": {"limit": RATE_LIMIT, "remaining": RATE_LIMIT, "reset": 0, "window": 60},
            "tokens": None,
            "degraded": False,
            "near_cap": False,
        }
        with http_client(process, ip) as http:
            reply = http.post("/api/chat", json=HELLO, headers=bearer(mint(process, ip)))
        assert list(left(reply)) == ["chat"]
    assert_clean_logs(process.logs())
