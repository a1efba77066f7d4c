"""GET /metrics from ``llmguard serve --workers 2`` over real HTTP: the workers' counts add up exactly.

Two worker processes write their values to files in one directory
(prometheus_client's multiprocess mode; the CLI makes the directory before the
workers start) and whichever worker answers the scrape adds them all up. The
server shares its counts in a real Redis and calls the fake provider over HTTP.
The tests run in order: the second kills the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    SECRET,
    STREAM,
    assert_clean_logs,
    assert_error,
    assert_no_secrets,
    assert_not_500,
    bearer,
    http_client,
    mint,
)
from prometheus_client.parser import text_string_to_metric_families
from servers import LLMGuardProcess, RedisServer

from llmguard._metrics import MULTIPROC_DIR
from llmguard._prices import DEFAULT_PRICES
from llmguard.testing import FakeProvider, FakeReply

TOKEN = "metrics-e2e-token-7Hq2Xw9Lk4Zp3Vb"
MODEL = "gpt-4.1-mini"
TOKEN_CAP = 100_000
SPEND_CAP = 20.0
MINTS_PER_MINUTE = 4
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
RequestKey = tuple[str, str, str, str]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def provider(fake_upstream: tuple[FakeProvider, str]) -> Iterator[FakeProvider]:
    fake_upstream[0].reset()
    yield fake_upstream[0]
    fake_upstream[0].reset()


@pytest.fixture(scope="module")
def server(
    redis_server: RedisServer, fake_upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LLMGuardProcess]:
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{fake_upstream[1]}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": redis_server.url,
        "TRUSTED_PROXIES": "127.0.0.1",
        "TOKEN_RATE_LIMIT": f"{MINTS_PER_MINUTE}/minute",
        "MAX_PROMPT_TOKENS": "200",
        "TOKENS_PER_IP": "off",
        "MONTHLY_TOKEN_CAP": str(TOKEN_CAP),
        "MONTHLY_SPEND_CAP_USD": str(SPEND_CAP),
        "UPSTREAM_RETRIES": "0",
        "METRICS": "true",
        "METRICS_TOKEN": TOKEN,
    }
    with LLMGuardProcess(env, tmp_path_factory.mktemp("metrics") / "server.log", args=("--workers", "2")) as server:
        workers = wait_for_workers(server, 2)
        # The directory the CLI made for the workers, before they started: fresh, and only theirs.
        directories = {worker_environ(pid).get(MULTIPROC_DIR) for pid in workers}
        assert len(directories) == 1
        [directory] = directories
        assert directory is not None
        assert Path(directory).name.startswith("llmguard-metrics-")
        server.metrics_directory = directory  # type: ignore[attr-defined]
        yield server
    assert not Path(directory).exists(), "the metrics directory outlived the server"
    assert_clean_logs(server.logs())
    assert TOKEN not in server.logs()


# -- reading the server -------------------------------------------------------------------------


def scrape(server: LLMGuardProcess) -> tuple[Samples, str]:
    # A new connection each time: any worker may answer.
    with httpx.Client(base_url=server.url, limits=httpx.Limits(max_keepalive_connections=0), timeout=20) as http:
        response = http.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200, response.text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_total(samples: Samples) -> dict[RequestKey, float]:
    counted = {}
    for (name, frozen), count in samples.items():
        if name == "llmguard_requests_total":
            labels = dict(frozen)
            counted[(labels["route"], labels["method"], labels["status"], labels["code"])] = count
    return counted


def eventually(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until ``condition()`` holds, checking every 50 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def workers_of(server: LLMGuardProcess) -> set[int]:
    """The pids of the uvicorn worker processes under ``server`` (spawned, so their command says so)."""
    assert server.process is not None
    children: set[int] = set()
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        children |= {int(pid) for pid in (task / "children").read_text().split()}
    workers = set()
    for pid in children:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.add(pid)
        except FileNotFoundError:
            continue  # gone meanwhile
    return workers


def wait_for_workers(server: LLMGuardProcess, count: int, *, not_in: frozenset[int] = frozenset()) -> set[int]:
    """The workers, once there are ``count`` of them, none in ``not_in``, each with its metrics open."""
    found: set[int] = set()

    def ready() -> bool:
        nonlocal found
        found = workers_of(server) - not_in
        return len(found) == count and all(MULTIPROC_DIR in worker_environ(pid) for pid in found)

    eventually(ready)
    return found


def worker_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: text for name, _, text in pairs}


def fresh_client(server: LLMGuardProcess, ip: str) -> httpx.Client:
    """A client from ``ip`` on an allowed origin that opens a new connection per request: either worker answers."""
    return httpx.Client(
        base_url=server.url,
        headers={"origin": ORIGIN, "x-forwarded-for": ip},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=20,
        event_hooks={"response": [assert_not_500]},
    )


# -- the known mix ------------------------------------------------------------------------------


def test_a_scrape_adds_up_both_workers_exactly(server: LLMGuardProcess, provider: FakeProvider) -> None:
    # A scrape without the token, or with another one, is refused (and counted).
    with httpx.Client(base_url=server.url, timeout=20) as http:
        for headers in ({}, bearer("not-the-metrics-token-at-all"), bearer(KEY), {"authorization": f"Basic {TOKEN}"}):
            response = http.get("/metrics", headers=headers)
            assert_error(response, 401, "Unauthorized")
            assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert "llmguard_requests_total" not in response.text

    tokens: list[str] = []
    usages: list[dict[str, int]] = []
    with fresh_client(server, "198.51.100.1") as http:
        token = mint(server, "198.51.100.1")
        tokens.append(token)
        # Served: four JSON replies and two streams.
        for _ in range(4):
            provider.enqueue(FakeReply(chunks=["one", " two", " three"]))
            response = http.post("/api/chat", json=HELLO, headers=bearer(token))
            assert response.status_code == 200, response.text
            usages.append(response.json()["usage"])
        for _ in range(2):
            provider.enqueue(FakeReply(chunks=["a", "b"]))
            response = http.post("/api/chat", json=STREAM, headers=bearer(token))
            assert response.status_code == 200, response.text
            [finish] = [event for event in _events(response.text) if event.get("type") == "finish"]
            usages.append(finish["messageMetadata"]["usage"])
        # Refused: no token, a prompt too long, a body that is not a chat.
        assert_error(http.post("/api/chat", json=HELLO), 401, "Unauthorized")
        long_prompt = {"messages": [{"role": "user", "content": "word " * 400}]}
        assert_error(http.post("/api/chat", json=long_prompt, headers=bearer(token)), 413, "PromptTooLarge")
        assert_error(http.post("/api/chat", json={"messages": 3}, headers=bearer(token)), 422, "InvalidRequest")
    # An origin that is not allowed; one client past its mints.
    with httpx.Client(base_url=server.url, headers={"origin": "https://evil.example"}, timeout=20) as http:
        assert_error(http.post("/api/token"), 403, "Forbidden")
    minter = "198.51.100.2"
    for _ in range(MINTS_PER_MINUTE):
        tokens.append(mint(server, minter))
    with http_client(server, minter) as http:
        assert_error(http.post("/api/token"), 429, "RateLimitExceeded")

    # Aborted: a stream the client leaves after its first words.
    provider.enqueue(FakeReply(chunks=["word "] * 300, delay=0.02))
    with (
        http_client(server, "198.51.100.1") as http,
        http.stream("POST", "/api/chat", json=STREAM, headers=bearer(tokens[0])) as stream,
    ):
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if '"text-delta"' in line:
                break
    aborted = ("/api/chat", "POST", "499", "")
    latest: list[Samples] = []

    def recorded() -> bool:
        # Recorded when the request ends: after the worker saw the client go and the budget settled it.
        latest[:] = [scrape(server)[0]]
        return requests_total(latest[0]).get(aborted) == 1

    eventually(recorded)

    samples, text = scrape(server)
    counted = {key: n for key, n in requests_total(samples).items() if key[0] != "/metrics"}
    assert counted == {
        ("/api/token", "POST", "200", ""): 1 + MINTS_PER_MINUTE,
        ("/api/token", "POST", "403", "Forbidden"): 1,
        ("/api/token", "POST", "429", "RateLimitExceeded"): 1,
        ("/api/chat", "POST", "200", ""): 6,
        ("/api/chat", "POST", "401", "Unauthorized"): 1,
        ("/api/chat", "POST", "413", "PromptTooLarge"): 1,
        ("/api/chat", "POST", "422", "InvalidRequest"): 1,
        aborted: 1,
        ("/healthz", "GET", "200", ""): 1,  # LLMGuardProcess's readiness check
    }
    assert requests_total(samples)[("/metrics", "GET", "401", "Unauthorized")] == 4
    refusals = {
        (dict(labels)["guard"], dict(labels)["code"]): n
        for (name, labels), n in samples.items()
        if name == "llmguard_refusals_total"
    }
    assert refusals == {
        ("auth", "Unauthorized"): 1 + 4,  # the chat without a token, and the four scrapes
        ("request", "PromptTooLarge"): 1,
        ("request", "InvalidRequest"): 1,
        ("origin", "Forbidden"): 1,
        ("rate_limit", "RateLimitExceeded"): 1,
    }

    # Tokens: the served replies' usage exactly, plus what the budget charged the aborted stream;
    # together, exactly what the monthly cap in Redis counts.
    served = sum(usage["total_tokens"] for usage in usages)
    assert served == sum(usage["prompt_tokens"] for usage in usages) + 4 * 3 + 2 * 2
    prompt = value(samples, "llmguard_tokens_total", model=MODEL, type="prompt")
    completion = value(samples, "llmguard_tokens_total", model=MODEL, type="completion")
    charged = TOKEN_CAP - value(samples, "llmguard_monthly_cap_remaining", cap="tokens")
    assert prompt + completion == charged
    aborted_tokens = charged - served
    assert usages[0]["prompt_tokens"] < aborted_tokens < usages[0]["prompt_tokens"] + 300
    spent = value(samples, "llmguard_spend_usd_total", model=MODEL)
    assert spent == pytest.approx(SPEND_CAP - value(samples, "llmguard_monthly_cap_remaining", cap="usd"), abs=1e-9)
    # Each request's cost rounds to a millionth of a dollar, as the spend cap counts it.
    assert spent == pytest.approx(DEFAULT_PRICES[MODEL].micro_usd(int(prompt), int(completion)) / 1e6, abs=1e-5)
    # One provider call per served or aborted chat; histograms add up across the workers too.
    assert value(samples, "llmguard_provider_latency_seconds_count", model=MODEL) == 7
    assert value(samples, "llmguard_time_to_first_token_seconds_count", model=MODEL) == 7
    assert value(samples, "llmguard_open_streams") == 0
    assert value(samples, "llmguard_storage_errors_total") == 0

    assert_no_secrets(text, tokens)
    assert TOKEN not in text
    assert "198.51.100." not in text


def test_a_killed_worker_leaves_its_counts_and_takes_its_open_stream(
    server: LLMGuardProcess, provider: FakeProvider
) -> None:
    before, _ = scrape(server)
    served_before = requests_total(before)[("/api/chat", "POST", "200", "")]
    token = mint(server, "198.51.100.3")
    provider.enqueue(FakeReply(chunks=["tick "] * 500, delay=0.05))
    with (
        http_client(server, "198.51.100.3") as http,
        http.stream("POST", "/api/chat", json=STREAM, headers=bearer(token)) as stream,
    ):
        lines = stream.iter_lines()
        for line in lines:
            if '"text-delta"' in line:
                break
        eventually(lambda: value(scrape(server)[0], "llmguard_open_streams") == 1)
        # Killed as the OOM killer would: no chance to take its stream out of the sum itself.
        _, client_port = stream.extensions["network_stream"].get_extra_info("client_addr")
        holder = worker_holding(server, client_port)
        os.kill(holder, signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            for _ in lines:
                pass
    # The other worker answers: the dead one's stream is gone from the sum (once it is reaped) ...
    eventually(lambda: value(scrape(server)[0], "llmguard_open_streams") == 0)
    assert holder not in workers_of(server)
    # ... and what it counted stays counted; the living add to it.
    after, _ = scrape(server)
    assert requests_total(after)[("/api/chat", "POST", "200", "")] == served_before
    with fresh_client(server, "198.51.100.3") as http:
        provider.enqueue(FakeReply(chunks=["again"]), FakeReply(chunks=["and again"]))
        for _ in range(2):
            assert http.post("/api/chat", json=HELLO, headers=bearer(token)).status_code == 200
    assert requests_total(scrape(server)[0])[("/api/chat", "POST", "200", "")] == served_before + 2
    directory = Path(server.metrics_directory)  # type: ignore[attr-defined]
    assert (directory / f"counter_{holder}.db").exists()


def worker_holding(server: LLMGuardProcess, client_port: int) -> int:
    """The worker whose socket is the server's end of the connection from ``client_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server.port and int(remote.split(":")[1], 16) == client_port:
            inodes.add(f"socket:[{inode}]")
    assert inodes, "no such connection"
    for pid in workers_of(server):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError("no worker holds the connection")


