"""What METRICS=true costs per request: the guard stack with its AccessLog, metrics off and on.

Calls the ASGI apps directly (no sockets), like bench/guard_stack.py: OriginFilter ▶ IPRateLimit ▶
JWTAuth ▶ TokenBudget (memory://) ▶ an endpoint that reserves, "calls the provider" (sets what the
chat service sets: model, usage, cost, the provider call's timings) and answers, all inside
AccessLog, whose logger is off, so what differs between the arms is the metrics alone. Two
endpoints: a JSON reply, and a stream of 50 events (the send wrapper sees every one). The same is
measured again in a child process with PROMETHEUS_MULTIPROC_DIR set (values in files, as under
``llmguard serve --workers N``).

    .venv/bin/python bench/metrics.py            # full run, writes bench/results/metrics.{md,json}
    .venv/bin/python bench/metrics.py --quick    # a smoke run: nothing written

Arms are interleaved round by round after a warm-up, and reported as the median (and min-max over
rounds) of the mean time per request, and as a ratio to the same endpoint with metrics off,
measured in the same process and run; and the same from each arm's fastest round, which a busy
machine disturbs least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The same request and the same sequential loop as the guard stack's own benchmark.
from guard_stack import guarded, run, scope_for, token
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard import AccessLog, Metrics
from llmguard._metrics import MULTIPROC_DIR
from llmguard._state import Usage, request_state
from llmguard._storage import Storage

RESULTS = Path(__file__).parent / "results"
MODEL = "gpt-4.1-mini"
EVENTS = 50


async def reply(scope: Scope, receive: Receive, send: Send, *, events: int) -> None:
    """Stands for ChatEndpoint: reserve, 'call the provider', record what it says, answer."""
    state = request_state(scope)
    state.model = MODEL
    if state.budget is not None:
        await state.budget.reserve(model=MODEL, prompt_tokens=20, max_output_tokens=200)
    state.provider_started = time.perf_counter()
    if not events:
        state.first_token_at = time.perf_counter()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
    else:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(events):
            if index == 0:
                state.first_token_at = time.perf_counter()
            chunk = b'data: {"type":"text-delta","id":"t1","delta":"word "}\n\n'
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    state.provider_ended = time.perf_counter()
    state.usage, state.cost_usd = Usage(20, 50), 0.0001


async def json_reply(scope: Scope, receive: Receive, send: Send) -> None:
    await reply(scope, receive, send, events=0)


async def stream_reply(scope: Scope, receive: Receive, send: Send) -> None:
    await reply(scope, receive, send, events=EVENTS)


def stack(endpoint: ASGIApp, *, metrics: bool) -> ASGIApp:
    """The guard stack's guards (their own memory:// storage) around ``endpoint``, in an AccessLog."""
    return AccessLog(guarded(Storage("memory://"), endpoint), metrics=Metrics() if metrics else None)


async def measure(rounds: int, requests: int) -> dict[str, list[float]]:
    template = scope_for(token())
    arms = {
        "JSON, metrics off": stack(json_reply, metrics=False),
        "JSON, metrics on": stack(json_reply, metrics=True),
        f"stream of {EVENTS} events, metrics off": stack(stream_reply, metrics=False),
        f"stream of {EVENTS} events, metrics on": stack(stream_reply, metrics=True),
    }
    for app in arms.values():  # warm-up
        await run(app, template, max(50, requests // 5))
    results: dict[str, list[float]] = {name: [] for name in arms}
    for index in range(rounds):
        # Every other round in reverse order: a machine getting busier or quieter hurts no arm more.
        order = list(arms.items()) if index % 2 == 0 else list(reversed(arms.items()))
        for name, app in order:
            results[name].append(await run(app, template, requests))
    return results


def recording(rounds: int, calls: int = 20_000) -> float:
    """Seconds to record one finished request (route, counters, histograms) alone, median of ``rounds``."""
    metrics = Metrics()
    scope: Scope = {"type": "http", "method": "POST", "path": "/api/chat", "root_path": ""}
    state = request_state(scope)
    state.model, state.usage, state.cost_usd = MODEL, Usage(20, 50), 0.0001
    state.provider_started, state.first_token_at, state.provider_ended = 1.0, 1.2, 1.9
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            metrics.request_ended(scope, metrics.route(scope), 200)
        timings.append((time.perf_counter() - started) / calls)
    return statistics.median(timings)


def summarize(results: dict[str, list[float]], where: str) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for name, samples in results.items():
        median, best = statistics.median(samples), min(samples)
        off_samples = results[name.replace("metrics on", "metrics off")]
        off, off_best = statistics.median(off_samples), min(off_samples)
        arms[f"{name} ({where})"] = {
            "median_us": round(median * 1e6, 2),
            "min_us": round(best * 1e6, 2),
            "max_us": round(max(samples) * 1e6, 2),
            "added_us": round((median - off) * 1e6, 2),
            "ratio_to_off": round(median / off, 3),
            # The fastest round of each arm: the least disturbed by a busy machine.
            "best_added_us": round((best - off_best) * 1e6, 2),
            "best_ratio_to_off": round(best / off_best, 3),
        }
    return arms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: nothing written")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds, requests = (2, 100) if args.quick else (args.rounds, args.requests)
    if args.child:  # the multiprocess arms: this process started with PROMETHEUS_MULTIPROC_DIR set
        arms = summarize(asyncio.run(measure(rounds, requests)), "multiprocess files")
        print(json.dumps({"arms": arms, "recording_us": round(recording(rounds) * 1e6, 2)}))
        return 0

    arms = summarize(asyncio.run(measure(rounds, requests)), "in memory")
    recording_us = {"in memory": round(recording(rounds) * 1e6, 2)}
    with tempfile.TemporaryDirectory(prefix="llmguard-bench-metrics-") as directory:
        command = [sys.executable, __file__, "--child", "--rounds", str(rounds), "--requests", str(requests)]
        child = subprocess.run(command, env={**os.environ, MULTIPROC_DIR: directory}, capture_output=True, check=True)
    measured = json.loads(child.stdout)
    arms.update(measured["arms"])
    recording_us["multiprocess files"] = measured["recording_us"]
    data = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "rounds": rounds,
        "requests_per_round": requests,
        "arms": arms,
        "recording_us": recording_us,
    }
    rows = [
        f"| {name} | {arm['median_us']:.1f} | {arm['min_us']:.1f}–{arm['max_us']:.1f} "
        f"| {arm['added_us']:+.1f} | {arm['ratio_to_off']:.3f}× | {arm['best_added_us']:+.1f} "
        f"| {arm['best_ratio_to_off']:.3f}× |"
        for name, arm in arms.items()
    ]
    table = "\n".join(
        [
            f"METRICS per request (guard stack, memory://, AccessLog's logger off), {data['machine']}, "
            f"{data['date']}, median of {rounds} rounds × {requests} sequential requests:",
            "",
            "| arm | µs/request | min–max | added µs | × off | best round: added µs | best round: × off |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "Recording one finished request alone (Metrics.route + request_ended, a tight loop): "
            + ", ".join(f"{us:.1f} µs ({where})" for where, us in recording_us.items())
            + ".",
        ]
    )
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "metrics.md").write_text(table + "\n")
        (RESULTS / "metrics.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
