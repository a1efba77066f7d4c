"""End to end: graceful degradation through a real ``llmguard serve`` on Redis, and the official ``openai`` client.

The month's token count is set in Redis directly (as many instances would
have spent it); the server reads it at most once a second, so each step waits
that long before it looks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import openai
import pytest
import redis
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    SECRET,
    assert_clean_logs,
    assert_error,
    bearer,
    http_client,
    mint,
    openai_over_http,
    sse_events,
)
from servers import LLMGuardProcess, RedisServer

from llmguard.testing import FakeProvider, FakeReply

CAP = 100_000
NANO = {"threshold": 0.8, "model": "gpt-4.1-nano", "max_tokens": 300}
SHORT = {"threshold": 0.95, "model": "gpt-4.1-nano", "max_tokens": 100}
READING_INTERVAL = 1.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(
    fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LLMGuardProcess]:
    _, url = fake_upstream
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{url}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": redis_server.url,
        "MONTHLY_TOKEN_CAP": str(CAP),
        "DEGRADE": "80%:gpt-4.1-nano:300, 95%::100",
        "MAX_TOKENS": "1000",
        "UPSTREAM_RETRIES": "0",
        "RATE_LIMIT_MAX": "100000",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "off",
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "info",
    }
    with LLMGuardProcess(env, tmp_path_factory.mktemp("degrade") / "server.log") as process:
        yield process
    logs = process.logs()
    assert_clean_logs(logs)


@pytest.fixture
def provider(fake_upstream: tuple[FakeProvider, str]) -> FakeProvider:
    fake, _ = fake_upstream
    fake.reset()
    return fake


@pytest.fixture
def http(server: LLMGuardProcess) -> Iterator[httpx.Client]:
    with http_client(server) as client:
        yield client


def month_used(redis_server: RedisServer, tokens: int) -> None:
    """Set the month's token count, then wait until every process's reading of it is stale."""
    key = f"LIMITS:llmguard:budget:month-tokens:{datetime.now(timezone.utc):%Y-%m}"
    with redis.Redis(port=redis_server.port, socket_timeout=5) as client:
        client.set(key, tokens, ex=40 * 86400)
    time.sleep(READING_INTERVAL + 0.2)


def chat(http: httpx.Client, server: LLMGuardProcess, body: dict[str, object]) -> httpx.Response:
    return http.post("/api/chat", json=body, headers=bearer(mint(server)))


def test_degradation_steps_in_then_the_cap_refuses(
    server: LLMGuardProcess, http: httpx.Client, redis_server: RedisServer, provider: FakeProvider
) -> None:
    # Below the first step: the server's model and cap, and nothing said.
    month_used(redis_server, 70_000)
    response = chat(http, server, {**HELLO, "max_tokens": 5000})
    assert response.status_code == 200, response.text
    assert "x-llmguard-degraded" not in response.headers
    assert "degraded" not in response.json()
    assert (provider.last_request.json["model"], provider.last_request.json["max_tokens"]) == ("gpt-4.1-mini", 1000)

    # Past 80 %: the cheaper model and the lower cap, said in the header and the reply.
    month_used(redis_server, 81_000)
    response = chat(http, server, {**HELLO, "max_tokens": 5000})
    assert response.status_code == 200, response.text
    assert response.headers["x-llmguard-degraded"] == "80"
    assert "x-llmguard-degraded" in response.headers["access-control-expose-headers"]
    assert response.json()["degraded"] == NANO
    assert (provider.last_request.json["model"], provider.last_request.json["max_tokens"]) == ("gpt-4.1-nano", 300)

    # The stream says it in its start and finish metadata.
    provider.enqueue(FakeReply(chunks=["a ", "b"]))
    response = chat(http, server, {**HELLO, "stream": True})
    assert response.headers["x-llmguard-degraded"] == "80"
    events = sse_events(response)
    assert events[0] == {"type": "start", "messageId": events[0]["messageId"], "messageMetadata": {"degraded": NANO}}
    assert events[-2]["type"] == "finish"
    assert events[-2]["messageMetadata"]["degraded"] == NANO
    assert events[-2]["messageMetadata"]["usage"]["completion_tokens"] == 2

    # /v1, with the official client: the header, and the model in the reply.
    raw = openai_over_http(server).chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=2000
    )
    assert raw.headers["x-llmguard-degraded"] == "80"
    assert raw.parse().model == "gpt-4.1-nano"
    assert provider.last_request.json["max_tokens"] == 300

    # Past 95 %: a lower cap still, the cheaper model kept.
    month_used(redis_server, 96_000)
    response = chat(http, server, HELLO)
    assert response.headers["x-llmguard-degraded"] == "95"
    assert response.json()["degraded"] == SHORT
    assert (provider.last_request.json["model"], provider.last_request.json["max_tokens"]) == ("gpt-4.1-nano", 100)

    # At 100 %: refused, as without degradation, on both routes.
    month_used(redis_server, CAP)
    provider.reset()
    assert_error(chat(http, server, HELLO), 503, "TokenCapReached")
    with pytest.raises(openai.APIStatusError) as refused:
        openai_over_http(server).chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}]
        )
    assert refused.value.status_code == 503
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "TokenCapReached"
    assert provider.requests == []

    logs = server.logs()
    assert re.search(r"POST /api/chat 200 .* model=gpt-4\.1-nano .*degraded=80%", logs), logs[-2000:]