# -- Metrics across processes, without a server -------------------------------------------------

PROCESS = """
import asyncio, os, sys
from llmguard import Metrics
print(os.getpid())
metrics = Metrics()
metrics.requests_total.labels("/api/chat", "POST", "200", "").inc(int(sys.argv[1]))
metrics.stream_opened()
if sys.argv[2] == "scrape":
    # A second app in the same process (two create_app calls, say) counts into the same files, and
    # neither writes over what the other counted.
    Metrics().requests_total.labels("/api/chat", "POST", "200", "").inc(1)
    metrics.requests_total.labels("/api/chat", "POST", "200", "").inc(1)
    sys.stdout.write(asyncio.run(metrics.exposition()).decode())
    metrics.close()
"""


def test_two_processes_add_up_and_a_dead_one_leaves_the_gauge(tmp_path: Path) -> None:
    """One process dies holding a stream; another scrapes: the counts add up, the dead stream does not."""
    environ = {**os.environ, MULTIPROC_DIR: str(tmp_path)}

    def run(*args: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", PROCESS, *args], env=environ, capture_output=True, check=True)
        pid, _, output = done.stdout.decode().partition("\n")
        return int(pid), output

    died, _ = run("3", "die")  # its live gauge file stays behind
    assert [path.name for path in tmp_path.glob("gauge_livesum_*.db")] == [f"gauge_livesum_{died}.db"]
    _, output = run("2", "scrape")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(output)
        for sample in family.samples
    }
    chats = value(samples, "llmguard_requests_total", route="/api/chat", method="POST", status="200", code="")
    assert chats == 3 + 2 + 1 + 1
    assert value(samples, "llmguard_open_streams") == 1  # the scraper's own, not the dead one's
    # The scraper stopped cleanly (Metrics.close): no live gauge is left; the counters stay.
    assert list(tmp_path.glob("gauge_livesum_*.db")) == []
    assert len(list(tmp_path.glob("counter_*.db"))) == 2


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
