"""Faults at every phase of a chat, injected into real processes: the provider's, then the storage's.

Every check runs `llmguard serve` as a process on a real redis-server, with both token budgets
on (the client window and the monthly token cap) and ``UPSTREAM_RETRIES=2``. The provider is
the fake over real HTTP, a raw socket server for what no well-behaved server does (silence, a
stall mid-stream, bytes that are not SSE or not HTTP, a body cut mid-chunk, a hang-up), or a
port where nothing listens. Redis is killed and started again under a steady trickle of
requests, and slowed down by a latency proxy.

After each fault the client has the documented answer (a status and a code, or a stream's
``error`` chunk) within its deadline, never a 500 and never a hang; the provider was asked
again only if it was never reached; and the counters in Redis hold exactly what
``llmguard._charges.charge`` says the call costs: nothing left held, nothing charged twice.

A process costs seconds to start, so a scenario starts its processes together in a fixture
and, where the provider allows it, runs its cases at once, one client address each (a client
has its own token window); the tests then check one case each. llmguard writes a request's
access line after settling it, so checks wait for that line (found by the request id) rather
than for a time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from harness import HELLO, KEY, ORIGIN, SECRET, assert_no_secrets, bearer, http_client, sse_events
from servers import (
    InBackground,
    LatencyProxy,
    LLMGuardProcess,
    RawProvider,
    RawReply,
    RedisServer,
    RestartableRedis,
    ThreadedServer,
    free_port,
)

from llmguard._charges import IN_FLIGHT_TOKENS
from llmguard._reservation import SETTLE_ATTEMPTS
from llmguard._tokens import estimate_prompt_tokens, estimate_text_tokens
from llmguard.testing import FakeProvider, FakeReply

CAP = 200  # MAX_TOKENS: the output cap every call is reserved and sent with
# Long enough for a provider's first bytes to reach llmguard on a busy machine, twenty calls at once.
REQUEST_TIMEOUT = 2.0
# Where Redis is the fault. Elsewhere it is 5 s: many chats at once on a busy machine must not
# find a slow storage call there.
STORAGE_TIMEOUT = 1.0
# Storage calls a chat makes before the provider is called: the rate limit's, then the hold.
STORAGE_CALLS = 2
# Seconds of scheduling noise allowed on a shared two-core machine, over any computed bound.
SLACK = 3.0
CHAT, OPENAI = "/api/chat", "/v1/chat/completions"
TRANSPORTS = ("httpx", "aiohttp")
FAILURES = ("closed", "open")

_addresses = itertools.count(1)


def fresh_ip() -> str:
    """A client address nothing else in this module uses: a token window of its own."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


# -- llmguard, its counters and its access lines -------------------------------------------------


class Guard:
    """A running `llmguard serve`, and the Redis database it counts in (read directly)."""

    def __init__(self, process: LLMGuardProcess, redis_url: str) -> None:
        self.process = process
        self.redis_url = redis_url
        self.tokens: dict[str, str] = {}

    def client(self, ip: str, timeout: float = 30) -> httpx.Client:
        return http_client(self.process, ip, timeout=timeout)

    def token(self, ip: str) -> str:
        if ip not in self.tokens:
            with self.client(ip) as http:
                response = http.post("/api/token")
            assert response.status_code == 200, response.text
            self.tokens[ip] = response.json()["token"]
        return self.tokens[ip]

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.process.logs())

    def access_line(self, request_id: str, timeout: float = 15) -> dict[str, Any]:
        """The request's access line, written once it is settled (waits for it, within reason)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if line.get("request_id") == request_id and line.get("logger") == "llmguard.access":
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access line for {request_id} after {timeout} s: the request never ended")
            time.sleep(0.02)

    def window(self, ip: str) -> int:
        """What the client window of ``ip`` holds (this period and the last)."""
        with redis.Redis.from_url(self.redis_url) as store:
            return sum(int(store.get(key) or 0) for key in store.keys(f"*budget:client:ip:{ip}:*"))

    def month(self) -> int:
        """What the monthly token cap's counter holds."""
        with redis.Redis.from_url(self.redis_url) as store:
            return sum(int(store.get(key) or 0) for key in store.keys("*budget:month-tokens:*"))


def database(url: str, index: int) -> str:
    """The same Redis, another of its databases: counters apart."""
    return f"{url.rsplit('/', 1)[0]}/{index}"


def guard_env(storage_url: str, provider_url: str, **overrides: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": provider_url,
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": storage_url,
        "STORAGE_FAILURE": "closed",
        "STORAGE_TIMEOUT": "5",
        "RATE_LIMIT_MAX": "100000",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "10000000/hour",
        "MONTHLY_TOKEN_CAP": "1000000000",
        "MAX_TOKENS": str(CAP),
        "MAX_PROMPT_TOKENS": "1000",
        "UPSTREAM_RETRIES": "2",
        "REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_FORMAT": "json",
        **overrides,
    }


@contextmanager
def running(
    directory: Path,
    envs: Mapping[str, dict[str, str]],
    *,
    read_urls: Mapping[str, str] | None = None,
    warm: str | None = "[warm] Hello",
) -> Iterator[dict[str, Guard]]:
    """`llmguard serve` with each of ``envs``, started together and warmed up; their logs hold no secret.

    Warming up is done before anything is timed: the first chat loads the tokenizer's tables,
    and (``warm``: a chat the provider answers) the first provider call sets up the connection
    pool, importing aiohttp; each takes a second or more on a busy machine.
    """
    processes = {name: LLMGuardProcess(env, directory / f"{name}.log") for name, env in envs.items()}
    with ExitStack() as stack, concurrent.futures.ThreadPoolExecutor() as pool:
        started = {name: pool.submit(process.__enter__) for name, process in processes.items()}
        for name, future in started.items():
            if future.exception() is None:
                stack.push(processes[name].__exit__)
        for future in started.values():
            future.result()
        guards = {
            name: Guard(process, (read_urls or {}).get(name, envs[name]["STORAGE_URL"]))
            for name, process in processes.items()
        }
        for warming in [pool.submit(warm_up, guard, warm) for guard in guards.values()]:
            warming.result()
        yield guards
    for process in processes.values():
        logs = process.logs()
        assert_no_secrets(logs)


