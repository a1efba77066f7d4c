"""How a script got past the caps, each way tried against real `llmguard serve` processes.

One test (or a few) per finding of the airtight-money issue, numbered as
there. The fake provider runs over real HTTP and bills like a provider: the
prompt (schemas included) from the moment it reads it, hidden reasoning
tokens, and each token it produces, whether or not anyone reads it. Counters
are read from a real Redis. Each test starts its own `llmguard serve` with the
settings it is about.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    SECRET,
    STREAM,
    assert_error,
    assert_no_secrets,
    assert_openai_error,
    bearer,
    http_client,
    mint,
)
from servers import LLMGuardProcess, RawProvider, RedisServer, free_port

from llmguard import Settings
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard.testing import FakeProvider, FakeReply, billable_prompt_tokens


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def fake(fake_upstream: tuple[FakeProvider, str]) -> FakeProvider:
    fake_upstream[0].reset()
    return fake_upstream[0]


Serve = Callable[..., Any]


@pytest.fixture
def serve(
    fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Start `llmguard serve` with these settings on top of a base (limits out of the way, a clean Redis)."""
    processes: list[LLMGuardProcess] = []

    @contextmanager
    def start(*, args: tuple[str, ...] = (), **env: str) -> Iterator[LLMGuardProcess]:
        redis_server.flush()
        base = {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": f"{fake_upstream[1]}/v1",
            "JWT_SECRET": SECRET,
            "ALLOWED_ORIGIN": ORIGIN,
            "STORAGE_URL": redis_server.url,
            "RATE_LIMIT_MAX": "100000",
            "TOKEN_RATE_LIMIT": "100000/minute",
            "TOKENS_PER_IP": "off",
            "UPSTREAM_RETRIES": "0",
            "TRUSTED_PROXIES": "127.0.0.1",
        }
        process = LLMGuardProcess({**base, **env}, tmp_path / f"server-{len(processes)}.log", args=args)
        processes.append(process)
        with process:
            yield process

    yield start
    for process in processes:
        logs = process.logs()
        assert "Traceback" not in logs
        assert_no_secrets(logs)


def window_total(redis_server: RedisServer, ip: str = "203.0.113.7") -> int:
    """What the client window of ``ip`` holds now (this period and the last)."""
    store = redis.Redis.from_url(redis_server.url)
    return sum(int(store.get(key) or 0) for key in store.keys(f"*budget:client:ip:{ip}:*"))


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def words(count: int) -> str:
    return "word " * count


# -- 1. billable input outside the messages ------------------------------------------------------


def schema_body(description_words: int, **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "description": words(description_words), "properties": {"a": {"type": "string"}}}
    return {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "stuffed", "schema": schema}},
        **extra,
    }


def test_1_a_huge_schema_is_refused_like_a_huge_message(serve: Serve, fake: FakeProvider) -> None:
    with serve() as server, http_client(server) as http:
        response = http.post("/v1/chat/completions", json=schema_body(36_000), headers=bearer(mint(server)))
    assert_openai_error(response, 413, "PromptTooLarge")
    assert fake.requests == []


def test_1_parallel_schema_stuffing_stays_within_the_window(serve: Serve, fake: FakeProvider) -> None:
    window = 20_000
    with serve(TOKENS_PER_IP=f"{window}/day", MAX_TOKENS="50") as server:
        token = mint(server)

        def one(_: int) -> httpx.Response:
            with http_client(server) as http:
                return http.post("/v1/chat/completions", json=schema_body(4_000), headers=bearer(token))

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(one, range(20)))
    statuses = sorted(response.status_code for response in responses)
    assert 200 in statuses
    assert 429 in statuses
    # Each served request billed its schema as input: together, within the window.
    assert fake.billed_tokens <= window
    assert min(request.prompt_tokens for request in fake.requests) > 4_000


# -- 2. a JSON request abandoned before the reply --------------------------------------------------


