"""Soak: 1000 concurrent streams through `llmguard serve` for 60 s, three rounds; no error, no leak.

    .venv/bin/python bench/soak.py            # memory:// then redis://, 3 rounds of 60 s each: about 11 minutes
    .venv/bin/python bench/soak.py --quick    # the smoke run: 50 streams, 5 s, 2 rounds, memory:// (writes nothing)
    .venv/bin/python bench/soak.py --storage redis --streams 500 --seconds 30 --rounds 4

`llmguard serve` runs the whole stack in front of the fast fake provider
(bench/fake_provider.py), once counting in memory:// and once in a real
redis-server, with a per-client token window and a monthly token cap switched on
but set high, so that every request reserves and settles a budget. The load keeps
``--streams`` requests open at once for ``--seconds``, replacing each one as it
ends: streams on /api/chat and on /v1/chat/completions, streams the client
leaves halfway (closing the connection, or resetting it; these come from
127.0.0.2, so that llmguard counts them apart), and JSON replies; each client
mints a new token on /api/token every 25 requests. The client is hand-written
HTTP/1.1 over asyncio streams (on uvloop when installed), light enough to hold
1000 streams on one core beside the provider and Redis; llmguard gets the other
core when there are two. Streams carry 20 to 40 deltas, 1 s apart, and a round
opens its streams over 10 s (FULL): that is some 40 requests and 1000 deltas a
second, which leaves llmguard room on its core even on a busy machine, so that
what is measured is how llmguard holds up over time, not how it queues when
saturated (a soak, not a load test).

Measured per round: requests; errors of any kind (a status other than 200, an
error event, a stream that lost deltas or did not end with [DONE], a stream
that ended before the client could leave it, a broken or timed-out connection,
a warning in llmguard's log, a request llmguard never finished), with samples;
how many requests were in flight (the lowest sample once ramped up); time to the
first delta beyond the provider's pause before it; the CPU used by
llmguard, the provider and the client once ramped up, and how long llmguard
waited for a CPU (other work on a shared machine); llmguard's resident memory
(VmRSS), peak during the round and after it, and its open file descriptors
after it, once every request of the round is logged.

Leak checks. Memory: round 1 grows the heap to what 1000 streams need, so the
last round is compared with the one before it, from three rounds on: growing by
more than LEAK_MIB fails, and so do FD_LEAK more descriptors (see there why that
much). Budgets: each request's charge is on its access-log line, written after
its budget settled. What llmguard charged the clients that read to the end must
equal the usage their replies reported, and each stream left halfway must have
been charged once. On Redis the counters are read too: the monthly one must
equal the sum of every charge logged so far, and each client's window the sum
of that client's, or a reservation was never given back. (A memory:// counter
cannot be read from outside llmguard: there the log check alone runs.)

Writes bench/results/soak.md (not with --quick). Exits 1 on an error, a leak or
unbalanced budgets; the timings are reported, never asserted. To soak another
checkout of llmguard, put it first on PYTHONPATH and run from outside this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from processes import free_port, guarded_env, redis_command, service
from proxy_bench import cores, percentile, pinned, rss_kib

T = TypeVar("T")

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ORIGIN = "https://soak.example"
SECRET = "soak-secret-0123456789abcdefghijklmnopqrstuvwxyz"
MESSAGES = [{"role": "user", "content": "Hello"}]
TIMEOUT = 90.0  # a request still unanswered after this is an error (the longest stream takes 40 s)
REMINT_EVERY = 25
DRAIN_TIMEOUT = 15.0
# Growth from the second-to-last round to the last that fails the soak. RSS after a round is the
# heap's high-water mark (CPython and glibc keep what was freed for reuse), so it moves with the
# round's busiest moment: by up to 5.6 MiB between rounds 2 and 3 in the runs made on a busy 2-core
# machine while this was written. 12 MiB is twice that; a round makes some 3800 requests, so a leak
# of 3.3 KiB a request (a stream's buffers, a task, a connection) fails it. Smaller leaks of what
# counts are the budget checks' to catch, exactly, and leaked sockets the descriptor count's.
LEAK_MIB = 12.0
# The provider pool keeps up to 100 idle connections and the Redis pool some more, as many as
# the last burst left: their number varies between rounds. A socket leaked per request is thousands.
FD_LEAK = 200

CHAT = "/api/chat"
OPENAI = "/v1/chat/completions"
TOKEN = "/api/token"
DELTA = {CHAT: re.compile(rb'"type":"text-delta"'), OPENAI: re.compile(rb'"content":\s*"w\d')}
# Loopback addresses: llmguard keeps a token window per client IP, and logs it.
READER_IP = "127.0.0.1"
LEAVER_IP = "127.0.0.2"


@dataclass(frozen=True)
class Shape:
    """How the load goes: the provider's pause before each delta, deltas per stream (a range), the ramp-up."""

    delay_ms: int
    deltas: tuple[int, int]
    ramp: float  # seconds over which a round opens its streams


