"""What llmguard costs per request and per stream, against going direct and a bare passthrough.

    .venv/bin/python bench/proxy_bench.py            # the full run: about 6 minutes
    .venv/bin/python bench/proxy_bench.py --quick    # the smoke run CI does (figures are not asserted)

Arms, all in front of the same fast fake provider (bench/fake_provider.py) on
loopback, measured in the same run and interleaved:

- direct: the client talks to the provider itself;
- passthrough: Starlette + one pooled httpx client, no guards (bench/passthrough.py);
- llmguard, memory://: `llmguard serve`, the whole stack (origin, rate limit, JWT, token
  budget with a per-client window and a monthly cap, all set high), on /v1/chat/completions;
- llmguard, redis://: the same, counting in a real redis-server.

Measures: M1 sequential JSON latency (p50, p99); M2 JSON throughput at 64
concurrent connections with wrk; M3 streams, time to first delta and per-event
lag at 1 and 100 concurrent streams, events forwarded 1:1; M4 resident memory
per open stream with 1000 concurrent slow streams. The servers run on one core
and the provider and the load on the other, where the machine has two.
Writes bench/results/proxy.md and proxy.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from processes import free_port, guarded_env, redis_command, service

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ORIGIN = "https://bench.example"
SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
JSON_BODY = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50}
TS = re.compile(rb'"ts":(\d+)')
DELTA = re.compile(rb'"content":\s*"w\d')

TARGETS = {
    "m1_added_p50_ms": 1.5,
    "m1_added_p99_ms": 4.0,
    "m2_ratio_to_passthrough": 0.85,
    "m3_added_lag_p99_ms_100": 2.0,
    "m4_kib_per_stream": 64.0,
}


@dataclass
class Arm:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None


def cores() -> tuple[str, str]:
    """(server core, load core): separate when there are two and taskset can pin."""
    count = len(os.sched_getaffinity(0))
    if count >= 2 and shutil.which("taskset"):
        return "0", "1"
    return "", ""


def pinned(command: list[str], core: str) -> list[str]:
    return ["taskset", "-c", core, *command] if core else command


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- M1: sequential latency ------------------------------------------------------------


def m1_latency(arms: list[Arm], rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds per request, per arm, interleaved round by round over kept-alive connections."""
    body = json.dumps(JSON_BODY).encode()
    connections = {arm.name: http.client.HTTPConnection(arm.url.split("//")[1].split("/")[0]) for arm in arms}
    samples: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for round_index in range(rounds + 1):
        for arm in arms:
            connection = connections[arm.name]
            path = "/" + arm.url.split("//")[1].split("/", 1)[1]
            headers = {"content-type": "application/json", **arm.headers}
            for _ in range(per_round):
                started = time.perf_counter()
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"{arm.name}: HTTP {response.status}")
                if round_index:  # round 0 warms up
                    samples[arm.name].append(elapsed)
    for connection in connections.values():
        connection.close()
    return samples


# -- M2: throughput with wrk -----------------------------------------------------------


def m2_throughput(arm: Arm, seconds: int, connections: int, core: str) -> tuple[float, int]:
    """Requests per second, and how many failed (socket errors, timeouts, non-2xx)."""
    token = arm.headers.get("authorization", "").removeprefix("Bearer ")
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_ORIGIN": ORIGIN}
    command = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk_post.lua"),
            arm.url,
        ],
        core,
    )
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not match:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    return float(match.group(1)), errors


# -- M3 and M4: streams ------------------------------------------------------------------


@dataclass
class StreamResult:
    first_delta_s: float
    lags_ms: list[float]
    events: int
    error: str | None = None