def test_2_abandoned_json_requests_are_charged_and_refused(
    serve: Serve, fake: FakeProvider, redis_server: RedisServer
) -> None:
    window, cap = 1_000, 100
    body = {"messages": [{"role": "user", "content": words(150)}]}  # about 160 tokens
    prompt = estimate_prompt_tokens([words(150)])
    with serve(TOKENS_PER_IP=f"{window}/hour", MAX_TOKENS=str(cap)) as server:
        token = mint(server)
        statuses = []
        for _ in range(12):
            fake.enqueue(FakeReply(chunks=["word "] * cap, first_byte_delay=0.6))
            with http_client(server, timeout=0.2) as http:
                try:
                    statuses.append(http.post("/api/chat", json=body, headers=bearer(token)).status_code)
                except httpx.ReadTimeout:
                    statuses.append(0)  # the client gave up waiting and closed the connection
        wait_for(lambda: all(request.finished for request in fake.requests))
        # Every call that reached the provider ran to its end and was charged what it billed.
        wait_for(lambda: window_total(redis_server) == fake.billed_tokens)
    assert 429 in statuses, statuses
    assert all(request.disconnected_at is None for request in fake.requests)
    assert all(request.prompt_tokens == prompt for request in fake.requests)
    assert fake.billed_tokens <= window


def test_2_a_json_request_the_timeout_cut_is_charged_its_worst_case(
    serve: Serve, fake: FakeProvider, redis_server: RedisServer
) -> None:
    window, cap = 1_000, 100
    prompt = estimate_prompt_tokens(["Hello"])
    with serve(TOKENS_PER_IP=f"{window}/hour", MAX_TOKENS=str(cap), REQUEST_TIMEOUT="1") as server:
        token = mint(server)
        fake.enqueue(FakeReply(first_byte_delay=3))
        with http_client(server) as http:
            response = http.post("/api/chat", json=HELLO, headers=bearer(token))
        assert_error(response, 504, "UpstreamError")
        # What the provider did with it is unknown: it is charged the whole reservation.
        wait_for(lambda: window_total(redis_server) == prompt + cap)


# -- 3. hidden reasoning tokens of a stream closed mid-thought ---------------------------------------


def read_deltas_then_close(server: LLMGuardProcess, token: str, count: int) -> int:
    """Stream a chat, close the connection after ``count`` deltas; the status it started with."""
    with (
        http_client(server) as http,
        http.stream("POST", "/api/chat", json=STREAM, headers=bearer(token)) as response,
    ):
        if response.status_code == 200:
            seen = 0
            for line in response.iter_lines():
                if '"text-delta"' in line:
                    seen += 1
                    if seen == count:
                        break
        return response.status_code


def test_3_a_reasoning_stream_closed_early_is_charged_its_output_cap(
    serve: Serve, fake: FakeProvider, redis_server: RedisServer
) -> None:
    window, cap = 1_500, 300
    prompt = estimate_prompt_tokens(["Hello"])
    with serve(OPENAI_MODEL="o4-mini", TOKENS_PER_IP=f"{window}/hour", MAX_TOKENS=str(cap)) as server:
        token = mint(server)
        statuses = []

        def closed_by_the_client(requests_before: int) -> bool:
            return len(fake.requests) > requests_before and fake.requests[-1].disconnected_at is not None

        for _ in range(8):
            fake.enqueue(FakeReply(chunks=["word "] * 100, reasoning_tokens=250, delay=0.05))
            before = len(fake.requests)
            statuses.append(read_deltas_then_close(server, token, 2))
            if statuses[-1] != 200:
                break
            wait_for(functools.partial(closed_by_the_client, before))
        # Each stream closed mid-reply is charged its prompt and the whole output cap it was given
        # (the hidden tokens came before the text), not the two deltas the client saw.
        charged = sum(prompt + request.json["max_tokens"] for request in fake.requests)
        time.sleep(0.3)  # settlement is done by now; it must not have given anything back
        assert window_total(redis_server) == charged
    assert 429 in statuses, statuses
    assert len(fake.requests) >= 3
    assert fake.billed_tokens <= charged <= window