def warm_up(guard: Guard, content: str | None) -> None:
    ip = fresh_ip()
    with guard.client(ip) as http:
        # Refused as too large: it reaches neither the provider nor the budgets.
        body = {"messages": [{"role": "user", "content": "word " * 1500}]}
        response = http.post(CHAT, json=body, headers=bearer(guard.token(ip)))
        assert response.status_code == 413, response.text
        if content is not None:
            # The first call may run out of REQUEST_TIMEOUT while llmguard sets its client up.
            body = {"messages": [{"role": "user", "content": content}]}
            for _ in range(3):
                response = http.post(CHAT, json=body, headers=bearer(guard.token(ip)))
                if response.status_code == 200:
                    break
            assert response.status_code == 200, response.text


def log_lines(logs: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``logs``, in the order they were written."""
    lines = []
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):  # the last line may be half written
            lines.append(json.loads(line))
    return [line for line in lines if isinstance(line, dict)]


def settlement_lost(logs: str, request_id: str) -> bool:
    """Whether llmguard said in ``logs`` that it gave up settling request ``request_id``'s charge.

    That line does not name the request, but it is the request's own line just before its access
    line: the settlement that gives up and the access line follow each other with nothing awaited
    in between, so no other request's line can come between them. (A refusal's settlement, tried
    once, does not count: a chat that ran is settled with SETTLE_ATTEMPTS tries.)
    """
    lines = log_lines(logs)
    (index,) = [
        index
        for index, line in enumerate(lines)
        if line.get("logger") == "llmguard.access" and line.get("request_id") == request_id
    ]
    before = lines[index - 1] if index else {}
    given_up = f"could not settle a budget reservation ({SETTLE_ATTEMPTS} tries)"
    return before.get("logger") == "llmguard.budget" and str(before.get("message", "")).startswith(given_up)


# -- one call, its answer, and what it should cost ---------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    elapsed: float

    @property
    def request_id(self) -> str | None:
        request_id: str | None = self.headers.get("x-request-id")
        return request_id

    def code(self) -> str | None:
        """The error code of a JSON refusal, in llmguard's shape or OpenAI's."""
        error = json.loads(self.body)["error"]
        code: str | None = error["code"] if isinstance(error, dict) else error
        return code

    def events(self) -> list[Any]:
        """The stream's ``data`` payloads, JSON-decoded (``"[DONE]"`` as the string)."""
        return sse_events(self.body)

    def usage(self) -> int:
        """The total tokens a served reply says it was charged (JSON, or a UI stream's finish)."""
        if self.headers["content-type"].startswith("text/event-stream"):
            return int(self.events()[-2]["messageMetadata"]["usage"]["total_tokens"])
        return int(json.loads(self.body)["usage"]["total_tokens"])


def ask(guard: Guard, ip: str, route: str, content: str, *, stream: bool, model: str | None = None) -> Answer:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "stream": stream}
    if model is not None:
        body["model"] = model
    token = guard.token(ip)
    with guard.client(ip) as http:
        started = time.monotonic()
        with http.stream("POST", route, json=body, headers=bearer(token)) as response:
            data = response.read()
        return Answer(response.status_code, response.headers, data, time.monotonic() - started)


def assert_refused(answer: Answer, status: int, code: str = "UpstreamError") -> None:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"] == "application/json"
    assert answer.code() == code


def assert_stream_failed(answer: Answer, route: str, relayed: Sequence[str]) -> None:
    """A stream that started, relayed ``relayed``, then ended with an error in its route's shape."""
    assert answer.status == 200, (answer.status, answer.body[:300])
    events = answer.events()
    if route == CHAT:
        deltas = [event["delta"] for event in events if isinstance(event, dict) and event["type"] == "text-delta"]
        assert events[-1] == "[DONE]", events
        assert events[-2]["type"] == "error", events
        assert events[-2]["code"] == "UpstreamError", events
        assert "finish" not in [event["type"] for event in events[:-1]]
    else:
        deltas = [
            event["choices"][0]["delta"].get("content")
            for event in events
            if isinstance(event, dict) and event.get("choices")
        ]
        deltas = [delta for delta in deltas if delta]
        assert events[-1]["error"]["code"] == "UpstreamError", events
    assert deltas == list(relayed)


def assert_finished(answer: Answer) -> int:
    """A UI message stream that ended normally; the tokens its finish says it was charged."""
    assert answer.status == 200, (answer.status, answer.body[:300])
    events = answer.events()
    assert events[-1] == "[DONE]", events[-3:]
    assert events[-2]["type"] == "finish", events[-3:]
    return answer.usage()


def prompt_of(content: str) -> int:
    """The prompt bound llmguard reserves for a chat of this one message (no system prompt)."""
    return estimate_prompt_tokens([content])


def worst_case(content: str) -> int:
    """Sent, then lost: the prompt and the whole output cap."""
    return prompt_of(content) + CAP


def cut_short(content: str, relayed: Sequence[str]) -> int:
    """A reply without usage that ended early: the prompt, the text relayed, what was in flight."""
    output = max(len([text for text in relayed if text]), estimate_text_tokens("".join(relayed)))
    return prompt_of(content) + min(CAP, output + IN_FLIGHT_TOKENS)