async def one_stream(arm: Arm, body: bytes) -> StreamResult:
    """One stream over a raw socket: the client must cost far less than what it measures.

    httpx parsing thousands of events a second on the load core would add more lag than
    the proxies do; this reads bytes as they come and only looks for the provider's stamps.
    """
    host, _, rest = arm.url.split("//", 1)[1].partition("/")
    address, _, port = host.partition(":")
    headers = "".join(f"{name}: {value}\r\n" for name, value in arm.headers.items())
    request = (
        f"POST /{rest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    first: float | None = None
    lags: list[float] = []
    events = 0
    try:
        reader, writer = await asyncio.open_connection(address, int(port))
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            return StreamResult(0, [], 0, head.split(b"\r\n", 1)[0].decode())
        pending = b""
        while True:
            data = await reader.read(65536)
            now = time.time_ns()
            if not data:
                break
            pending += data
            # Whole events only: an event split between two reads waits for its end.
            complete, _, pending = pending.rpartition(b"\n\n")
            for event in complete.split(b"\n\n"):
                if b"data: " not in event:
                    continue
                events += 1
                stamp = TS.search(event)
                if stamp:
                    # Per-event lag from the second delta on: the first one's waits on the request's setup,
                    # which the time to the first delta measures.
                    if first is not None:
                        lags.append((now - int(stamp.group(1))) / 1e6)
                    elif DELTA.search(event):
                        first = time.perf_counter() - started
        writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        return StreamResult(0, [], events, type(exc).__name__)
    return StreamResult(first or 0.0, lags, events)


async def streams(
    arm: Arm, count: int, body: dict[str, Any], *, sample_rss: bool = False, ramp: float = 0.0
) -> tuple[list[StreamResult], int]:
    """``count`` concurrent streams, started evenly over ``ramp`` seconds.

    With ``sample_rss``, also the arm's peak RSS (KiB) while they are open.
    """
    payload = json.dumps(body).encode()
    peak = 0

    async def started_later(index: int) -> StreamResult:
        await asyncio.sleep(ramp * index / count)
        return await one_stream(arm, payload)

    tasks = [asyncio.create_task(started_later(index)) for index in range(count)]
    if sample_rss and arm.pid is not None:
        while not all(task.done() for task in tasks):
            peak = max(peak, rss_kib(arm.pid))
            await asyncio.sleep(0.05)
    results = await asyncio.gather(*tasks)
    return list(results), peak


def stream_body(deltas: int, delay_ms: int) -> dict[str, Any]:
    options = {"stream": True, "stream_options": {"include_usage": True}}
    return {**JSON_BODY, "max_tokens": deltas, "seed": delay_ms, **options}


# -- the run ---------------------------------------------------------------------------------


@contextmanager
def environment(quick: bool) -> Iterator[tuple[list[Arm], str]]:
    server_core, load_core = cores()
    python = sys.executable
    provider_port, passthrough_port, aiohttp_port, memory_port, redis_guard_port = (free_port() for _ in range(5))
    with ExitStack() as stack:
        provider = [python, str(HERE / "fake_provider.py"), "--port", str(provider_port)]
        stack.enter_context(service(pinned(provider, load_core), provider_port))
        upstream = f"http://127.0.0.1:{provider_port}/v1"
        bare = [python, str(HERE / "passthrough.py"), "--port", str(passthrough_port), "--upstream", upstream]
        passthrough = stack.enter_context(service(pinned(bare, server_core), passthrough_port))
        bare_aiohttp = [*bare, "--transport", "aiohttp"]
        bare_aiohttp[bare_aiohttp.index(str(passthrough_port))] = str(aiohttp_port)
        passthrough_aiohttp = stack.enter_context(service(pinned(bare_aiohttp, server_core), aiohttp_port))
        guard_env = guarded_env(
            upstream,
            secret=SECRET,
            origin=ORIGIN,
            UPSTREAM_TRANSPORT=os.environ.get("BENCH_UPSTREAM_TRANSPORT", "auto"),
        )
        arms = [
            Arm("direct", f"{upstream}/chat/completions"),
            Arm("passthrough", f"http://127.0.0.1:{passthrough_port}/v1/chat/completions", pid=passthrough.pid),
            Arm(
                "passthrough, aiohttp",
                f"http://127.0.0.1:{aiohttp_port}/v1/chat/completions",
                pid=passthrough_aiohttp.pid,
            ),
        ]
        guards = [("llmguard, memory://", memory_port, "memory://")]
        redis_port = free_port()
        if shutil.which("redis-server"):
            stack.enter_context(service(pinned(redis_command(redis_port), load_core), redis_port))
            guards.append(("llmguard, redis://", redis_guard_port, f"redis://127.0.0.1:{redis_port}/0"))
        for name, port, storage in guards:
            process = stack.enter_context(
                service(
                    pinned([python, "-m", "llmguard", "serve", "--port", str(port)], server_core),
                    port,
                    {**guard_env, "STORAGE_URL": storage},
                )
            )
            base = f"http://127.0.0.1:{port}"
            token = httpx.post(f"{base}/api/token", headers={"origin": ORIGIN}).json()["token"]
            arm = Arm(name, f"{base}/v1/chat/completions", {"authorization": f"Bearer {token}", "origin": ORIGIN})
            arm.pid = process.pid
            arms.append(arm)
        yield arms, load_core


def run(quick: bool, runs: int) -> dict[str, Any]:
    sizes = (
        {"rounds": 2, "per_round": 20, "wrk_seconds": 1, "c1_streams": 2, "c100": 20, "slow": 50}
        if quick
        else {"rounds": 10, "per_round": 50, "wrk_seconds": 5, "c1_streams": 5, "c100": 100, "slow": 1000}
    )
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        "runs": runs,
        "sizes": sizes,
    }
    with environment(quick) as (arms, load_core):
        report["pinned"] = bool(load_core)
        names = [arm.name for arm in arms]
        m1: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": []} for name in names}
        m2: dict[str, list[float]] = {name: [] for name in names}
        m2_errors: dict[str, int] = dict.fromkeys(names, 0)
        m3: dict[str, dict[str, list[float]]] = {name: {} for name in names}
        events_ok = True
        for run_index in range(runs):
            print(f"run {run_index + 1}/{runs}", file=sys.stderr)
            latencies = m1_latency(arms, sizes["rounds"], sizes["per_round"])
            for name, samples in latencies.items():
                m1[name]["p50"].append(percentile(samples, 0.50) * 1000)
                m1[name]["p99"].append(percentile(samples, 0.99) * 1000)
            for arm in arms:
                rate, failed = m2_throughput(arm, sizes["wrk_seconds"], 64, load_core)
                m2[arm.name].append(rate)
                m2_errors[arm.name] += failed
            for arm in arms:
                for label, concurrency, count in (("c1", 1, sizes["c1_streams"]), ("c100", sizes["c100"], 1)):
                    results: list[StreamResult] = []
                    for _ in range(count):
                        # 100 deltas 20 ms apart: two seconds a stream; the 100 start over one second,
                        # so that a steady 100 are open while most events flow.
                        ramp = 1.0 if concurrency > 1 else 0.0
                        batch, _ = asyncio.run(streams(arm, concurrency, stream_body(100, 20), ramp=ramp))
                        results.extend(batch)
                    errors = [r.error for r in results if r.error]
                    if errors:
                        raise RuntimeError(f"{arm.name} streams failed: {errors[:3]}")
                    # 1 role chunk + 100 deltas + finish + usage + [DONE], each one event, in order.
                    events_ok &= all(r.events == 104 for r in results)
                    lags = [lag for r in results for lag in r.lags_ms]
                    m3[arm.name].setdefault(f"{label}_first_delta_ms", []).append(
                        statistics.median(r.first_delta_s for r in results) * 1000
                    )
                    m3[arm.name].setdefault(f"{label}_lag_p50_ms", []).append(percentile(lags, 0.50))
                    m3[arm.name].setdefault(f"{label}_lag_p99_ms", []).append(percentile(lags, 0.99))
        m4: dict[str, Any] = {}
        for arm in arms:
            if arm.pid is None:
                continue
            idle = rss_kib(arm.pid)
            results, peak = asyncio.run(streams(arm, sizes["slow"], stream_body(20, 250), sample_rss=True))
            errors = [r.error for r in results if r.error]
            m4[arm.name] = {
                "streams": sizes["slow"],
                "idle_rss_kib": idle,
                "peak_rss_kib": peak,
                "kib_per_stream": round((peak - idle) / sizes["slow"], 1),
                "errors": len(errors),
                "complete": sum(r.events == 24 for r in results),
            }
    report.update(m1=m1, m2=m2, m2_errors=m2_errors, m3=m3, m4=m4, events_one_to_one=events_ok)
    return report


