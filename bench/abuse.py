"""Try to spend past the caps the way a script would, and count what the provider billed.

    .venv/bin/python bench/abuse.py            # the full run: about two minutes
    .venv/bin/python bench/abuse.py --quick    # the smoke run CI does (fewer attempts, same checks)

Each scenario starts a real `llmguard serve` (counting in a real redis-server) in
front of llmguard's fake provider served over real HTTP. The fake bills like a
provider: the prompt, schemas included, from the moment it reads it; hidden
reasoning tokens; each output token it produces, whether or not anyone reads
it. A provider that hangs up after reading a request is billed its worst case.
The script prints, for each scenario, what it tried, the cap that should hold,
and the tokens the provider billed against it; it exits 1 if any figure is over
its cap. Writes bench/results/abuse.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from processes import free_port, redis_command, service

from llmguard.testing import FakeProvider, FakeReply, billable_prompt_tokens

HERE = Path(__file__).parent
ORIGIN = "https://app.example.com"
KEY = "sk-abuse-bench-0123456789abcdefghij"
SECRET = "abuse-bench-secret-0123456789abcdefghijklmnop"
HELLO = [{"role": "user", "content": "Tell me everything you know, at length."}]


@dataclass
class Result:
    scenario: str
    attempt: str
    cap: str
    limit: int
    billed: int
    calls: int
    statuses: Counter[int]

    @property
    def held(self) -> bool:
        return self.billed <= self.limit


# -- the services ------------------------------------------------------------------------


class ThreadedProvider:
    """llmguard's FakeProvider over real HTTP (uvicorn on a thread), scripted per scenario."""

    def __init__(self) -> None:
        self.provider = FakeProvider(api_key=KEY)
        self.port = free_port()
        config = uvicorn.Config(self.provider, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedProvider:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def billed(self) -> int:
        return self.provider.billed_tokens

    @property
    def calls(self) -> int:
        return len(self.provider.requests)

    def script(self, reply: FakeReply, count: int) -> None:
        self.provider.reset()
        self.provider.enqueue(*[reply] * count)

    async def settled(self, quiet: float = 1.5) -> None:
        """Until every call is finished (or cut off), and no new one came for a while.

        A client that left does not mean the call is over: llmguard carries a JSON call on to its end.
        """
        deadline = time.monotonic() + 60
        seen, since = -1, time.monotonic()
        requests = self.provider.requests
        while time.monotonic() < deadline:
            if len(requests) != seen:
                seen, since = len(requests), time.monotonic()
            done = all(request.finished or request.disconnected_at is not None for request in requests)
            if done and time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(0.05)


class HangUpProvider:
    """Reads each request, bills its worst case (prompt and the whole output cap), then hangs up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.billed = 0
        self.calls = 0

    def __enter__(self) -> HangUpProvider:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def script(self, reply: FakeReply, count: int) -> None:
        self.billed = self.calls = 0  # it says nothing, whatever the script

    async def settled(self) -> None:
        return  # every call ends when it hangs up

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(body) < length and (chunk := connection.recv(65536)):
                    body += chunk
                payload = json.loads(body)
                self.calls += 1
                self.billed += billable_prompt_tokens(payload) + int(payload.get("max_tokens", 0))


@contextmanager
def llmguard(redis_url: str, provider_url: str, **settings: str) -> Iterator[str]:
    """`llmguard serve` with these settings (limits out of the way unless given), on a clean Redis."""
    port = free_port()
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": provider_url,
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "STORAGE_URL": redis_url,
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATE_LIMIT_MAX": "100000",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "off",
        "UPSTREAM_RETRIES": "2",
        "LOG_LEVEL": "warning",
        # The attacks here are on the chat caps, with tokens in hand; bench/challenge.py prices the mint.
        "TOKEN_CHALLENGE": "off",
        **settings,
    }
    command = [sys.executable, "-m", "llmguard", "serve", "--port", str(port)]
    with service(command, port, env=env):
        yield f"http://127.0.0.1:{port}"


def flush(redis_port: int) -> None:
    with socket.create_connection(("127.0.0.1", redis_port)) as connection:
        connection.sendall(b"FLUSHALL\r\n")
        connection.recv(64)


# -- what the script does ------------------------------------------------------------------


class Attacker:
    """Clients of one llmguard, from any IP (through the trusted proxy on loopback)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=200))
        self.tokens: dict[str, str] = {}
        self.statuses: Counter[int] = Counter()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def token(self, ip: str) -> str:
        if ip not in self.tokens:
            response = await self.http.post("/api/token", headers=self.headers(ip))
            response.raise_for_status()
            self.tokens[ip] = response.json()["token"]
        return self.tokens[ip]

    def headers(self, ip: str, token: str | None = None) -> dict[str, str]:
        headers = {"origin": ORIGIN, "x-forwarded-for": ip}
        if token:
            headers["authorization"] = f"Bearer {token}"
        return headers

    def count(self, status: int) -> None:
        if status >= 500 and status not in (502, 503, 504):
            raise RuntimeError(f"unexpected status {status}")
        self.statuses[status] += 1

    async def chat(self, ip: str, body: dict[str, Any], path: str = "/api/chat") -> None:
        response = await self.http.post(path, json=body, headers=self.headers(ip, await self.token(ip)))
        self.count(response.status_code)

    async def abandon_json(self, ip: str, after: float) -> None:
        """Send a chat and close the connection before the answer comes."""
        headers = self.headers(ip, await self.token(ip))
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=after)) as once:
            try:
                response = await once.post("/api/chat", json={"messages": HELLO}, headers=headers)
            except httpx.ReadTimeout:
                return
        self.count(response.status_code)

    async def abandon_stream(self, ip: str, deltas: int) -> None:
        """Stream a chat and close the connection after a few deltas."""
        headers = self.headers(ip, await self.token(ip))
        body = {"messages": HELLO, "stream": True}
        async with self.http.stream("POST", "/api/chat", json=body, headers=headers) as response:
            self.count(response.status_code)
            if response.status_code != 200:
                return
            seen = 0
            async for line in response.aiter_lines():
                if '"text-delta"' in line:
                    seen += 1
                    if seen >= deltas:
                        return