@dataclass
class Settled:
    """One call's answer and, once settled, what its client window and its access line say."""

    answer: Answer
    window: int
    logged: int
    status_logged: int


def settle(guard: Guard, ip: str, answer: Answer) -> Settled:
    if answer.request_id is None:
        # Only a crash answers without the id (Starlette's 500, outside every middleware): give
        # its settlement a moment instead, and say nothing was logged.
        time.sleep(0.5)
        return Settled(answer, guard.window(ip), -1, -1)
    line = guard.access_line(answer.request_id)
    logged = (line["prompt_tokens"] or 0) + (line["completion_tokens"] or 0)
    return Settled(answer, guard.window(ip), logged, line["status"])


def assert_charged(guard: Guard, answer: Answer, ip: str, month_before: int, expected: int) -> None:
    """Once settled: the client window, the monthly counter and the access line all say ``expected``."""
    settled = settle(guard, ip, answer)
    charged = {"window": settled.window, "month": guard.month() - month_before, "logged": settled.logged}
    assert charged == {"window": expected, "month": expected, "logged": expected}


def raised(result: Any) -> Any:
    """A result of `parallel`, or the exception it holds raised."""
    if isinstance(result, BaseException):
        raise result
    return result


def parallel(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once; each one's result, or the exception it raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.exception() or future.result() for future in futures]


# -- provider faults: a raw server's ------------------------------------------------------------

SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n"
CHUNKED_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)


def event(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def deltas(*texts: str) -> bytes:
    return event({"role": "assistant", "content": ""}) + b"".join(event({"content": text}) for text in texts)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def json_reply(body: bytes) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def completion(text: str, completion_tokens: int) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": completion_tokens,
                "total_tokens": 12 + completion_tokens,
            },
        }
    ).encode()


def reply(*pieces: bytes, hold: bool = False) -> RawReply:
    return RawReply(pieces, hold=hold)


JUNK = bytes(range(256)).replace(b"\n", b"") * 8 + b"\n\n" + b"\xff\xfe\x00 data" * 50
HALF_AN_EVENT = b"80\r\n" + event({"content": "lo"})[:30]  # a chunk of 0x80 bytes, cut after 30
# A provider that ignores `"stream": true` and answers the whole completion as JSON: it billed it all.
WHOLE_COMPLETION = completion("w " * CAP, CAP)


@dataclass(frozen=True)
class RawFault:
    """What the raw provider does, on which route, and what llmguard should make of it."""

    reply: RawReply
    route: str
    stream: bool
    #: The status of the answer: 200 for a stream that had started, else the refusal's.
    status: int
    #: The deltas relayed before the fault.
    relayed: tuple[str, ...] = ()
    #: Whether the provider keeps silent until llmguard's deadline.
    stalls: bool = False
    #: What the provider's answer says it billed, when it says: charging that is right too.
    billed: int | None = None

    def due(self, content: str) -> set[int]:
        """A stream cut short; or, nothing relayed and the outcome unknown, the worst case."""
        due = {cut_short(content, self.relayed) if self.status == 200 else worst_case(content)}
        return due if self.billed is None else {*due, self.billed}


RAW_FAULTS = {
    # Accepted, read, and never a byte back: the deadline answers.
    "silent-json": RawFault(reply(hold=True), CHAT, False, 504, stalls=True),
    "silent-stream": RawFault(reply(hold=True), CHAT, True, 504, stalls=True),
    "silent-openai": RawFault(reply(hold=True), OPENAI, True, 504, stalls=True),
    # Hangs up once it has read the request, as HangUpProvider does.
    "hang-up-json": RawFault(reply(), CHAT, False, 502),
    "hang-up-stream": RawFault(reply(), CHAT, True, 502),
    "hang-up-openai": RawFault(reply(), OPENAI, False, 502),
    # Two deltas, then silence on an open connection.
    "stall-stream": RawFault(reply(SSE_HEAD + deltas("Hel", "lo"), hold=True), CHAT, True, 200, ("Hel", "lo"), True),
    "stall-openai": RawFault(reply(SSE_HEAD + deltas("Hel", "lo"), hold=True), OPENAI, True, 200, ("Hel", "lo"), True),
    # Garbage in the stream.
    "not-json-data": RawFault(reply(SSE_HEAD, deltas("Hel"), b"data: {not json at all\n\n"), CHAT, True, 200, ("Hel",)),
    "binary-junk": RawFault(reply(SSE_HEAD, deltas("Hel"), JUNK), CHAT, True, 200, ("Hel",)),
    "binary-data": RawFault(reply(SSE_HEAD, b"data: \xff\xfe\x00\x81junk\n\n"), OPENAI, True, 200),
    "error-event": RawFault(
        reply(SSE_HEAD, deltas("Hel"), b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'),
        CHAT,
        True,
        200,
        ("Hel",),
    ),
    # The connection cut in the middle of a chunk: half an event, then FIN.
    "cut-mid-chunk": RawFault(reply(CHUNKED_SSE_HEAD, chunk(deltas("Hel")), HALF_AN_EVENT), CHAT, True, 200, ("Hel",)),
    "cut-mid-chunk-openai": RawFault(
        reply(CHUNKED_SSE_HEAD, chunk(deltas("Hel")), HALF_AN_EVENT), OPENAI, True, 200, ("Hel",)
    ),
    "bad-chunk-size": RawFault(
        reply(CHUNKED_SSE_HEAD, chunk(deltas("Hel")), b"zz\r\n" + event({"content": "lo"})), CHAT, True, 200, ("Hel",)
    ),
    # Answers that are not what was asked for.
    "json-garbage": RawFault(reply(json_reply(b"<html>oops</html>")), CHAT, False, 502),
    "json-cut": RawFault(reply(json_reply(WHOLE_COMPLETION)[:160]), CHAT, False, 502),
    "not-http-json": RawFault(reply(b"-ERR unknown command 'POST'\r\n"), CHAT, False, 502),
    "not-http-stream": RawFault(reply(b"\x00\xff\xfe\x15\x03\x01 not http\r\n\r\n"), OPENAI, True, 502),
    # A whole completion (its usage says what was billed) where a stream was asked for: refused,
    # and charged the usage or, unread, the worst case. Never less than the provider billed.
    "json-not-sse": RawFault(reply(json_reply(WHOLE_COMPLETION)), CHAT, True, 502, billed=12 + CAP),
}


@dataclass
class RawRun:
    """One llmguard on one raw provider: each fault's settled call, and what the month counted."""

    provider: RawProvider
    calls: dict[str, Settled | BaseException]
    month: int


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def raw_runs(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RawRun]]:
    """Every raw fault at once, on each transport (one llmguard each, one Redis database each)."""
    replies = {f"[{name}]".encode(): fault.reply for name, fault in RAW_FAULTS.items()}
    replies[b"[warm]"] = reply(json_reply(completion("Hi!", 2)))
    with RawProvider(replies) as via_httpx, RawProvider(replies) as via_aiohttp:
        providers = {"httpx": via_httpx, "aiohttp": via_aiohttp}
        envs = {
            transport: guard_env(
                database(redis_server.url, index + 1),
                f"{provider.url}/v1",
                UPSTREAM_TRANSPORT=transport,
            )
            for index, (transport, provider) in enumerate(providers.items())
        }
        with running(tmp_path_factory.mktemp("raw"), envs) as guards:

            def run(guard: Guard, name: str) -> Settled:
                ip, fault = fresh_ip(), RAW_FAULTS[name]
                answer = ask(guard, ip, fault.route, content_of(name), stream=fault.stream)
                return settle(guard, ip, answer)

            runs = {}
            for transport, guard in guards.items():
                month_before = guard.month()
                calls = parallel([functools.partial(run, guard, name) for name in RAW_FAULTS])
                runs[transport] = RawRun(
                    providers[transport], dict(zip(RAW_FAULTS, calls, strict=True)), guard.month() - month_before
                )
            yield runs