# -- 4. retries that may bill twice -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_4_a_request_the_provider_may_have_received_is_not_retried(
    serve: Serve, redis_server: RedisServer, transport: str
) -> None:
    cap = 100
    prompt = estimate_prompt_tokens(["Hello"])
    with RawProvider() as provider:  # reads the request, then hangs up
        env = {
            "OPENAI_BASE_URL": f"{provider.url}/v1",
            "UPSTREAM_RETRIES": "2",
            "UPSTREAM_TRANSPORT": transport,
            "TOKENS_PER_IP": "100000/day",
            "MAX_TOKENS": str(cap),
        }
        with serve(**env) as server, http_client(server) as http:
            response = http.post("/api/chat", json=HELLO, headers=bearer(mint(server)))
            assert_error(response, 502, "UpstreamError")
            wait_for(lambda: window_total(redis_server) == prompt + cap)
        assert len(provider.received) == 1, "sent once: a retry could have been billed twice"


def test_4_a_provider_never_reached_is_retried(serve: Serve, redis_server: RedisServer) -> None:
    # Connection refused: nothing was sent, nothing billed; retrying is free and nothing is charged.
    with serve(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", UPSTREAM_RETRIES="1") as server:
        with http_client(server) as http:
            response = http.post("/api/chat", json=HELLO, headers=bearer(mint(server)))
        assert_error(response, 502, "UpstreamError")
        logs = server.logs()
    assert "retrying the provider" in logs
    assert window_total(redis_server) == 0


# -- 5. --workers with --env-file -------------------------------------------------------------------


def test_5_every_worker_runs_on_every_setting_of_the_env_file(
    fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    fake = fake_upstream[0]
    fake.reset()
    redis_server.flush()
    settings = {
        "OPENAI_API_KEY": KEY,
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": "https://one.example.com,https://two.example.com",
        "SYSTEM_PROMPT": "From the env file.",
        "ALLOW_CLIENT_SYSTEM": "false",
        "RATE_LIMIT_MAX": "50",
        "RATE_LIMIT_WINDOW": "2 minutes",
        "OPENAI_BASE_URL": f"{fake_upstream[1]}/v1",
        "OPENAI_MODEL": "gpt-4.1-nano",
        "ALLOWED_MODELS": "gpt-4o-mini",
        "MAX_TOKENS_PARAM": "max_tokens",
        "JWT_TTL": "5 minutes",
        "JWT_ISSUER": "env-file-issuer",
        "JWT_AUDIENCE": "env-file-audience",
        "JWT_MAX_USES": "100",
        "TOKEN_RATE_LIMIT": "40/minute",
        "MAX_TOKENS": "30",
        "MAX_PROMPT_TOKENS": "7000",
        "TOKENS_PER_IP": "90000/day",
        "MONTHLY_TOKEN_CAP": "50",
        "MONTHLY_SPEND_CAP_USD": "7.5",
        "MODEL_PRICES": "gpt-4.1-nano=0.2/0.8",
        "STORAGE_URL": redis_server.url,
        "STORAGE_FAILURE": "open",
        "STORAGE_TIMEOUT": "3",
        "TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8",
        "CLIENT_IP_HEADER": "Fly-Client-IP",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "MAX_BODY_BYTES": "200000",
        "BODY_TIMEOUT": "7",
        "HEADER_TIMEOUT": "8",
        "KEEP_ALIVE_TIMEOUT": "9",
        "MAX_CONNECTIONS": "300",
        "REQUEST_TIMEOUT": "45",
        "UPSTREAM_RETRIES": "1",
        "UPSTREAM_TRANSPORT": "httpx",
        "DEMO_PAGE": "true",
        # The mints below send no solution; the ladder's settings still travel to the workers.
        "TOKEN_CHALLENGE": "off",
        "CHALLENGE_LADDER": "0=2000,10=refuse",
        "CHALLENGE_WINDOW": "2 hours",
        "CHALLENGE_TTL": "2 minutes",
        "CAPTCHA_TIMEOUT": "3",
    }
    env_file = tmp_path / "llmguard.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    log = tmp_path / "workers.log"
    with LLMGuardProcess({}, log, args=("--workers", "2", "--env-file", str(env_file))) as server:
        origin = "https://two.example.com"
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: either worker
        with httpx.Client(base_url=server.url, headers={"origin": origin}, limits=fresh, timeout=20) as http:
            served = 0
            for _ in range(12):
                fake.enqueue(FakeReply(chunks=["w"] * 40))
                token = http.post("/api/token").json()["token"]
                response = http.post("/api/chat", json=HELLO, headers=bearer(token))
                if response.status_code == 200:
                    served += response.json()["usage"]["total_tokens"]
                else:
                    assert_error(response, 503, "TokenCapReached")
        lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    announced = [parse_settings_line(line["message"]) for line in lines if line["message"].startswith("settings: ")]
    assert len(announced) == 2, "one settings line per worker"
    # Each worker runs on every setting exactly as one process would read the file.
    expected = Settings.from_env(settings).describe()
    for worker in announced:
        assert worker == expected
    assert expected["MAX_TOKENS"] == "30"
    assert expected["OPENAI_API_KEY"] == "set"
    # And they acted on them: the provider key, the model, the output cap, the system prompt and
    # the shared monthly cap all came from the file.
    assert fake.requests
    assert all(request.headers["authorization"] == f"Bearer {KEY}" for request in fake.requests)
    assert {request.json["model"] for request in fake.requests} == {"gpt-4.1-nano"}
    assert {request.json["max_tokens"] for request in fake.requests} <= set(range(1, 31))
    assert fake.requests[0].json["messages"][0] == {"role": "system", "content": "From the env file."}
    assert served <= 50


def parse_settings_line(message: str) -> dict[str, str]:
    """``settings: NAME="value" ...`` (JSON strings) back into a mapping."""
    pairs = re.findall(r'\b([A-Z][A-Z0-9_]*)=("(?:[^"\\]|\\.)*")', message)
    return {name: json.loads(value) for name, value in pairs}


# -- 6. no 500 from any input or provider answer ----------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        pytest.param({"stop": "\ud800"}, "stop", id="stop"),
        pytest.param({"stop": ["ok", "\udfff"]}, "stop[1]", id="stop-list"),
        pytest.param(
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "description": "a\ud800b"}}},
            "response_format.json_schema.description",
            id="response_format",
        ),
        pytest.param({"user": "\udc00"}, "user", id="user"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
            "messages[0].content[0].text",
            id="part",
        ),
    ],
)
def test_6_a_lone_surrogate_in_any_field_is_a_400_naming_it(
    serve: Serve, fake: FakeProvider, extra: dict[str, Any], param: str | None
) -> None:
    body = json.dumps({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}], **extra})
    with serve() as server, http_client(server) as http:
        response = http.post(
            "/v1/chat/completions",
            content=body.encode(),
            headers={**bearer(mint(server)), "content-type": "application/json"},
        )
    error = assert_openai_error(response, 400, "InvalidRequest")
    if param is not None:
        assert error["param"] == param
    assert fake.requests == []