# At 1000 streams, some 40 requests and 1000 deltas a second once ramped up: about half of llmguard's
# core on a quiet machine, so that a busy one does not saturate it. The longest stream lasts 40 s.
FULL = Shape(1000, (20, 40), ramp=10.0)
QUICK = Shape(100, (4, 8), ramp=1.0)  # a round drains in a second


@dataclass(frozen=True)
class Kind:
    """One kind of request the load makes."""

    path: str
    stream: bool = False
    # How the client leaves a stream halfway: "close" (a FIN) or "reset" (a RST); "" reads to the end.
    leave: str = ""

    @property
    def label(self) -> str:
        if self.path == TOKEN:
            return f"POST {TOKEN}"
        what = f"stream left ({self.leave})" if self.leave else "stream" if self.stream else "JSON"
        return f"{what} {self.path}"


# Per 12 requests: 8 streams read to the end, 2 left halfway, 2 JSON replies; both routes alike.
MIX = (Kind(CHAT, stream=True), Kind(OPENAI, stream=True)) * 4 + (
    Kind(CHAT, stream=True, leave="close"),
    Kind(OPENAI, stream=True, leave="reset"),
    Kind(CHAT),
    Kind(OPENAI),
)
MINT = Kind(TOKEN)


@dataclass
class Reply:
    status: int
    body: bytes
    first_delta: float | None = None  # seconds from sending the request
    left: bool = False  # the client left halfway, as asked


@dataclass
class Outcome:
    kind: Kind
    error: str | None = None
    first_delta: float | None = None
    tokens: int = 0  # the total usage the reply reported
    sent: bool = False  # the request reached llmguard, so it must log it