def content_of(name: str) -> str:
    return f"[{name}] Hello"


@pytest.mark.parametrize("name", RAW_FAULTS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_provider_fault_is_answered_in_time_and_charged_by_the_rules(
    raw_runs: dict[str, RawRun], transport: str, name: str
) -> None:
    run, fault = raw_runs[transport], RAW_FAULTS[name]
    settled = run.calls[name]
    if isinstance(settled, BaseException):
        raise settled
    answer = settled.answer
    if fault.status == 200:
        assert_stream_failed(answer, fault.route, fault.relayed)
    else:
        assert_refused(answer, fault.status)
    assert settled.status_logged == answer.status
    # Bounded by the deadline when the provider stalls; at once when it breaks.
    assert answer.elapsed < (REQUEST_TIMEOUT if fault.stalls else 0) + SLACK, answer.elapsed
    if fault.stalls:
        assert answer.elapsed >= REQUEST_TIMEOUT * 0.9
    # The request reached the provider: it may have billed it, so it was not sent again.
    assert run.provider.count(f"[{name}]".encode()) == 1
    due = fault.due(content_of(name))
    assert settled.window in due, f"charged {settled.window}, due {' or '.join(map(str, sorted(due)))}"
    assert settled.logged == settled.window


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_monthly_cap_counted_each_provider_fault_as_the_client_windows_did(
    raw_runs: dict[str, RawRun], transport: str
) -> None:
    run = raw_runs[transport]
    windows = sum(settled.window for settled in run.calls.values() if isinstance(settled, Settled))
    assert run.month == windows


# -- provider faults: nothing listening ----------------------------------------------------------


def test_a_provider_refusing_connections_is_retried_and_charged_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    # Long enough for both retries' backoff (0.5 s then 1 s, each give or take a fifth).
    envs = {
        transport: guard_env(
            database(redis_server.url, index + 3), nobody, REQUEST_TIMEOUT="6", UPSTREAM_TRANSPORT=transport
        )
        for index, transport in enumerate(TRANSPORTS)
    }
    calls = [(CHAT, False), (CHAT, True), (OPENAI, True)]
    with running(tmp_path, envs, warm=None) as guards:
        months = {name: guard.month() for name, guard in guards.items()}
        cases = [(guard, fresh_ip(), route, stream) for guard in guards.values() for route, stream in calls]
        answers = parallel(
            [functools.partial(ask, guard, ip, route, "Hello", stream=stream) for guard, ip, route, stream in cases]
        )
        for (guard, ip, _, _), answer in zip(cases, answers, strict=True):
            assert_refused(answer, 502)
            # The backoff, and (the first call on each process) setting up the provider's client.
            assert answer.elapsed < 0.6 + 1.2 + 1 + SLACK
            settled = settle(guard, ip, answer)
            assert (settled.window, settled.logged) == (0, 0)
        for name, guard in guards.items():
            assert guard.month() == months[name]
            # Never reached, so nothing billed: each call tried three times (two retries).
            retries = [line for line in guard.lines() if line["message"].startswith("retrying the provider")]
            assert len(retries) == 2 * len(calls), name


# -- provider faults: the fake's --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_guard(
    fake_upstream: tuple[FakeProvider, str], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Guard, FakeProvider]]:
    fake_upstream[0].reset()
    env = guard_env(database(redis_server.url, 5), f"{fake_upstream[1]}/v1", ALLOWED_MODELS="o4-mini")
    with running(tmp_path_factory.mktemp("fake"), {"fake": env}) as guards:
        yield guards["fake"], fake_upstream[0]