def summarize(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    m1, m2, m3, m4 = report["m1"], report["m2"], report["m3"], report["m4"]
    direct_p50 = statistics.median(m1["direct"]["p50"])
    direct_p99 = statistics.median(m1["direct"]["p99"])
    passthrough_p50 = statistics.median(m1["passthrough"]["p50"])
    passthrough_p99 = statistics.median(m1["passthrough"]["p99"])
    passthrough_rps = statistics.median(m2["passthrough"])
    aiohttp_rps = statistics.median(m2["passthrough, aiohttp"])
    lines = [
        f"Measured {report['date']} on {report['machine']}; servers and load "
        f"{'pinned to separate cores' if report['pinned'] else 'not pinned'}; "
        f"median (min–max) of {report['runs']} runs.",
        "",
        "| arm | M1 p50 ms | M1 p99 ms | p50 added vs direct / passthrough | p99 added vs direct / passthrough "
        "| M2 req/s (64 conns), failed | × passthrough (httpx / aiohttp) | M3 first delta ms (1 / 100) "
        "| M3 lag p99 ms (1 / 100) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts: dict[str, Any] = {}
    for name in m1:
        p50, p99, rps = spread(m1[name]["p50"]), spread(m1[name]["p99"]), spread(m2[name])
        streams = m3[name]
        first1, first100 = (statistics.median(streams[f"{c}_first_delta_ms"]) for c in ("c1", "c100"))
        lag1, lag100 = (statistics.median(streams[f"{c}_lag_p99_ms"]) for c in ("c1", "c100"))
        lines.append(
            f"| {name} | {p50['median']:.2f} ({p50['min']:.2f}–{p50['max']:.2f}) "
            f"| {p99['median']:.2f} ({p99['min']:.2f}–{p99['max']:.2f}) "
            f"| {p50['median'] - direct_p50:+.2f} / {p50['median'] - passthrough_p50:+.2f} "
            f"| {p99['median'] - direct_p99:+.2f} / {p99['median'] - passthrough_p99:+.2f} "
            f"| {rps['median']:.0f} ({rps['min']:.0f}–{rps['max']:.0f}), {report['m2_errors'][name]} "
            f"| {rps['median'] / passthrough_rps:.2f} / {rps['median'] / aiohttp_rps:.2f} "
            f"| {first1:.1f} / {first100:.1f} | {lag1:.2f} / {lag100:.2f} |"
        )
        if name.startswith("llmguard"):
            direct_lag100 = statistics.median(m3["direct"]["c100_lag_p99_ms"])
            verdicts[name] = {
                "m1_added_p50_ms": round(p50["median"] - direct_p50, 3),
                "m1_added_p99_ms": round(p99["median"] - direct_p99, 3),
                "m2_ratio_to_passthrough": round(rps["median"] / passthrough_rps, 3),
                "m2_ratio_to_aiohttp_passthrough": round(rps["median"] / aiohttp_rps, 3),
                "m3_added_lag_p99_ms_100": round(lag100 - direct_lag100, 3),
                "m4_kib_per_stream": m4.get(name, {}).get("kib_per_stream"),
            }
    lines += ["", f"Events forwarded 1:1 (104 per stream, in order) on every arm: {report['events_one_to_one']}.", ""]
    lines += ["| M4: 1000 concurrent slow streams | idle RSS | peak RSS | KiB per open stream | complete | errors |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, memory in m4.items():
        lines.append(
            f"| {name} | {memory['idle_rss_kib'] / 1024:.1f} MiB | {memory['peak_rss_kib'] / 1024:.1f} MiB "
            f"| {memory['kib_per_stream']} | {memory['complete']}/{memory['streams']} | {memory['errors']} |"
        )
    lines += ["", "| target | " + " | ".join(verdicts) + " |", "| --- |" + " ---: |" * len(verdicts)]
    labels = {
        "m1_added_p50_ms": "M1 added p50 over direct ≤ 1.5 ms",
        "m1_added_p99_ms": "M1 added p99 over direct ≤ 4 ms",
        "m2_ratio_to_passthrough": "M2 throughput ≥ 0.85 × passthrough",
        "m3_added_lag_p99_ms_100": "M3 added per-event lag p99 at 100 streams ≤ 2 ms",
        "m4_kib_per_stream": "M4 ≤ 64 KiB per open stream",
    }
    for key, label in labels.items():
        cells = []
        for values in verdicts.values():
            value = values[key]
            higher_is_better = key == "m2_ratio_to_passthrough"
            met = value is not None and (value >= TARGETS[key] if higher_is_better else value <= TARGETS[key])
            cells.append(f"{value} {'met' if met else 'MISSED'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines), verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (CI); writes nothing")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    report = run(args.quick, 1 if args.quick else args.runs)
    table, verdicts = summarize(report)
    report["verdicts"] = verdicts
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "proxy.md").write_text(table + "\n")
        (RESULTS / "proxy.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