class Load:
    """The clients of one llmguard process, and what happened to their requests."""

    def __init__(self, port: int, shape: Shape) -> None:
        self.port = port
        self.shape = shape
        self.random = random.Random(1)
        self.in_flight = 0
        self.outcomes: list[Outcome] = []

    async def run(self, streams: int, seconds: float) -> None:
        """Keep ``streams`` requests open until ``seconds`` have passed, then let them end."""
        stop_at = time.monotonic() + seconds
        ramp = self.shape.ramp
        await asyncio.gather(*(self.client(index, ramp * index / streams, stop_at) for index in range(streams)))

    async def client(self, index: int, delay: float, stop_at: float) -> None:
        await asyncio.sleep(delay)
        token: str | None = None
        count = 0
        while time.monotonic() < stop_at:
            if token is None or count % REMINT_EVERY == 0:
                token = await self.mint()
                if token is None:
                    await asyncio.sleep(0.1)  # a failing server is not hammered in a tight loop
                    continue
            await self.chat(MIX[(index + count) % len(MIX)], token)
            count += 1

    async def mint(self) -> str | None:
        outcome = Outcome(MINT)
        self.outcomes.append(outcome)
        reply = await self.request(outcome, b"")
        if reply is None:
            return None
        try:
            if reply.status == 200:
                return str(json.loads(reply.body)["token"])
        except (ValueError, LookupError, TypeError):
            pass
        outcome.error = f"HTTP {reply.status} {reply.body[:200]!r}"
        return None

    async def chat(self, kind: Kind, token: str) -> None:
        outcome = Outcome(kind)
        self.outcomes.append(outcome)
        deltas = self.random.randint(*self.shape.deltas)
        request: dict[str, object] = {"messages": MESSAGES, "max_tokens": deltas}
        if kind.stream:
            request["stream"] = True
            if kind.path == OPENAI:
                request["stream_options"] = {"include_usage": True}
        # Left halfway: after half the deltas, before the provider's usage comes.
        reply = await self.request(outcome, json.dumps(request).encode(), token, deltas // 2 if kind.leave else 0)
        if reply is not None:
            outcome.first_delta = reply.first_delta
            outcome.error, outcome.tokens = check(kind, reply, deltas)

    async def request(self, outcome: Outcome, body: bytes, token: str = "", leave_after: int = 0) -> Reply | None:
        """``exchange()`` within TIMEOUT, counted in flight meanwhile; None (and an error) if it failed."""
        self.in_flight += 1
        try:
            return await asyncio.wait_for(self.exchange(outcome, body, token, leave_after), TIMEOUT)
        except asyncio.TimeoutError:
            outcome.error = f"no complete reply within {TIMEOUT:.0f} s"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.in_flight -= 1
        return None

    async def exchange(self, outcome: Outcome, body: bytes, token: str, leave_after: int) -> Reply:
        """One request on a new connection; the body read to the end, or left after ``leave_after`` deltas."""
        path = outcome.kind.path
        authorization = f"Authorization: Bearer {token}\r\n" if token else ""
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nOrigin: {ORIGIN}\r\n{authorization}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        source = LEAVER_IP if leave_after else READER_IP
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        try:
            started = time.perf_counter()
            writer.write(request)
            outcome.sent = True
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            delta = DELTA.get(path) if status == 200 else None
            data = bytearray()
            first: float | None = None
            seen = 0
            while block := await reader.read(65536):
                data += block
                if delta is None:
                    continue
                # Counted per read: a delta cut in two by a read boundary is missed here, which at
                # worst delays the first-delta time by one read; check() counts them exactly.
                found = len(delta.findall(block))
                if found and first is None:
                    first = time.perf_counter() - started
                seen += found
                if leave_after and seen >= leave_after:
                    if outcome.kind.leave == "reset":
                        writer.transport.abort()
                    return Reply(status, b"", first, left=True)
            chunked = b"transfer-encoding: chunked" in head.lower()
            return Reply(status, dechunk(bytes(data)) if chunked else bytes(data), first)
        finally:
            writer.close()


def dechunk(data: bytes) -> bytes:
    """A chunked HTTP/1.1 body, decoded; ValueError when it was cut before its last chunk."""
    body = bytearray()
    index = 0
    while True:
        end = data.index(b"\r\n", index)
        size = int(data[index:end].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2 : end + 2 + size]
        index = end + 2 + size + 2
        if index > len(data):
            raise ValueError("the body ended inside a chunk")


def check(kind: Kind, reply: Reply, deltas: int) -> tuple[str | None, int]:
    """What is wrong with a reply (None: nothing), and the total tokens it reported."""
    if reply.status != 200:
        return f"HTTP {reply.status} {reply.body[:200]!r}", 0
    if kind.leave:
        return (None if reply.left else f"the stream ended before half its deltas: {reply.body[-200:]!r}"), 0
    try:
        if not kind.stream:
            return None, int(json.loads(reply.body)["usage"]["total_tokens"])
        events = [event for event in reply.body.split(b"\n\n") if event.strip()]
        failed = [e for e in events if b'"type":"error"' in e or e.startswith(b'data: {"error"')]
        if failed:
            return f"error event {failed[0][:200]!r}", 0
        if not events or events[-1] != b"data: [DONE]":
            return f"ended without [DONE]: {reply.body[-200:]!r}", 0
        count = sum(1 for event in events if DELTA[kind.path].search(event))
        if count != deltas:
            return f"{count} deltas of {deltas}", 0
        if kind.path == CHAT:
            usage = json.loads(events[-2][6:])["messageMetadata"]["usage"]
        else:
            usage = next(json.loads(e[6:])["usage"] for e in events if re.search(rb'"usage":\s*\{', e))
        return None, int(usage["total_tokens"])
    except (ValueError, LookupError, TypeError, StopIteration) as exc:
        return f"malformed reply ({type(exc).__name__}): {reply.body[-200:]!r}", 0


# -- what llmguard says ------------------------------------------------------------------------


@dataclass
class Charges:
    """What llmguard's access log says about some requests, per client IP."""

    lines: int = 0
    tokens: Counter[str] = field(default_factory=Counter)  # tokens charged
    charged: Counter[str] = field(default_factory=Counter)  # requests charged
    estimated: Counter[str] = field(default_factory=Counter)  # requests charged an estimate, not the usage
    warnings: list[str] = field(default_factory=list)


class ServerLog:
    """llmguard's log (JSON lines on its standard error), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, into: Charges) -> None:
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                into.warnings.append(line.decode(errors="replace")[:300])  # not llmguard's JSON: a crash?
                continue
            if record.get("level") not in ("debug", "info"):
                cause = record.get("exception", "").strip().rsplit("\n", 1)[-1]
                where = f"{record.get('level')} {record.get('logger')}"
                into.warnings.append(f"{where}: {record.get('message', '').strip()} {cause}"[:400])
            if record.get("logger") != "llmguard.access":
                continue
            into.lines += 1
            if record.get("prompt_tokens") is not None:
                client = record["client_ip"]
                into.tokens[client] += record["prompt_tokens"] + record["completion_tokens"]
                into.charged[client] += 1
                into.estimated[client] += bool(record.get("tokens_estimated"))


def cpu_seconds(pid: int) -> float:
    # utime and stime, fields 14 and 15, counted after the command name (which may hold spaces).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_seconds(pid: int) -> float:
    """How long the process's main thread was ready to run but waited for a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def redis_counters(port: int) -> dict[str, int]:
    """The number of keys, the monthly token counters' total, and each client's token window."""
    import redis

    client = redis.Redis(port=port)
    try:
        patterns = {"month": "*budget:month-tokens:*"}
        patterns |= {ip: f"*budget:client:ip:{ip}:*" for ip in (READER_IP, LEAVER_IP)}
        totals = {"keys": int(client.dbsize())}
        for name, pattern in patterns.items():
            totals[name] = sum(int(client.get(key) or 0) for key in client.scan_iter(match=pattern))
        return totals
    finally:
        client.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Target:
    """One `llmguard serve` under soak, and where to read what it does."""

    storage: str  # memory or redis
    pid: int
    provider_pid: int
    log: ServerLog
    redis_port: int | None = None


@dataclass
class Round:
    storage: str
    number: int
    requests: int
    streams: int  # read to the end
    left: int  # left halfway, on purpose
    errors: list[str]
    in_flight_min: int
    first_delta_ms: tuple[float, float]  # p50, p99
    # Once ramped up, in % of one core: llmguard's CPU, its wait for one, the provider's and the client's CPU.
    cpu_percent: tuple[float, float, float, float]
    load_average: float  # the machine's, over the last minute of the round
    rss_peak_kib: int
    rss_after_kib: int
    fds_after: int
    charges: Charges
    budgets: list[str]  # what was checked about the budgets, with "UNBALANCED" in any that failed
    redis_keys: int | None = None


async def soak_round(load: Load, target: Target, number: int, streams: int, seconds: float) -> Round:
    load.outcomes = []
    started = time.monotonic()
    running = asyncio.ensure_future(load.run(streams, seconds))
    peak, in_flight = 0, []
    steady: list[tuple[float, ...]] = []  # (time, then the seconds that cpu_percent shares out)
    while not running.done():
        peak = max(peak, rss_kib(target.pid))
        if load.shape.ramp + 1 < time.monotonic() - started < seconds:
            in_flight.append(load.in_flight)
            times = cpu_seconds(target.pid), waited_seconds(target.pid), cpu_seconds(target.provider_pid)
            steady.append((time.monotonic(), *times, time.process_time()))
        await asyncio.sleep(0.25)
    await running
    load_average = os.getloadavg()[0]
    first, last = steady[0], steady[-1]  # main() refuses rounds too short to have a steady part
    llmguard, waited, provider, client = ((last[i] - first[i]) / (last[0] - first[0]) * 100 for i in range(1, 5))
    outcomes = load.outcomes
    errors = [f"{outcome.kind.label}: {outcome.error}" for outcome in outcomes if outcome.error]

    # Drained once llmguard has logged every request it received: the line comes after the budget settled.
    charges = Charges()
    sent = sum(outcome.sent for outcome in outcomes)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    target.log.read(charges)
    while charges.lines < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        target.log.read(charges)
    if charges.lines < sent:
        errors.append(f"{sent - charges.lines} requests never finished in llmguard ({DRAIN_TIMEOUT:.0f} s after)")
    errors += [f"llmguard logged: {warning}" for warning in charges.warnings]
    await asyncio.sleep(1)

    ok = [outcome for outcome in outcomes if not outcome.error]
    pause = load.shape.delay_ms
    firsts = [outcome.first_delta * 1000 - pause for outcome in ok if outcome.first_delta is not None]
    return Round(
        storage=target.storage,
        number=number,
        requests=len(outcomes),
        streams=sum(1 for outcome in ok if outcome.kind.stream and not outcome.kind.leave),
        left=sum(1 for outcome in ok if outcome.kind.leave),
        errors=errors,
        in_flight_min=min(in_flight, default=0),
        first_delta_ms=(percentile(firsts, 0.5), percentile(firsts, 0.99)) if firsts else (0.0, 0.0),
        cpu_percent=(llmguard, waited, provider, client),
        load_average=load_average,
        rss_peak_kib=peak,
        rss_after_kib=rss_kib(target.pid),
        fds_after=open_fds(target.pid),
        charges=charges,
        budgets=budget_checks(outcomes, charges),
    )


def budget_checks(outcomes: list[Outcome], charges: Charges) -> list[str]:
    """What the access log says each client was charged, against what the clients were told."""
    readers = [o for o in outcomes if o.sent and o.kind.path != TOKEN and not o.kind.leave]
    leavers = [o for o in outcomes if o.sent and o.kind.leave]
    failed = sum(1 for outcome in readers + leavers if outcome.error)
    if failed:
        # llmguard charged those for what it had relayed, which the client cannot know: no sum to compare.
        return [f"not compared: {failed} requests failed (see the errors)"]
    told = sum(outcome.tokens for outcome in readers)
    charged, estimated = charges.charged[LEAVER_IP], charges.estimated[LEAVER_IP]
    relayed = (
        f", {charged - estimated} by the provider's usage: llmguard had relayed the whole stream before it saw "
        "the client go"
        if charged > estimated
        else ""
    )
    return [
        f"{_balanced(charges.tokens[READER_IP] == told and charges.charged[READER_IP] == len(readers))}: "
        f"{charges.charged[READER_IP]} requests read to the end charged {charges.tokens[READER_IP]} tokens "
        f"({charges.estimated[READER_IP]} by estimate); the {len(readers)} replies reported {told}",
        f"{_balanced(charged == len(leavers))}: {charged} of {len(leavers)} streams left halfway charged, "
        f"{charges.tokens[LEAVER_IP]} tokens ({estimated} by estimate of what was relayed{relayed})",
    ]


def _balanced(ok: bool) -> str:
    return "balanced" if ok else "UNBALANCED"


async def soak_rounds(load: Load, target: Target, args: argparse.Namespace) -> list[Round]:
    results: list[Round] = []
    logged: Counter[str] = Counter()  # tokens charged per client IP in all rounds so far
    for number in range(1, args.rounds + 1):
        print(f"{target.storage}: round {number}/{args.rounds}", file=sys.stderr)
        result = await soak_round(load, target, number, args.streams, args.seconds)
        logged += result.charges.tokens
        if target.redis_port is not None:
            # The counters hold every round so far, and a drained round leaves nothing reserved.
            counters = redis_counters(target.redis_port)
            expected = {"month": sum(logged.values()), READER_IP: logged[READER_IP], LEAVER_IP: logged[LEAVER_IP]}
            for name, total in expected.items():
                what = "monthly counter" if name == "month" else f"token window of {name}"
                result.budgets.append(
                    f"{_balanced(counters[name] == total)}: Redis {what} {counters[name]} tokens, "
                    f"charges logged in all rounds {total}, still reserved {counters[name] - total}"
                )
            result.redis_keys = counters["keys"]
        results.append(result)
    return results


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop when it is installed (llmguard[speed]): the client costs less, and measures more."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def guard_env(upstream: str, storage_url: str, streams: int) -> dict[str, str]:
    return guarded_env(
        upstream,
        secret=SECRET,
        origin=ORIGIN,
        OPENAI_MODEL="gpt-4.1-mini",
        JWT_TTL="1 hour",
        # The default (1000) is the soak's own number of streams: a client's next connection seen before
        # its last one's close would be refused. The cap is not what a soak is about.
        MAX_CONNECTIONS=str(2 * streams),
        STORAGE_URL=storage_url,
        LOG_FORMAT="json",
    )


def raise_fd_limit(needed: int) -> None:
    """Room for every stream's sockets, here and in the children, which inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextmanager
def provider(shape: Shape, core: str) -> Iterator[tuple[str, int]]:
    """The fake provider's base URL and process id."""
    port = free_port()
    command = [sys.executable, str(HERE / "fake_provider.py"), "--port", str(port), "--delay-ms", str(shape.delay_ms)]
    with service(pinned(command, core), port) as process:
        yield f"http://127.0.0.1:{port}/v1", process.pid


def soak(storage: str, upstream: tuple[str, int], args: argparse.Namespace, pinning: tuple[str, str]) -> list[Round]:
    """The rounds against one `llmguard serve` counting in ``storage`` (memory or redis)."""
    server_core, load_core = pinning
    with ExitStack() as stack:
        redis_port = None
        storage_url = "memory://"
        if storage == "redis":
            redis_port = free_port()
            stack.enter_context(service(pinned(redis_command(redis_port), load_core), redis_port))
            storage_url = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port()
        log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "llmguard.log"
        command = pinned([sys.executable, "-m", "llmguard", "serve", "--port", str(port)], server_core)
        env = guard_env(upstream[0], storage_url, args.streams)
        process = stack.enter_context(service(command, port, env, stderr=log_path))
        target = Target(storage, process.pid, upstream[1], ServerLog(log_path), redis_port)
        load = Load(port, args.shape)
        return run_async(soak_rounds(load, target, args))


def measured_llmguard() -> str:
    """Which llmguard `python -m llmguard` imports here (PYTHONPATH can point it at another checkout)."""
    code = "import llmguard; print(llmguard.__version__, llmguard.__file__.removesuffix('/__init__.py'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def report(results: list[Round], args: argparse.Namespace, pinned_cores: bool) -> tuple[str, list[str]]:
    """The Markdown report, and what failed (nothing: the soak passed)."""
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )
    shape = args.shape
    placement = "pinned to one core, the provider, Redis and the client to the other" if pinned_cores else "unpinned"
    lines = [
        f"Measured {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {machine}; llmguard "
        f"{measured_llmguard()}, {placement}. {args.streams} requests held open for {args.seconds:g} s a round; "
        f"streams of {shape.deltas[0]} to {shape.deltas[1]} deltas, {shape.delay_ms} ms apart (the first one too), "
        f"opened over {shape.ramp:g} s. First delta: the time to it beyond the provider's pause. "
        "CPU in % of one core once ramped up (in brackets: llmguard ready to run but waiting for a CPU); "
        "machine load: the 1-minute load average at the end of the round.",
        "",
        "| storage | round | requests | streams read to the end / left halfway | errors | in flight (lowest) "
        "| first delta p50 / p99 ms | CPU llmguard (waiting) / provider / client | machine load "
        "| RSS peak MiB | RSS after MiB | RSS vs round 1 | open fds after | Redis keys |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    failures: list[str] = []
    for result in results:
        first = next(r for r in results if r.storage == result.storage)
        llmguard, waited, provider_cpu, client = result.cpu_percent
        lines.append(
            f"| {result.storage} | {result.number} | {result.requests} | {result.streams} / {result.left} "
            f"| {len(result.errors)} | {result.in_flight_min} "
            f"| {result.first_delta_ms[0]:.0f} / {result.first_delta_ms[1]:.0f} "
            f"| {llmguard:.0f} % ({waited:.0f} %) / {provider_cpu:.0f} % / {client:.0f} % "
            f"| {result.load_average:.1f} | {result.rss_peak_kib / 1024:.1f} | {result.rss_after_kib / 1024:.1f} "
            f"| {(result.rss_after_kib - first.rss_after_kib) / 1024:+.1f} | {result.fds_after} "
            f"| {'' if result.redis_keys is None else result.redis_keys} |"
        )
    lines += ["", "Budgets, after each round drained:", ""]
    for result in results:
        lines += [f"- {result.storage}, round {result.number}: {check}" for check in result.budgets]
        failures += [f"{result.storage} round {result.number}: {c}" for c in result.budgets if "UNBALANCED" in c]
    if any(result.errors for result in results):
        lines += ["", "Errors, the five most frequent of each round:", ""]
    for result in results:
        if not result.errors:
            continue
        failures.append(f"{result.storage} round {result.number}: {len(result.errors)} errors")
        kinds = Counter(re.sub(r"req_[0-9a-f]+", "req_…", error) for error in result.errors)
        lines += [f"- {result.storage}, round {result.number}: {n} × `{e}`" for e, n in kinds.most_common(5)]
    lines += ["", "Leaks, from the second-to-last round to the last:", ""]
    for storage in dict.fromkeys(result.storage for result in results):
        mine = [result for result in results if result.storage == storage]
        if len(mine) < 3:
            lines.append(f"- {storage}: not checked with {len(mine)} rounds (round 1 warms up; it takes 3).")
            continue
        before, after = mine[-2], mine[-1]
        growth = (after.rss_after_kib - before.rss_after_kib) / 1024
        fds = after.fds_after - before.fds_after
        leaks = [f"RSS +{growth:.1f} MiB"] if growth > LEAK_MIB else []
        leaks += [f"{fds} more open fds"] if fds > FD_LEAK else []
        lines.append(
            f"- {storage}: RSS {growth:+.1f} MiB ({growth * 1024 * 1024 / after.requests:+.0f} bytes a request; "
            f"fails over {LEAK_MIB:g} MiB), open fds {fds:+d} (fails over {FD_LEAK}): "
            f"{'LEAK' if leaks else 'flat'}."
        )
        failures += [f"{storage}: {leak} from round {before.number} to {after.number}" for leak in leaks]
    total = sum(result.requests for result in results)
    verdict = "FAIL: " + "; ".join(failures) if failures else f"PASS: {total} requests, no error, no leak."
    lines += ["", f"**{verdict}**"]
    return "\n".join(lines), failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (50 streams, 5 s, 2 rounds, memory)")
    parser.add_argument("--streams", type=int, help="requests held open at once (default 1000)")
    parser.add_argument("--seconds", type=float, help="length of a round (default 60)")
    parser.add_argument("--rounds", type=int, help="rounds per storage (default 3)")
    parser.add_argument("--storage", choices=("memory", "redis", "both"), help="where llmguard counts (default both)")
    args = parser.parse_args()
    quick = {"streams": 50, "seconds": 5.0, "rounds": 2, "storage": "memory"}
    full = {"streams": 1000, "seconds": 60.0, "rounds": 3, "storage": "both"}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.shape = QUICK if args.quick else FULL
    if args.seconds < args.shape.ramp + 2:
        parser.error(f"--seconds has value {args.seconds:g}: a round needs {args.shape.ramp + 2:g} (ramp-up and more)")
    storages = ["memory", "redis"] if args.storage == "both" else [args.storage]
    if "redis" in storages and shutil.which("redis-server") is None:
        print("redis-server is needed for --storage redis (apt-get install redis-server)", file=sys.stderr)
        return 2
    # Per stream: a socket here, two in llmguard, one in the provider; the children inherit the limit
    # (llmguard also raises its own to what its MAX_CONNECTIONS needs).
    raise_fd_limit(4 * args.streams + 1024)
    server_core, load_core = cores()
    if load_core:
        os.sched_setaffinity(0, {int(load_core)})
    results: list[Round] = []
    with provider(args.shape, load_core) as upstream:
        for storage in storages:
            results += soak(storage, upstream, args, (server_core, load_core))
    text, failures = report(results, args, bool(load_core))
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.md").write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