@dataclass(frozen=True)
class FakeFault:
    reply: FakeReply
    route: str
    #: The deltas relayed before the fault.
    relayed: tuple[str, ...]
    model: str | None = None
    stalls: bool = False

    def due(self, content: str) -> int:
        if self.model == "o4-mini":
            return worst_case(content)  # hidden reasoning came first: the whole cap may be billed
        return cut_short(content, self.relayed)


WORDS = ("Hel", "lo ", "there ", "friend")
FAKE_FAULTS = {
    "abrupt-cut": FakeFault(FakeReply(chunks=WORDS, cut_after=2, abrupt=True), CHAT, WORDS[:2]),
    "abrupt-cut-openai": FakeFault(FakeReply(chunks=WORDS, cut_after=2, abrupt=True), OPENAI, WORDS[:2]),
    "ends-unfinished": FakeFault(FakeReply(chunks=WORDS, cut_after=3), CHAT, WORDS[:3]),
    # The role event, then nothing for longer than the deadline.
    "stall-before-text": FakeFault(FakeReply(chunks=WORDS, delay=5), CHAT, (), stalls=True),
    "reasoning-cut": FakeFault(
        FakeReply(chunks=WORDS, reasoning_tokens=150, cut_after=1, abrupt=True), CHAT, WORDS[:1], model="o4-mini"
    ),
}


@pytest.mark.parametrize("name", FAKE_FAULTS)
def test_a_stream_the_provider_breaks_is_answered_in_time_and_charged_by_the_rules(
    fake_guard: tuple[Guard, FakeProvider], name: str
) -> None:
    guard, fake = fake_guard
    fault = FAKE_FAULTS[name]
    fake.reset()
    fake.enqueue(fault.reply)
    ip, content = fresh_ip(), content_of(name)
    month_before = guard.month()
    answer = ask(guard, ip, fault.route, content, stream=True, model=fault.model)
    assert_stream_failed(answer, fault.route, fault.relayed)
    assert answer.elapsed < (REQUEST_TIMEOUT if fault.stalls else 0) + SLACK
    assert len(fake.requests) == 1
    expected = fault.due(content)
    assert_charged(guard, answer, ip, month_before, expected)
    assert fake.requests[0].billed_tokens <= expected, "charged less than the provider billed"


@pytest.mark.parametrize(("route", "stream"), [(CHAT, False), (CHAT, True), (OPENAI, False)])
def test_refusals_are_retried_and_the_answer_charged_once(
    fake_guard: tuple[Guard, FakeProvider], route: str, stream: bool
) -> None:
    guard, fake = fake_guard
    # Refused twice (billed nothing), answered the third time: one charge, the provider's usage.
    fake.reset()
    busy = FakeReply.failure(503, "Overloaded.", type="server_error", retry_after=0)
    fake.enqueue(busy, busy, FakeReply(chunks=WORDS))
    ip = fresh_ip()
    month_before = guard.month()
    answer = ask(guard, ip, route, "Hello", stream=stream)
    assert answer.status == 200, answer.body[:300]
    assert len(fake.requests) == 3
    assert fake.requests[2].billed_tokens == prompt_of("Hello") + len(WORDS)
    assert_charged(guard, answer, ip, month_before, fake.requests[2].billed_tokens)


def test_refusals_past_the_retries_are_charged_nothing(fake_guard: tuple[Guard, FakeProvider]) -> None:
    guard, fake = fake_guard
    fake.reset()
    fake.enqueue(*[FakeReply.failure(503, "Overloaded.", type="server_error", retry_after=0)] * 3)
    ip = fresh_ip()
    month_before = guard.month()
    answer = ask(guard, ip, CHAT, "Hello", stream=True)
    assert_refused(answer, 502)
    assert json.loads(answer.body)["upstream_status"] == 503
    assert len(fake.requests) == 3
    assert_charged(guard, answer, ip, month_before, 0)


def test_a_refusal_whose_retry_the_deadline_cuts_short_is_charged_nothing(
    fake_guard: tuple[Guard, FakeProvider],
) -> None:
    guard, fake = fake_guard
    # The provider refuses (it billed nothing) and asks for a wait longer than what is left of
    # REQUEST_TIMEOUT: the deadline strikes while llmguard waits to retry.
    fake.reset()
    fake.enqueue(FakeReply.failure(503, "Overloaded.", type="server_error", retry_after=REQUEST_TIMEOUT + 2))
    ip = fresh_ip()
    month_before = guard.month()
    answer = ask(guard, ip, CHAT, "Hello", stream=False)
    assert answer.status in (502, 504), answer.body[:300]
    assert answer.code() == "UpstreamError"
    assert answer.elapsed < REQUEST_TIMEOUT + SLACK
    assert len(fake.requests) == 1
    assert fake.requests[0].billed_tokens == 0
    assert_charged(guard, answer, ip, month_before, 0)


# -- Redis killed and restarted ------------------------------------------------------------------------


def words_asked(messages: Sequence[Mapping[str, Any]]) -> str:
    """The fake's reply: ``N`` words when the last message says ``N words``, else a short greeting."""
    match = re.search(r"(\d+) words", str(messages[-1].get("content", "")))
    return "word " * int(match.group(1)) if match else "Hi there, friend."


@contextmanager
def slow_streaming_provider() -> Iterator[str]:
    """A fake of its own that streams a word every 0.1 s (JSON replies come at once); its URL."""
    provider = FakeProvider(api_key=KEY, delay=0.1, reply=words_asked)
    with ThreadedServer(provider) as server:
        yield f"{server.url}/v1"


@dataclass
class Call:
    started: float
    ended: float
    status: int
    code: str | None
    request_id: str | None


