"""What the guard stack costs per request: OriginFilter ▶ IPRateLimit ▶ JWTAuth ▶ TokenBudget.

Calls the ASGI apps directly (no sockets, no HTTP parsing), so the figures are
the guards' own work: the same tiny endpoint is measured bare and behind the
whole stack, with memory:// and with a real Redis (a redis-server this script
starts on loopback). The endpoint reserves and settles a budget like
ChatEndpoint does, without calling a provider.

    .venv/bin/python bench/guard_stack.py            # full run, writes bench/results/guard_stack.{md,json}
    .venv/bin/python bench/guard_stack.py --quick    # the smoke run CI does

Arms are interleaved round by round after a warm-up, and reported as the median
(and min-max over rounds) of the mean time per request, plus the ratio to the
bare endpoint measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from processes import free_port, redis_command, service
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmguard import IPRateLimit, JWTAuth, OriginFilter, TokenBudget, TokenEndpoint
from llmguard._state import Usage, request_state
from llmguard._storage import Storage

ORIGIN = "https://app.example.com"
SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
RESULTS = Path(__file__).parent / "results"


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands for ChatEndpoint: reserve, 'call the provider', report usage, answer."""
    state = request_state(scope)
    state.model = "gpt-4.1-mini"
    if state.budget is not None:
        await state.budget.reserve(model="gpt-4.1-mini", prompt_tokens=20, max_output_tokens=200)
    state.usage = Usage(20, 50)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def guarded(storage: Storage, app: ASGIApp = endpoint) -> ASGIApp:
    """OriginFilter ▶ IPRateLimit ▶ JWTAuth ▶ TokenBudget around ``app``, with limits no run reaches."""
    budget = TokenBudget(
        app,
        storage=storage,
        tokens_per_client="1000000000/day",
        monthly_token_cap=10**12,
        monthly_spend_cap_usd=10**9,
    )
    auth = JWTAuth(budget, secret=SECRET)
    limited = IPRateLimit(auth, limit="100000000/minute", storage=storage)
    return OriginFilter(limited, allow_origins=[ORIGIN])


def token() -> str:
    minted, _ = TokenEndpoint(secret=SECRET).mint()
    return minted


def scope_for(bearer: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"origin", ORIGIN.encode()),
            (b"authorization", f"Bearer {bearer}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("203.0.113.9", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def run(app: ASGIApp, template: Scope, requests: int) -> float:
    """Seconds per request, over ``requests`` sequential requests."""
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(template), receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"the benchmark's requests were refused: {sorted(set(statuses))}")
    return elapsed / requests


async def measure(rounds: int, requests: int, redis_url: str | None) -> dict[str, list[float]]:
    template = scope_for(token())
    arms: dict[str, ASGIApp] = {"bare endpoint": endpoint, "guards, memory://": guarded(Storage("memory://"))}
    if redis_url is not None:
        arms["guards, redis://"] = guarded(Storage(redis_url))
    for app in arms.values():  # warm-up: imports, pools, JIT-free but cache-warm
        await run(app, template, max(50, requests // 5))
    results: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, app in arms.items():
            results[name].append(await run(app, template, requests))
    return results


def report(results: dict[str, list[float]], rounds: int, requests: int) -> tuple[str, dict[str, Any]]:
    bare = statistics.median(results["bare endpoint"])
    rows = []
    data: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "rounds": rounds,
        "requests_per_round": requests,
        "arms": {},
    }
    for name, samples in results.items():
        median = statistics.median(samples)
        data["arms"][name] = {
            "median_us": round(median * 1e6, 2),
            "min_us": round(min(samples) * 1e6, 2),
            "max_us": round(max(samples) * 1e6, 2),
            "added_us": round((median - bare) * 1e6, 2),
            "ratio_to_bare": round(median / bare, 2),
        }
        arm = data["arms"][name]
        rows.append(
            f"| {name} | {arm['median_us']:.1f} | {arm['min_us']:.1f}–{arm['max_us']:.1f} "
            f"| {arm['added_us']:+.1f} | {arm['ratio_to_bare']:.2f}× |"
        )
    table = "\n".join(
        [
            f"Guard stack per request, {data['machine']}, {data['date']}, "
            f"median of {rounds} rounds × {requests} sequential requests:",
            "",
            "| arm | µs/request | min–max | added µs | × bare |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    return table, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI): nothing written")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    rounds, requests = (2, 200) if args.quick else (args.rounds, args.requests)

    with ExitStack() as stack:
        redis_url = None
        if shutil.which("redis-server"):
            port = free_port()
            stack.enter_context(service(redis_command(port), port))
            redis_url = f"redis://127.0.0.1:{port}/0"
        results = asyncio.run(measure(rounds, requests, redis_url))
    table, data = report(results, rounds, requests)
    print(table)
    if redis_url is None:
        print("\n(redis-server not found: the Redis arm was skipped)", file=sys.stderr)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "guard_stack.md").write_text(table + "\n")
        (RESULTS / "guard_stack.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