def test_6_a_response_format_nested_960_deep_is_a_400(serve: Serve, fake: FakeProvider) -> None:
    nested = '{"type": "json_schema", "json_schema": ' + '{"a": ' * 960 + "1" + "}" * 960 + "}"
    body = '{"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}], "response_format": ' + nested
    with serve() as server, http_client(server) as http:
        response = http.post(
            "/v1/chat/completions",
            content=(body + "}").encode(),
            headers={**bearer(mint(server)), "content-type": "application/json"},
        )
    assert_openai_error(response, 400, "InvalidRequest")
    assert fake.requests == []


@pytest.mark.parametrize("value", ["1e999", "inf", "nan", "-5", "99999999999999999999999"])
def test_6_an_absurd_provider_retry_after_is_clamped(serve: Serve, fake: FakeProvider, value: str) -> None:
    refusal = FakeReply.failure(429, "Slow down.")
    refusal.headers = {"retry-after-ms": value, "retry-after": value}
    fake.enqueue(refusal)
    with serve() as server, http_client(server) as http:
        response = http.post("/api/chat", json=HELLO, headers=bearer(mint(server)))
    assert_error(response, 502, "UpstreamError")
    retry_after = response.headers.get("retry-after")
    assert retry_after is None or 1 <= int(retry_after) <= 86400