class Trickle(InBackground):
    """JSON chats one after the other, on one connection, until stopped: what each got, and when."""

    join_timeout = 30

    def __init__(self, guard: Guard, ip: str) -> None:
        super().__init__()
        self.guard, self.ip = guard, ip
        self.calls: list[Call] = []
        self.token = guard.token(ip)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        assert not self.thread.is_alive(), "a chat never ended"

    def run(self) -> None:
        with self.guard.client(self.ip, timeout=20) as http:
            while not self.stopping.is_set():
                started = time.monotonic()
                response = http.post(CHAT, json=HELLO, headers=bearer(self.token))
                code = None if response.status_code == 200 else response.json().get("error")
                request_id = response.headers.get("x-request-id")
                self.calls.append(Call(started, time.monotonic(), response.status_code, code, request_id))
                time.sleep(0.05)


class Streamer(threading.Thread):
    """One streamed chat read to its end on a thread; ``started`` is set at its first bytes."""

    def __init__(self, guard: Guard, ip: str, content: str) -> None:
        super().__init__(daemon=True)
        self.guard, self.ip, self.content = guard, ip, content
        self.token = guard.token(ip)
        self.started = threading.Event()
        self.answer: Answer | None = None

    def run(self) -> None:
        body = {"messages": [{"role": "user", "content": self.content}], "stream": True}
        began = time.monotonic()
        data = b""
        with (
            self.guard.client(self.ip) as http,
            http.stream("POST", CHAT, json=body, headers=bearer(self.token)) as response,
        ):
            for piece in response.iter_bytes():
                self.started.set()  # the response started: the budget was reserved
                data += piece
        self.started.set()
        self.answer = Answer(response.status_code, response.headers, data, time.monotonic() - began)

    def result(self) -> Answer:
        self.join(timeout=30)
        assert self.answer is not None, "the stream never ended"
        return self.answer


@dataclass
class Outage:
    """What one llmguard saw of Redis killed and started again, twice."""

    failure: str  # STORAGE_FAILURE
    killed: float
    restarted: float
    #: Chats one after the other through the first outage.
    trickle: list[Call]
    #: A stream reserved before the first kill, that ended during the outage, and its client's
    #: window after the restart (Redis came back empty: only what settled since counts there).
    stream: Answer
    stream_window: int
    #: Chats at once from new clients, after the trickle (1.5 s after the first restart): each one settled.
    burst: list[Settled]
    #: Three chats from a new client after that: what the window and the month counted, what was due.
    recount: dict[str, int]
    #: A stream reserved before the second kill that ended after the restart, and its client's
    #: window once it settled (Redis came back empty, so only this stream counts there).
    outlived: Answer
    outlived_window: int
    logs: str


def clients(guard: Guard, count: int = 8) -> list[str]:
    """``count`` new clients, each with a token (minting counts in Redis: done beforehand)."""
    ips = [fresh_ip() for _ in range(count)]
    for ip in ips:
        guard.token(ip)
    return ips


def burst(guard: Guard, ips: Sequence[str]) -> list[Settled]:
    """A chat from each of ``ips`` at once, each settled."""
    answers = parallel([functools.partial(ask, guard, ip, CHAT, "Hello", stream=False) for ip in ips])
    return [settle(guard, ip, raised(answer)) for ip, answer in zip(ips, answers, strict=True)]


def recount(guard: Guard, ip: str) -> dict[str, int]:
    """Three chats from ``ip``: what its window and the month counted, and what they cost."""
    month_before = guard.month()
    answers = [ask(guard, ip, CHAT, "Hello", stream=False) for _ in range(3)]
    for answer in answers:
        assert answer.status == 200, answer.body
        assert answer.request_id is not None
        guard.access_line(answer.request_id)
    due = sum(answer.usage() for answer in answers)
    return {"window": guard.window(ip), "month": guard.month() - month_before, "due": due}


def started(streams: Mapping[str, Streamer]) -> None:
    for streamer in streams.values():
        streamer.start()
    for streamer in streams.values():
        assert streamer.started.wait(10), "a stream never started"


