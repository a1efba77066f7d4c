"""End to end: two ``llmguard serve`` processes on one Redis spend a monthly token cap, and a real
webhook receiver on loopback gets each threshold's alert exactly once, the first after a retry.

The receiver answers the first post it gets with 500, then 200 to everything. Each process reads
the month's use at most once a second, after its requests settle; the test waits for each
process to say (in its log) what it decided for every threshold, then counts what arrived.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import HELLO, KEY, ORIGIN, SECRET, assert_clean_logs, bearer, http_client
from servers import LLMGuardProcess, RedisServer, ThreadedServer
from starlette.requests import Request
from starlette.responses import Response

from llmguard.testing import FakeProvider

CAP = 600
THRESHOLDS = (50, 80, 95, 100)
#: The webhook's path is its credential: no log line may carry it (nor a telling piece of it).
HOOK_KEY = "Wq8HookKeyZ3"
HOOK_PATH = f"/services/T0{HOOK_KEY}/B0/{HOOK_KEY}"


@dataclass
class Try:
    status: int
    body: dict[str, Any]


class Receiver:
    """A webhook receiver (ASGI, served by uvicorn in a thread): 500 to the first post, then 200."""

    def __init__(self) -> None:
        self.tries: list[Try] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = json.loads(await request.body())
        assert (request.method, request.url.path) == ("POST", HOOK_PATH)
        with self.lock:
            status = 500 if not self.tries else 200
            self.tries.append(Try(status, body))
        await Response(status_code=status)(scope, receive, send)

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [attempt.body for attempt in self.tries if attempt.status == 200]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with ThreadedServer(app) as server:
        yield app, server.url


@pytest.fixture(scope="module")
def servers(
    fake_upstream: tuple[FakeProvider, str],
    redis_server: RedisServer,
    receiver: tuple[Receiver, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LLMGuardProcess, LLMGuardProcess]]:
    _, upstream = fake_upstream
    _, receiver_url = receiver
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{upstream}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": redis_server.url,
        "MONTHLY_TOKEN_CAP": str(CAP),
        "ALERT_WEBHOOK_URL": f"{receiver_url}{HOOK_PATH}",
        "MAX_TOKENS": "50",
        "UPSTREAM_RETRIES": "0",
        "RATE_LIMIT_MAX": "100000",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "off",
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "info",
    }
    logs: Path = tmp_path_factory.mktemp("alerts")
    processes = (LLMGuardProcess(env, logs / "a.log"), LLMGuardProcess(env, logs / "b.log"))
    # Started together: each takes seconds on a busy machine.
    with ExitStack() as stack, concurrent.futures.ThreadPoolExecutor() as pool:
        started = [pool.submit(process.__enter__) for process in processes]
        for process, future in zip(processes, started, strict=True):
            if future.exception() is None:
                stack.push(process.__exit__)
        for future in started:
            future.result()
        yield processes
    for process in processes:
        text = process.logs()
        assert_clean_logs(text)
        assert HOOK_KEY not in text


def decisions(logs: str, receiver_url: str) -> dict[int, str]:
    """What a process's log says it decided for each threshold: ``posted`` or ``skipped``."""
    found: dict[int, str] = {}
    for threshold in THRESHOLDS:
        what = f"{threshold}% of the monthly token cap"
        if f"spend alert posted to {receiver_url}/…: {what}" in logs:
            found[threshold] = "posted"
        elif f"spend alert for {what}: already sent by another instance" in logs:
            found[threshold] = "skipped"
    return found


def test_each_threshold_is_posted_once_from_two_processes_sharing_one_redis(
    servers: tuple[LLMGuardProcess, LLMGuardProcess], receiver: tuple[Receiver, str], redis_server: RedisServer
) -> None:
    app, receiver_url = receiver
    month = f"{datetime.now(timezone.utc):%Y-%m}"

    # Spend the cap through both processes in turn, until each has refused a request at the cap.
    refused = [False, False]
    with http_client(servers[0]) as first, http_client(servers[1]) as second:
        for turn in range(200):
            http = (first, second)[turn % 2]
            token = http.post("/api/token").json()["token"]
            response = http.post("/api/chat", json=HELLO, headers=bearer(token))
            if response.status_code == 503:
                assert response.json()["error"] == "TokenCapReached", response.text
                refused[turn % 2] = True
                if all(refused):
                    break
            else:
                assert response.status_code == 200, response.text
    assert all(refused), "the cap was never reached"

    # Each process reads the month within a second of its last request and decides every threshold.
    deadline = time.monotonic() + 30
    while not all(len(decisions(server.logs(), receiver_url)) == len(THRESHOLDS) for server in servers):
        assert time.monotonic() < deadline, [server.logs()[-3000:] for server in servers]
        time.sleep(0.05)

    # Exactly one process posted each threshold, and the receiver got each exactly once.
    verdicts = [decisions(server.logs(), receiver_url) for server in servers]
    for threshold in THRESHOLDS:
        assert sorted(verdict[threshold] for verdict in verdicts) == ["posted", "skipped"], verdicts
    delivered = app.delivered()
    assert sorted(body["llmguard"]["threshold"] for body in delivered) == list(THRESHOLDS)
    for body in delivered:
        details = body["llmguard"]
        assert details["kind"] == "threshold"
        assert (details["cap"], details["limit"], details["month"], details["service"]) == (
            "tokens",
            CAP,
            month,
            ORIGIN,
        )
        assert details["used"] * 100 >= details["threshold"] * CAP or details["threshold"] == 100
        assert re.fullmatch(
            rf"llmguard: {details['threshold']}% of the monthly token cap is used \({details['used']} of 600 tokens\) "
            rf"for {month}\.( New requests are refused until the month ends \(UTC\)\.)?",
            body["text"],
        ), body["text"]

    # The first post got a 500 and was posted again, after the backoff.
    assert [attempt.status for attempt in app.tries] == [500, 200, 200, 200, 200]
    assert app.tries[0].body in delivered
    logs = "".join(server.logs() for server in servers)
    assert f"spend alert webhook {receiver_url}/… answered 500; retrying in 1 s" in logs

    # The dedup counters: every threshold counted once by each process.
    with redis.Redis(port=redis_server.port, socket_timeout=5) as client:
        counts = [client.get(f"LIMITS:llmguard:alert:tokens:{month}:{threshold}") for threshold in THRESHOLDS]
    assert counts == [b"2"] * len(THRESHOLDS)