# -- 7. slow clients ------------------------------------------------------------------------------


def raw_connection(server: LLMGuardProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(connection: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    connection.settimeout(limit)
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open after {limit} s") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def test_7_a_dripped_body_gets_a_408_within_body_timeout(serve: Serve, fake: FakeProvider) -> None:
    with serve(BODY_TIMEOUT="1.5") as server:
        token = mint(server)
        with raw_connection(server) as connection:
            head = (
                f"POST /api/chat HTTP/1.1\r\nhost: x\r\norigin: {ORIGIN}\r\nauthorization: Bearer {token}\r\n"
                "content-type: application/json\r\ncontent-length: 400\r\n\r\n"
            )
            connection.sendall(head.encode())
            started = time.monotonic()
            for _ in range(3):  # a byte every half second, never the whole body
                connection.sendall(b"{")
                time.sleep(0.5)
            received, _ = read_until_closed(connection, limit=5)
            elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"error":"RequestTimeout"' in received
    assert elapsed < 4
    assert fake.requests == []


def test_7_partial_headers_and_idle_connections_are_closed_while_others_are_served(serve: Serve) -> None:
    with serve(HEADER_TIMEOUT="1.5") as server:
        token = mint(server)
        idle = [raw_connection(server) for _ in range(10)]
        dripping = raw_connection(server)
        dripping.sendall(b"POST /api/chat HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        for _ in range(2):
            dripping.sendall(b"x-slow: a\r\n")
            time.sleep(0.4)
        # Meanwhile, everyone else is served.
        with http_client(server) as http:
            assert http.post("/api/chat", json=HELLO, headers=bearer(token)).status_code == 200
        received, _ = read_until_closed(dripping, limit=5)
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"RequestTimeout" in received
        assert time.monotonic() - started < 4
        for connection in idle:
            assert read_until_closed(connection, limit=5)[0] == b""  # closed, nothing said
            connection.close()
        dripping.close()


def test_7_past_max_connections_a_request_gets_a_json_503(serve: Serve) -> None:
    with serve(MAX_CONNECTIONS="20", HEADER_TIMEOUT="30") as server:
        token = mint(server)
        held = [raw_connection(server) for _ in range(25)]
        time.sleep(0.2)
        with http_client(server) as http:
            busy = http.post("/api/chat", json=HELLO, headers=bearer(token))
        assert_error(busy, 503, "ServerBusy")
        assert busy.headers["retry-after"] == "1"
        for connection in held:
            connection.close()
        time.sleep(0.3)
        with http_client(server) as http:
            assert http.post("/api/chat", json=HELLO, headers=bearer(token)).status_code == 200


# -- 8. the storage URL's password ----------------------------------------------------------------


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmguard", "serve", "--port", str(free_port())],
        env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": KEY, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2-storage-pw@localhost:notaport/0",
        "redis://admin:hunter2-storage-pw@/0",
        "rediss://localhost:6379/0?password=hunter2-storage-pw&db=x",
    ],
)
def test_8_a_bad_storage_url_never_echoes_its_password(url: str) -> None:
    result = run_serve({"STORAGE_URL": url})
    assert result.returncode == 2, result.stderr
    assert "STORAGE_URL" in result.stderr
    assert "hunter2-storage-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_8_a_password_protected_redis_password_appears_nowhere(serve: Serve, tmp_path: Path) -> None:
    password = "hunter2-storage-pw"
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", password]
    redis_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(port, password))
        right = f"redis://:{password}@127.0.0.1:{port}/0"
        wrong = f"redis://:{password}-wrong@127.0.0.1:{port}/0"
        with serve(STORAGE_URL=right, TOKENS_PER_IP="1000/hour") as server, http_client(server) as http:
            assert http.post("/api/chat", json=HELLO, headers=bearer(mint(server))).status_code == 200
            health = http.get("/healthz")
            assert health.json()["storage"] is True
            assert password not in health.text
            assert "settings: " in server.logs()
            assert password not in server.logs()
        with serve(STORAGE_URL=wrong, STORAGE_FAILURE="open", TOKENS_PER_IP="1000/hour") as server:
            with http_client(server) as http:
                assert http.post("/api/chat", json=HELLO, headers=bearer(mint(server))).status_code == 200
                assert http.get("/healthz").json()["storage"] is False
            logs = server.logs()
        assert "storage unavailable" in logs
        assert password not in logs
    finally:
        redis_process.kill()
        redis_process.wait()