@pytest.fixture(scope="module")
def outages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outage]]:
    """Redis killed and started again under two llmguards, one failing closed, one failing open.

    First under a trickle of chats, a stream ending during the outage, and a burst of chats
    after the restart; then, with nothing else running, a stream outliving a second restart.
    """
    store = RestartableRedis()
    with store, slow_streaming_provider() as provider_url:
        envs = {
            failure: guard_env(
                database(store.url, index),
                provider_url,
                STORAGE_FAILURE=failure,
                STORAGE_TIMEOUT=str(STORAGE_TIMEOUT),
                REQUEST_TIMEOUT="30",
            )
            for index, failure in enumerate(FAILURES)
        }
        with running(tmp_path_factory.mktemp("outage"), envs) as guards:
            # Tokens first: minting counts in Redis.
            trickles = {failure: Trickle(guard, fresh_ip()) for failure, guard in guards.items()}
            later = {failure: clients(guard) for failure, guard in guards.items()}
            recounters = {failure: clients(guard, 1)[0] for failure, guard in guards.items()}
            streams = {failure: Streamer(guard, fresh_ip(), "Say 10 words") for failure, guard in guards.items()}
            outliving = {failure: Streamer(guard, fresh_ip(), "Say 25 words") for failure, guard in guards.items()}
            pokers = {failure: clients(guard, 1)[0] for failure, guard in guards.items()}

            with ExitStack() as stack:
                for trickle in trickles.values():
                    stack.enter_context(trickle)
                for guard in guards.values():
                    burst(guard, clients(guard))  # a server under load keeps several connections to Redis
                started(streams)
                killed = time.monotonic()
                store.kill()  # the streams end during the outage
                time.sleep(1.5)
                restarted = time.monotonic()
                store.restart()
                time.sleep(1.5)
            for failure, guard in guards.items():
                last = trickles[failure].calls[-1].request_id
                assert last is not None
                guard.access_line(last)
            # One chat after another uses one connection; chats at once take others from the pool.
            bursts = parallel([functools.partial(burst, guards[failure], later[failure]) for failure in guards])
            recounts = {failure: recount(guard, recounters[failure]) for failure, guard in guards.items()}
            # The streams that ended during the outage: settled once Redis was back, or said lost.
            for failure, guard in guards.items():
                answer = streams[failure].result()
                assert answer.request_id is not None
                guard.access_line(answer.request_id)
            stream_windows = {failure: guard.window(streams[failure].ip) for failure, guard in guards.items()}

            # Again, with nothing else running.
            started(outliving)
            store.kill()
            time.sleep(0.3)
            store.restart()
            for failure, guard in guards.items():
                # One chat at a time until one is served: llmguard's connection to the old Redis
                # is found closed and replaced, so the stream settles on a working one.
                for _ in range(3):
                    if ask(guard, pokers[failure], CHAT, "Hello", stream=False).status == 200:
                        break
            seen = {}
            for failure, guard in guards.items():
                outlived = outliving[failure].result()
                assert outlived.request_id is not None
                guard.access_line(outlived.request_id)
                seen[failure] = Outage(
                    failure=failure,
                    killed=killed,
                    restarted=restarted,
                    trickle=trickles[failure].calls,
                    stream=streams[failure].result(),
                    stream_window=stream_windows[failure],
                    burst=raised(bursts[list(guards).index(failure)]),
                    recount=recounts[failure],
                    outlived=outlived,
                    outlived_window=guard.window(outliving[failure].ip),
                    logs=guard.process.logs(),
                )
            yield seen


@pytest.fixture(params=FAILURES)
def outage(request: pytest.FixtureRequest, outages: dict[str, Outage]) -> Outage:
    """The outage seen by the llmguard failing closed, then by the one failing open."""
    seen: Outage = outages[request.param]
    return seen


def test_a_redis_killed_mid_run_refuses_or_serves_by_policy_and_counts_again_once_restarted(outage: Outage) -> None:
    calls = outage.trickle
    before = [call for call in calls if call.ended < outage.killed]
    during = [call for call in calls if outage.killed + 0.05 < call.started and call.ended < outage.restarted]
    after = [call for call in calls if call.started > outage.restarted]
    assert before
    assert {call.status for call in before} == {200}
    assert len(during) >= 3, "a steady trickle through the outage"
    assert all(call.status != 500 for call in calls)
    # Never a hang: each answer within the timeouts of the storage calls before the provider's.
    assert max(call.ended - call.started for call in calls) < STORAGE_TIMEOUT * STORAGE_CALLS + SLACK
    if outage.failure == "closed":
        assert {(call.status, call.code) for call in during} == {(503, "StorageUnavailable")}
    else:
        assert {call.status for call in during} == {200}
    # Served again within a few seconds of the restart, without restarting llmguard, and from then on.
    served = [call for call in after if call.status == 200]
    assert served, [(call.status, call.code) for call in after]
    assert served[0].ended - outage.restarted < 2
    assert {call.status for call in after if call.started >= served[0].started} == {200}
    # And the budgets count again, exactly.
    due = outage.recount["due"]
    assert outage.recount == {"window": due, "month": due, "due": due}
    assert "Traceback" not in outage.logs


def test_chats_at_once_after_redis_restarted_are_all_served(outage: Outage) -> None:
    # Seconds after the restart, while llmguard still holds connections it opened to the old
    # Redis. Failing open, a chat is served whichever of its storage calls failed, and what it
    # is charged then depends on which one did (a lost settlement leaves the whole hold behind):
    # charges are checked failing closed.
    statuses = [settled.answer.status for settled in outage.burst]
    assert statuses == [200] * len(statuses), [settled.answer.code() for settled in outage.burst]
    if outage.failure == "closed":
        charged = [(settled.window, settled.logged) for settled in outage.burst]
        assert charged == [(settled.answer.usage(),) * 2 for settled in outage.burst], "(window, logged) of each"


def test_a_stream_that_ends_while_redis_is_down_ends_normally_and_settles_once_it_is_back(outage: Outage) -> None:
    # The stream never needed Redis once reserved: the client sees nothing of the outage.
    cost = assert_finished(outage.stream)
    assert outage.stream.elapsed < 3
    # Its settlement is tried again through the outage (every step of a hold is safe to repeat):
    # it lands once Redis is back, charging the stream its cost and nothing more, or it is said
    # lost in the log. Never crashed on, never waited for by the client.
    assert outage.stream.request_id is not None
    lost = settlement_lost(outage.logs, outage.stream.request_id)
    assert outage.stream_window == (0 if lost else cost), f"lost: {lost}; the window holds {outage.stream_window}"
    assert "Traceback" not in outage.logs


def test_a_stream_reserved_before_redis_restarted_is_charged_what_it_cost(outage: Outage) -> None:
    # Redis came back empty: the stream's hold was gone when it settled. Giving the hold back
    # anyway takes the count below zero: room nobody paid for.
    cost = assert_finished(outage.outlived)
    assert outage.outlived_window == cost, f"the window holds {outage.outlived_window}; the stream cost {cost}"


# -- Redis slowed by a latency proxy -------------------------------------------------------------------


STALL = 1.5  # seconds the proxy holds a chunk when Redis "stalls": longer than STORAGE_TIMEOUT