async def in_parallel(tasks: list[Callable[[], Awaitable[None]]], width: int) -> None:
    gate = asyncio.Semaphore(width)

    async def one(task: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await task()

    await asyncio.gather(*(one(task) for task in tasks))


# -- the scenarios -------------------------------------------------------------------------

WINDOW = 5_000
BOTNET_MONTHLY_CAP = 20_000
A_WINDOW = {"TOKENS_PER_IP": f"{WINDOW}/day", "MAX_TOKENS": "500"}
SCHEMA = {"type": "object", "description": "word " * 1500, "properties": {"a": {"type": "string"}}}
STUFFED = {
    "model": "gpt-4.1-mini",
    "messages": [{"role": "user", "content": "Hi"}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "stuffed", "schema": SCHEMA}},
}
Call = Callable[[Attacker], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One way a script tried to spend past a cap: ``count`` calls, ``width`` at a time."""

    name: str
    attempt: str  # what the script does, ``{count}`` filled in
    cap: str
    limit: int
    settings: Mapping[str, str]
    count: int
    width: int
    call: Callable[[int], Call]  # the i-th call
    reply: FakeReply = field(default_factory=lambda: FakeReply(chunks=["word "] * 500))
    hangs_up: bool = False  # the provider reads each request and hangs up, instead of the fake


SCENARIOS = [
    Scenario(
        "botnet through a trusted proxy",
        "{count} chats, two from each IP, 40 at a time",
        "MONTHLY_TOKEN_CAP",
        BOTNET_MONTHLY_CAP,
        {**A_WINDOW, "TOKENS_PER_IP": "3000/day", "MONTHLY_TOKEN_CAP": str(BOTNET_MONTHLY_CAP)},
        count=600,
        width=40,
        call=lambda i: lambda a: a.chat(f"198.51.{i // 500}.{i // 2 % 250 + 1}", {"messages": HELLO}),
    ),
    Scenario(
        "one IP, 20 at a time",
        "{count} chats",
        "TOKENS_PER_IP",
        WINDOW,
        A_WINDOW,
        count=40,
        width=20,
        call=lambda i: lambda a: a.chat("203.0.113.9", {"messages": HELLO}),
    ),
    Scenario(
        "abandoned JSON calls",
        "{count} chats, each left after 0.1 s",
        "TOKENS_PER_IP",
        WINDOW,
        A_WINDOW,
        count=30,
        width=5,
        call=lambda i: lambda a: a.abandon_json("203.0.113.10", after=0.1),
        reply=FakeReply(chunks=["word "] * 500, first_byte_delay=0.5),
    ),
    Scenario(
        "streams closed after 2 deltas",
        "{count} streams",
        "TOKENS_PER_IP",
        WINDOW,
        A_WINDOW,
        count=120,
        width=5,
        call=lambda i: lambda a: a.abandon_stream("203.0.113.11", deltas=2),
        reply=FakeReply(chunks=["word "] * 500, delay=0.01),
    ),
    Scenario(
        "reasoning model, streams closed mid-reply",
        "{count} streams",
        "TOKENS_PER_IP",
        WINDOW,
        {**A_WINDOW, "OPENAI_MODEL": "o4-mini", "MAX_TOKENS": "2000"},
        count=30,
        width=5,
        call=lambda i: lambda a: a.abandon_stream("203.0.113.11", deltas=2),
        reply=FakeReply(chunks=["word "] * 500, delay=0.01, reasoning_tokens=1500),
    ),
    Scenario(
        "response_format schema stuffing",
        "{count} parallel /v1 calls, ~1.5k-token schemas",
        "TOKENS_PER_IP",
        WINDOW,
        {**A_WINDOW, "MAX_TOKENS": "50"},
        count=20,
        width=20,
        call=lambda i: lambda a: a.chat("203.0.113.12", STUFFED, "/v1/chat/completions"),
        reply=FakeReply(chunks=["{}"]),
    ),
    Scenario(
        "a provider that hangs up after reading",
        "{count} chats, UPSTREAM_RETRIES=2",
        "TOKENS_PER_IP",
        WINDOW,
        A_WINDOW,
        count=20,
        width=1,
        call=lambda i: lambda a: a.chat("203.0.113.13", {"messages": HELLO}),
        hangs_up=True,
    ),
]


async def play(scenario: Scenario, provider: ThreadedProvider | HangUpProvider, url: str, scale: float) -> Result:
    """Run the scenario's calls against llmguard at ``url``; what its provider billed for them."""
    count = max(1, int(scenario.count * scale))
    provider.script(scenario.reply, count)
    attacker = Attacker(url)
    calls = [scenario.call(index) for index in range(count)]
    await in_parallel([lambda call=call: call(attacker) for call in calls], width=scenario.width)
    await provider.settled()
    await attacker.aclose()
    attempt = scenario.attempt.format(count=count)
    return Result(
        scenario.name, attempt, scenario.cap, scenario.limit, provider.billed, provider.calls, attacker.statuses
    )


async def run(quick: bool) -> list[Result]:
    scale = 0.3 if quick else 1.0
    results: list[Result] = []
    redis_port = free_port()
    with ExitStack() as stack:
        stack.enter_context(service(redis_command(redis_port), redis_port))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        fake = stack.enter_context(ThreadedProvider())
        hang_up = stack.enter_context(HangUpProvider())
        for scenario in SCENARIOS:
            provider = hang_up if scenario.hangs_up else fake
            flush(redis_port)
            with llmguard(redis_url, provider.url, **scenario.settings) as url:
                results.append(await play(scenario, provider, url, scale))
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | what the script did | answers | provider calls | cap | cap (tokens) | provider billed | held |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for result in results:
        answers = ", ".join(f"{status}×{count}" for status, count in sorted(result.statuses.items()))
        lines.append(
            f"| {result.scenario} | {result.attempt} | {answers} | {result.calls} | `{result.cap}` | {result.limit:,} "
            f"| {result.billed:,} | {'yes' if result.held else '**NO**'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer attempts, for CI")
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(run(args.quick))
    text = table(results)
    print(text)
    verdict = "every figure at or under its cap" if all(r.held for r in results) else "A CAP WAS PASSED"
    print(f"\n{verdict} ({time.monotonic() - started:.0f} s)")
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "abuse.md").write_text(text + "\n")
    return 0 if all(r.held for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