def _answers(port: int, password: str) -> bool:
    try:
        with redis.Redis(port=port, password=password, socket_timeout=1) as store:
            return bool(store.ping())
    except redis.ConnectionError:
        return False


# -- 9. text the old estimate undercounted ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("1 " * 6_000, id="space-separated-digits"),  # 12,000 tokens
        pytest.param("\u0000 " * 7_000, id="nul-and-space"),  # 14,000 tokens
        pytest.param("1," * 6_000, id="digits-and-commas"),  # 12,000 tokens
    ],
)
def test_9_text_that_tokenizes_densely_is_measured_as_such(serve: Serve, fake: FakeProvider, text: str) -> None:
    # bytes / 4 said these fit in 8000 tokens; each is more than that.
    assert len(text.encode()) / 4 < 8_000
    with serve() as server, http_client(server) as http:
        response = http.post(
            "/api/chat", json={"messages": [{"role": "user", "content": text}]}, headers=bearer(mint(server))
        )
    assert_error(response, 413, "PromptTooLarge")
    assert fake.requests == []


# -- 10. dated snapshots ---------------------------------------------------------------------------


def test_10_a_dated_snapshot_is_priced_as_itself(serve: Serve, fake: FakeProvider) -> None:
    # gpt-4o-2024-05-13 costs $5 / $15 per million tokens, twice gpt-4o's $2.50 / $10: a cap that
    # holds one of these requests at the snapshot's price would hold two at the family's.
    model = "gpt-4o-2024-05-13"
    body = {"messages": [{"role": "user", "content": words(400)}]}
    prompt = billable_prompt_tokens({"messages": body["messages"]})
    one = prompt * 5 + 50 * 15  # micro-dollars
    cap_usd = 1.5 * one / 1e6
    assert 2 * (prompt * 2.5 + 50 * 10) <= 1.5 * one, "two would fit at the family's price"
    with serve(OPENAI_MODEL=model, MONTHLY_SPEND_CAP_USD=repr(cap_usd), MAX_TOKENS="50") as server:
        token = mint(server)
        with http_client(server) as http:
            fake.enqueue(FakeReply(chunks=["w"] * 50), FakeReply(chunks=["w"] * 50))
            first = http.post("/api/chat", json=body, headers=bearer(token))
            second = http.post("/api/chat", json=body, headers=bearer(token))
    assert first.status_code == 200, first.text
    assert_error(second, 503, "SpendCapReached")
    assert len(fake.requests) == 1


def test_10_a_spend_cap_on_an_unpriced_snapshot_refuses_to_start() -> None:
    result = run_serve({"OPENAI_MODEL": "gpt-4o-2099-01-01", "MONTHLY_SPEND_CAP_USD": "10"})
    assert result.returncode == 2
    assert "gpt-4o-2099-01-01" in result.stderr
    assert "MODEL_PRICES" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_fake_bills_text_as_the_estimate_counts_it() -> None:
    # The tests above reason with the estimate; the fake must bill by the same measure.
    payload = {"messages": [{"role": "user", "content": "Hello"}]}
    assert billable_prompt_tokens(payload) == estimate_prompt_tokens(["Hello"])
    assert estimate_text_tokens(words(10)) >= 10