@dataclass
class Slowed:
    """Chats through a latency proxy in front of Redis, phase by phase."""

    fast: list[Answer]
    slow: list[Answer]
    stalled: list[Answer]
    again: Answer
    recovered: float
    #: What the clients' windows hold once everything in flight has landed.
    served_window: int
    stalled_window: int
    provider_calls: int
    #: One chat per failure policy while only the budget's hold stalls; its client's counts.
    late: dict[str, Answer]
    late_counts: dict[str, dict[str, int]]
    logs: str


@pytest.fixture(scope="module")
def slowed(fake_upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slowed]:
    """One Redis behind a latency proxy; two llmguards through it, failing closed and failing open."""
    fake = fake_upstream[0]
    fake.reset()
    with RedisServer() as store, LatencyProxy(store.port) as proxy:
        envs = {
            failure: guard_env(
                database(f"redis://127.0.0.1:{proxy.port}/0", index),
                f"{fake_upstream[1]}/v1",
                STORAGE_FAILURE=failure,
                STORAGE_TIMEOUT=str(STORAGE_TIMEOUT),
            )
            for index, failure in enumerate(FAILURES)
        }
        read_urls = {failure: database(store.url, index) for index, failure in enumerate(FAILURES)}
        with running(tmp_path_factory.mktemp("slowed"), envs, read_urls=read_urls) as guards:
            guard = guards["closed"]
            ip, stalled_ip = clients(guard, 2)
            late_ips = {failure: clients(guards[failure], 1)[0] for failure in FAILURES}
            fake.reset()

            def chat(ip: str = ip) -> Answer:
                return ask(guard, ip, CHAT, "Hello", stream=False)

            fast = [chat() for _ in range(2)]
            # Each forwarded chunk held 0.1 s, each way: a round trip of 0.2 s at least, per call.
            proxy.delay = 0.1
            slow = [chat() for _ in range(2)]
            # Slower than the storage timeout: refused, in a time the timeouts bound.
            proxy.delay = STALL
            stalled = [chat(stalled_ip) for _ in range(2)]
            proxy.delay = 0
            fast_again = time.monotonic()
            again = chat()
            while again.status != 200 and time.monotonic() < fast_again + 5:
                again = chat()
            recovered = time.monotonic() - fast_again
            served = [*fast, *slow, again]
            for answer in served:
                assert answer.request_id is not None
                guard.access_line(answer.request_id)
            provider_calls = len(fake.requests)

            # Redis stalls only while a budget's hold is on the wire: llmguard's call times out,
            # and the hold reaches Redis later.
            months = {failure: guards[failure].month() for failure in FAILURES}
            proxy.only, proxy.delay = b"budget:", STALL
            answers = parallel(
                [
                    functools.partial(ask, guards[failure], late_ips[failure], CHAT, "Hello", stream=False)
                    for failure in FAILURES
                ]
            )
            late = {failure: raised(answer) for failure, answer in zip(FAILURES, answers, strict=True)}
            for failure, answer in late.items():
                assert answer.request_id is not None
                guards[failure].access_line(answer.request_id)
            time.sleep(STALL + 0.5)  # what was on the wire when llmguard gave up has landed
            yield Slowed(
                fast=fast,
                slow=slow,
                stalled=stalled,
                again=again,
                recovered=recovered,
                served_window=guard.window(ip),
                stalled_window=guard.window(stalled_ip),
                provider_calls=provider_calls,
                late=late,
                late_counts={
                    failure: {
                        "window": guards[failure].window(late_ips[failure]),
                        "month": guards[failure].month() - months[failure],
                    }
                    for failure in FAILURES
                },
                logs=guard.process.logs(),
            )


def test_a_slow_redis_slows_answers_and_a_stalled_one_is_refused_in_bounded_time(slowed: Slowed) -> None:
    bound = STORAGE_TIMEOUT * STORAGE_CALLS + SLACK
    for answer in [*slowed.fast, *slowed.slow, slowed.again]:
        assert answer.status == 200, answer.body[:300]
        assert answer.elapsed < bound
    assert min(answer.elapsed for answer in slowed.slow) >= STORAGE_CALLS * 2 * 0.1
    for answer in slowed.stalled:
        assert_refused(answer, 503, "StorageUnavailable")
        assert STORAGE_TIMEOUT * 0.9 <= answer.elapsed < bound
    # Fast again: served within a few seconds, without restarting anything.
    assert slowed.recovered < 5
    # The served chats were charged what they cost; the refused ones left nothing behind,
    # though their calls reached Redis after llmguard gave up on them.
    assert slowed.provider_calls == len([*slowed.fast, *slowed.slow]) + 1
    assert slowed.served_window == sum(answer.usage() for answer in [*slowed.fast, *slowed.slow, slowed.again])
    assert slowed.stalled_window == 0
    assert "Traceback" not in slowed.logs


def test_a_hold_that_reaches_redis_after_its_timeout_leaves_nothing_for_a_refused_request(slowed: Slowed) -> None:
    answer = slowed.late["closed"]
    assert_refused(answer, 503, "StorageUnavailable")
    assert answer.elapsed < STORAGE_TIMEOUT * STORAGE_CALLS + SLACK
    # Refused before the provider was called: it costs nothing.
    assert slowed.late_counts["closed"] == {"window": 0, "month": 0}


def test_a_hold_that_reaches_redis_after_its_timeout_is_not_charged_on_top_of_the_served_request(
    slowed: Slowed,
) -> None:
    answer = slowed.late["open"]
    # Served without its budgets, then settled: charged once, what the provider reported.
    assert answer.status == 200, answer.body[:300]
    assert answer.elapsed < STORAGE_TIMEOUT * STORAGE_CALLS + SLACK
    cost = answer.usage()
    assert slowed.late_counts["open"] == {"window": cost, "month": cost}
