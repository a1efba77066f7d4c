"""Two `llmguard serve` processes sharing one real Redis: one limit, one window, one cap.

Process A fails closed, process B fails open; both trust 127.0.0.1 as a proxy,
so each test plays distinct clients through X-Forwarded-For. The tests run in
order: the monthly cap is global, and the last test stops Redis.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from harness import HELLO, KEY, ORIGIN, SECRET, assert_error, assert_no_secrets, bearer, http_client, mint
from servers import LLMGuardProcess, RedisServer

from llmguard._tokens import estimate_prompt_tokens
from llmguard.testing import FakeProvider, FakeReply

MAX_TOKENS = 200
RATE_LIMIT = 5
TOKENS_PER_IP = 1000
MONTHLY_CAP = 4000
LONG_REPLY = ["word "] * 400  # longer than MAX_TOKENS: the fake cuts it at the cap, like a model
# No test here is about a slow storage (test_faults_e2e is): the burst's forty chats at once open
# twenty Redis connections per process, and on a busy machine a process starved of CPU takes more
# than a second over some of them (a storage call's timeout covers getting its connection).
STORAGE_TIMEOUT = 5


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def provider(fake_upstream: tuple[FakeProvider, str]) -> tuple[FakeProvider, str]:
    fake_upstream[0].reset()
    return fake_upstream


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer, provider: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LLMGuardProcess, LLMGuardProcess]]:
    logs = tmp_path_factory.mktemp("pair")
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{provider[1]}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": redis_server.url,
        "STORAGE_TIMEOUT": str(STORAGE_TIMEOUT),
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATE_LIMIT_MAX": str(RATE_LIMIT),
        "RATE_LIMIT_WINDOW": "1 minute",
        "TOKEN_RATE_LIMIT": "1000/minute",
        "TOKENS_PER_IP": f"{TOKENS_PER_IP}/hour",
        "MONTHLY_TOKEN_CAP": str(MONTHLY_CAP),
        "MAX_TOKENS": str(MAX_TOKENS),
        "UPSTREAM_RETRIES": "0",
        # tests/test_e2e.py covers the default (aiohttp's pool, with the dev extras); this is httpx's own.
        "UPSTREAM_TRANSPORT": "httpx",
    }
    with (
        LLMGuardProcess({**env, "STORAGE_FAILURE": "closed"}, logs / "a.log") as a,
        LLMGuardProcess({**env, "STORAGE_FAILURE": "open"}, logs / "b.log") as b,
    ):
        yield a, b
    for process in (a, b):
        assert "Traceback" not in process.logs()
        assert_no_secrets(process.logs())


def chat(server: LLMGuardProcess, ip: str, token: str, body: Any = HELLO) -> httpx.Response:
    with http_client(server, ip) as client:
        return client.post("/api/chat", json=body, headers=bearer(token))


def counter(redis_server: RedisServer, pattern: str) -> int:
    store = redis.Redis.from_url(redis_server.url)
    [key] = store.keys(f"*{pattern}*")
    return int(store.get(key) or 0)


def test_a_token_minted_by_one_process_works_on_the_other(pair: tuple[LLMGuardProcess, LLMGuardProcess]) -> None:
    a, b = pair
    assert chat(b, "198.51.100.1", mint(a, "198.51.100.1")).status_code == 200
    assert chat(a, "198.51.100.1", mint(b, "198.51.100.1")).status_code == 200


def test_the_request_limit_is_shared(pair: tuple[LLMGuardProcess, LLMGuardProcess]) -> None:
    a, b = pair
    ip = "198.51.100.2"
    token = mint(a, ip)
    statuses = [chat((a, b)[index % 2], ip, token).status_code for index in range(RATE_LIMIT)]
    assert statuses == [200] * RATE_LIMIT
    # Five between them: each process now refuses, though it served fewer than five itself.
    for server in (a, b):
        refused = chat(server, ip, token)
        assert_error(refused, 429, "RateLimitExceeded")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-policy"] == f'"chat";q={RATE_LIMIT};w=60'
    # Another client is not affected.
    assert chat(b, "198.51.100.3", token).status_code == 200


def test_the_openai_sdk_gets_a_rate_limit_error_from_either_process(
    pair: tuple[LLMGuardProcess, LLMGuardProcess],
) -> None:
    a, b = pair
    ip = "198.51.100.5"

    def sdk(server: LLMGuardProcess) -> openai.OpenAI:
        headers = {"origin": ORIGIN, "x-forwarded-for": ip}
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=mint(a, ip), default_headers=headers, max_retries=0)

    for index in range(RATE_LIMIT):
        sdk((a, b)[index % 2]).chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(b).chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "RateLimitExceeded"


def test_the_token_window_is_shared(
    pair: tuple[LLMGuardProcess, LLMGuardProcess], provider: tuple[FakeProvider, str]
) -> None:
    a, b = pair
    fake, _ = provider
    fake.reset()
    used = 0
    refusal: httpx.Response | None = None
    # About 300 prompt tokens + 200 output: the window runs out before the request limit does.
    long_prompt = {"messages": [{"role": "user", "content": "spend " * 200}]}
    for index in range(RATE_LIMIT):
        ip = "198.51.100.4"
        fake.enqueue(FakeReply(chunks=LONG_REPLY))
        response = chat((a, b)[index % 2], ip, mint(a, ip), long_prompt)
        if response.status_code != 200:
            refusal = response
            break
        used += response.json()["usage"]["total_tokens"]
    assert refusal is not None
    assert_error(refusal, 429, "TokenBudgetExceeded")
    # Counted once for both: separate counters would have allowed about twice as much.
    assert TOKENS_PER_IP - (MAX_TOKENS + 20) < used <= TOKENS_PER_IP


def test_a_burst_across_both_processes_stays_within_the_monthly_cap(
    pair: tuple[LLMGuardProcess, LLMGuardProcess], provider: tuple[FakeProvider, str], redis_server: RedisServer
) -> None:
    a, b = pair
    fake, _ = provider
    fake.reset()
    before = counter(redis_server, "month-tokens")
    fake.enqueue(*[FakeReply(chunks=LONG_REPLY, first_byte_delay=1.0) for _ in range(40)])
    clients = [f"203.0.113.{index}" for index in range(40)]  # distinct IPs: only the monthly cap binds
    tokens = {ip: mint(a, ip) for ip in clients}

    def one(index: int) -> httpx.Response:
        ip = clients[index]
        return chat((a, b)[index % 2], ip, tokens[ip])

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(pool.map(one, range(40)))

    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert served
    assert refused
    for response in refused:
        assert_error(response, 503, "TokenCapReached")
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # What the provider was asked to produce, worst case, all at once: within what was left of the cap.
    asked = sum(
        estimate_prompt_tokens(m["content"] for m in request.json["messages"]) + request.json["max_tokens"]
        for request in fake.requests
    )
    assert asked <= MONTHLY_CAP - before
    # And after settlement the shared counter holds exactly what the provider reported.
    reported = sum(r.json()["usage"]["total_tokens"] for r in served)
    assert counter(redis_server, "month-tokens") == before + reported <= MONTHLY_CAP


def test_when_redis_stops_closed_refuses_and_open_serves(
    pair: tuple[LLMGuardProcess, LLMGuardProcess], redis_server: RedisServer, provider: tuple[FakeProvider, str]
) -> None:
    a, b = pair
    token = mint(a, "198.51.100.9")
    redis.Redis.from_url(redis_server.url).flushall()  # the monthly cap was spent by the burst
    redis_server.stop()

    started = time.monotonic()
    refused = chat(a, "198.51.100.9", token)
    # A stopped Redis refuses connections: refused at once, not after STORAGE_TIMEOUT, never a hang.
    assert time.monotonic() - started < STORAGE_TIMEOUT
    assert_error(refused, 503, "StorageUnavailable")
    assert int(refused.headers["retry-after"]) >= 1
    with http_client(a, "198.51.100.9") as client:
        assert_error(client.post("/api/token"), 503, "StorageUnavailable")
        health = client.get("/healthz").json()
    assert health["status"] == "degraded"
    assert health["storage"] is False

    provider[0].reset()
    provider[0].enqueue(FakeReply(text="still here"))
    served = chat(b, "198.51.100.9", token)
    assert served.status_code == 200
    assert served.json()["content"] == "still here"
    assert "serving without limits" in Path(b.log_path).read_text()
