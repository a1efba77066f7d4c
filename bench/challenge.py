"""What a minted token costs a bot: the proof-of-work at ``POST /api/token``, rung by rung of the ladder.

    .venv/bin/python bench/challenge.py            # full run: 6 minutes on 2 cores; writes bench/results/
    .venv/bin/python bench/challenge.py --quick    # the smoke run CI does: one mint on each of the first two rungs
    .venv/bin/python bench/challenge.py --ladder '0=1000,3=50000,10=refuse' --mints 5

It starts a real ``llmguard serve`` (``TOKEN_CHALLENGE=pow``, ``memory://``, every
other limit out of reach, ``TRUSTED_PROXIES=127.0.0.1``) and mints tokens as a
bot would: ``GET /api/challenge``, solve, ``POST /api/token`` with the solution,
from one client address (``X-Forwarded-For``) climbing the ladder. A rung that
one address leaves before it has enough samples (the first rung holds for five
mints) is sampled again from a fresh address. Each challenge is solved twice,
in this process, and timed in process CPU time (``time.process_time``):

- **altcha (Python)**: the ``altcha`` package's solver (``solve_challenge_payload``,
  what the tests use): ``sha256((salt + str(n)).encode()).hexdigest()`` per number;
- **optimized (Python)**: what a bot that read the protocol would write: the salt's
  SHA-256 state computed once, copied per number, digests compared as bytes.

Both must find the same number, and the server must accept it (200). The work
per challenge is random (the secret number is uniform in 0..maxnumber), so each
rung reports the mean and median over its mints, and an *expected* figure: the
solver's CPU per hash, pooled over every mint, times ``maxnumber / 2``. A native
solver (C, Rust) is faster still, and a GPU far faster: the *native* column is
an **estimate**, not a measurement of a solver: OpenSSL's SHA-256 speed on this
machine (``openssl speed``, one core), one compression per number (what a solver
that keeps the salt's state does). The server's side is its process CPU time
(``/proc/<pid>/task/*/schedstat``) across issuing the challenge and checking
the solution, solving excluded.

The time a person's first mint takes in Chromium comes from
``js/scripts/first-mint.mjs`` (it starts ``llmguard serve --demo`` with
``TOKEN_CHALLENGE=pow`` and prints JSON); the full run calls it when it is
there and says so when it is not. Then the arithmetic for a 300-address botnet
against ``MONTHLY_SPEND_CAP_USD=50`` under the default limits, every assumption
printed. Figures are not asserted; the script fails only if a mint does.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from altcha.v1 import ChallengeOptions, PayloadType, create_challenge, verify_solution
from processes import free_port, guarded_env, service

from llmguard._challenge import DEFAULT_LADDER, SPENT_MINTS_PER_WINDOW, Rung, parse_ladder
from llmguard._fake_siteverify import solve_challenge_payload

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
FIRST_MINT = ROOT / "js" / "scripts" / "first-mint.mjs"
ORIGIN = "https://app.example.com"
SECRET = "challenge-bench-secret-0123456789abcdefghij"

# The defaults the botnet arithmetic assumes (docs/reference/configuration.md); printed with the result.
BOTNET = 300
SPEND_CAP_USD = 50.0
TOKENS_PER_IP_PER_DAY = 100_000
MAX_TOKENS = 2_000
MAX_PROMPT_TOKENS = 8_000
JWT_TTL_MINUTES = 15
RATE_LIMIT_PER_MINUTE = 60
TOKEN_RATE_LIMIT_PER_MINUTE = 10
MODEL, PRICE_IN, PRICE_OUT = "gpt-4.1-mini", 0.40, 1.60  # dollars per million tokens, the built-in table


@dataclass
class Mint:
    """One token minted: the challenge's rung, the work, and what each side spent on it."""

    client: str
    step: int
    maxnumber: int
    number: int
    altcha_s: float
    optimized_s: float
    server_ns: int


@dataclass
class RungResult:
    after: int
    maxnumber: int
    mints: int
    altcha_mean_s: float
    altcha_median_s: float
    altcha_expected_s: float
    optimized_mean_s: float
    optimized_median_s: float
    optimized_expected_s: float
    native_estimate_s: float
    server_mean_ms: float
    server_median_ms: float


# -- the solvers -------------------------------------------------------------------------------


def solve_optimized(challenge: Mapping[str, Any]) -> int:
    """The number behind ``challenge``: the salt's SHA-256 state computed once and copied per number."""
    target = bytes.fromhex(challenge["challenge"])
    copy = hashlib.sha256(challenge["salt"].encode()).copy
    for number in range(int(challenge["maxnumber"]) + 1):
        state = copy()
        state.update(b"%d" % number)
        if state.digest() == target:
            return number
    raise ValueError("the challenge has no solution up to its maxnumber")


def native_rates(seconds: int) -> dict[str, float]:
    """SHA-256 per second on one core, from ``openssl speed``: one-shot short messages, and per 64-byte block.

    Not a solver: an estimate of what one in C would do. Empty when there is no ``openssl``.
    """
    if shutil.which("openssl") is None:
        return {}
    rates = {}
    for name, size in (("one_shot_80_bytes", 80), ("per_block", 16384)):
        output = subprocess.run(
            ["openssl", "speed", "-evp", "sha256", "-bytes", str(size), "-seconds", str(seconds), "-mr"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = re.search(r"^\+F:\d+:sha256:([0-9.]+)", output, re.MULTILINE)
        if found is None:
            return {}
        bytes_per_second = float(found.group(1))
        rates[name] = bytes_per_second / (80 if size == 80 else 64)
    return rates


def verify_cost_s(rounds: int = 2000) -> float:
    """CPU seconds of altcha's ``verify_solution`` (one SHA-256, one HMAC), in this process: the check itself."""
    key = "bench-" + "k" * 32
    made = create_challenge(ChallengeOptions(max_number=1000, number=500, hmac_key=key))
    payload: PayloadType = {
        "algorithm": made.algorithm,
        "challenge": made.challenge,
        "number": 500,
        "salt": made.salt,
        "signature": made.signature,
    }
    started = time.process_time()
    for _ in range(rounds):
        ok, _error = verify_solution(payload, key)
        assert ok
    return (time.process_time() - started) / rounds


# -- the server --------------------------------------------------------------------------------


def server_cpu_ns(pid: int) -> int:
    """The CPU time a process's threads have run, in nanoseconds (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read
    return total


def serve_env(ladder: str) -> dict[str, str]:
    return guarded_env(
        "http://127.0.0.1:9/v1",  # never called: this bench only mints
        secret=SECRET,
        origin=ORIGIN,
        **{
            "TOKEN_CHALLENGE": "pow",
            "CHALLENGE_LADDER": ladder,
            "STORAGE_URL": "memory://",
            "TRUSTED_PROXIES": "127.0.0.1",
            "TOKEN_RATE_LIMIT": "1000000/minute",
            "LOG_LEVEL": "warning",
        },
    )


def addresses() -> Iterator[str]:
    for index in range(1, 255):
        yield f"198.51.100.{index}"


class Bot:
    """Mints tokens from any address, through the trusted proxy on loopback, timing both sides."""

    def __init__(self, url: str, pid: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.pid = pid

    def challenge(self, client: str) -> dict[str, Any] | None:
        """The challenge this client must solve now; ``None`` when the ladder refuses it (429)."""
        reply = self.http.get("/api/challenge", headers={"origin": ORIGIN, "x-forwarded-for": client})
        if reply.status_code == 429:
            return None
        reply.raise_for_status()
        body: dict[str, Any] = reply.json()
        if body.get("kind") != "pow":
            raise RuntimeError(f"expected a proof-of-work challenge, got {body}")
        return body

    def mint(self, client: str, challenge: Mapping[str, Any], issue_ns: int) -> Mint:
        started = time.process_time()
        solution = solve_challenge_payload(challenge)
        altcha_s = time.process_time() - started
        started = time.process_time()
        number = solve_optimized(challenge)
        optimized_s = time.process_time() - started
        found = json.loads(base64.b64decode(solution))["number"]
        if found != number:
            raise RuntimeError(f"the solvers disagree: altcha {found}, optimized {number}")
        before = server_cpu_ns(self.pid)
        reply = self.http.post(
            "/api/token", json={"solution": solution}, headers={"origin": ORIGIN, "x-forwarded-for": client}
        )
        verify_ns = server_cpu_ns(self.pid) - before
        if reply.status_code != 200 or "token" not in reply.json():
            raise RuntimeError(f"the mint was refused: {reply.status_code} {reply.text}")
        return Mint(
            client=client,
            step=int(challenge["step"]),
            maxnumber=int(challenge["maxnumber"]),
            number=number,
            altcha_s=altcha_s,
            optimized_s=optimized_s,
            server_ns=issue_ns + verify_ns,
        )

    def climb(self, wanted: Mapping[int, int]) -> list[Mint]:
        """Mint until every rung in ``wanted`` (index → mints) has that many, fresh addresses as needed."""
        mints: list[Mint] = []
        counts = dict.fromkeys(wanted, 0)
        warm_up = "203.0.113.1"  # the server's first mint loads code and warms caches: not counted
        challenge = self.challenge(warm_up)
        assert challenge is not None
        self.mint(warm_up, challenge, 0)
        for client in addresses():
            while True:
                needed = [index for index, count in counts.items() if count < wanted[index]]
                if not needed:
                    return mints
                before = server_cpu_ns(self.pid)
                challenge = self.challenge(client)
                issue_ns = server_cpu_ns(self.pid) - before
                if challenge is None or int(challenge["step"]) > max(needed):
                    break  # refused, or past every rung still wanted: a fresh address
                mint = self.mint(client, challenge, issue_ns)
                mints.append(mint)
                if mint.step in counts:
                    counts[mint.step] += 1
                print(
                    f"  {client} rung {mint.step} (maxnumber {mint.maxnumber:,}): number {mint.number:,}, "
                    f"altcha {mint.altcha_s:.3f} s, optimized {mint.optimized_s:.3f} s, "
                    f"server {mint.server_ns / 1e6:.2f} ms",
                    flush=True,
                )
        raise RuntimeError(f"ran out of addresses before every rung had its mints: {counts}")

    def close(self) -> None:
        self.http.close()


# -- the results -------------------------------------------------------------------------------


def summarize(rungs: Sequence[Rung], mints: Sequence[Mint], native_per_block: float | None) -> list[RungResult]:
    # CPU per hash, pooled over every mint (a mint's work is number + 1 hashes): less noisy than any one rung's mean.
    hashes = sum(mint.number + 1 for mint in mints)
    altcha_per_hash = sum(mint.altcha_s for mint in mints) / hashes
    optimized_per_hash = sum(mint.optimized_s for mint in mints) / hashes
    results = []
    for index, rung in enumerate(rungs):
        on_rung = [mint for mint in mints if mint.step == index]
        if not on_rung or not isinstance(rung.step, int):
            continue
        expected = rung.step / 2
        results.append(
            RungResult(
                after=rung.after,
                maxnumber=rung.step,
                mints=len(on_rung),
                altcha_mean_s=statistics.fmean(mint.altcha_s for mint in on_rung),
                altcha_median_s=statistics.median(mint.altcha_s for mint in on_rung),
                altcha_expected_s=altcha_per_hash * expected,
                optimized_mean_s=statistics.fmean(mint.optimized_s for mint in on_rung),
                optimized_median_s=statistics.median(mint.optimized_s for mint in on_rung),
                optimized_expected_s=optimized_per_hash * expected,
                native_estimate_s=expected / native_per_block if native_per_block else float("nan"),
                server_mean_ms=statistics.fmean(mint.server_ns for mint in on_rung) / 1e6,
                server_median_ms=statistics.median(mint.server_ns for mint in on_rung) / 1e6,
            )
        )
    return results


def first_mint() -> tuple[dict[str, Any] | None, str]:
    """What ``js/scripts/first-mint.mjs`` measured in Chromium (its JSON), or why there is nothing."""
    if not FIRST_MINT.exists():
        return None, f"not measured: {FIRST_MINT.relative_to(ROOT)} is not there yet"
    if shutil.which("node") is None:
        return None, "not measured: no node on the PATH"
    env = {**os.environ, "LLMGUARD_PYTHON": sys.executable}
    done = subprocess.run(
        ["node", str(FIRST_MINT)], cwd=ROOT / "js", capture_output=True, text=True, timeout=900, env=env
    )
    if done.returncode != 0:
        return None, f"not measured: {FIRST_MINT.name} exited {done.returncode}: {done.stderr.strip()[-500:]}"
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data, f"measured by {FIRST_MINT.relative_to(ROOT)}"
    try:
        whole = json.loads(done.stdout)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return whole, f"measured by {FIRST_MINT.relative_to(ROOT)}"
    return None, f"not measured: {FIRST_MINT.name} printed no JSON object"


def median_ms(data: Mapping[str, Any]) -> float | None:
    """The first key of ``data`` (or one level down) that names a median in milliseconds."""
    for key, value in data.items():
        if isinstance(value, (int, float)) and "median" in key.lower():
            return float(value) * (1000 if key.lower().endswith(("_s", "seconds")) else 1)
    for value in data.values():
        if isinstance(value, dict):
            found = median_ms(value)
            if found is not None:
                return found
    return None


def mints_per_window(rungs: Sequence[Rung]) -> list[int]:
    """The max number each mint of one address asks, in order, through one ladder window (pow only).

    A ``captcha`` rung is skipped (no CAPTCHA configured: the work rung before it holds); ``refuse`` ends
    the window. Without a ``refuse`` rung, TOKEN_RATE_LIMIT (10/minute) bounds it: 600 an hour.
    """
    end = next((rung.after for rung in rungs if rung.step == "refuse"), TOKEN_RATE_LIMIT_PER_MINUTE * 60)
    work: list[int] = []
    for mint in range(end):
        step = [rung.step for rung in rungs if rung.after <= mint and isinstance(rung.step, int)][-1]
        work.append(step)
    return work


def botnet(rungs: Sequence[Rung], results: Sequence[RungResult], native: float | None) -> list[str]:
    """The arithmetic for a botnet of BOTNET addresses, each line an assumption or a step of it."""
    by_max = {result.maxnumber: result for result in results}
    steps = mints_per_window(rungs)
    missing = sorted({step for step in steps if step not in by_max})
    if missing:
        return [f"(botnet arithmetic needs every work rung measured; not measured: {missing})"]
    hashes = sum(step / 2 for step in steps)
    altcha = sum(by_max[step].altcha_expected_s for step in steps)
    optimized = sum(by_max[step].optimized_expected_s for step in steps)
    native_s = hashes / native if native else float("nan")
    first = by_max[steps[0]]
    # With JWT_MAX_USES=1 a chat needs a mint; full-size chats drain the window in `requests_to_drain`
    # of them, and each one already spent counts on the ladder too (SPENT_MINTS_PER_WINDOW per window).
    per_chat = MAX_PROMPT_TOKENS + MAX_TOKENS
    requests_to_drain = -(-TOKENS_PER_IP_PER_DAY // per_chat)
    single_use = [
        by_max[steps[min(chat + chat * per_chat * SPENT_MINTS_PER_WINDOW // TOKENS_PER_IP_PER_DAY, len(steps) - 1)]]
        for chat in range(requests_to_drain)
    ]
    single_use_s = sum(result.optimized_expected_s for result in single_use)
    per_day = BOTNET * TOKENS_PER_IP_PER_DAY
    worst = PRICE_OUT  # every token an output token
    mixed = (MAX_PROMPT_TOKENS * PRICE_IN + MAX_TOKENS * PRICE_OUT) / (MAX_PROMPT_TOKENS + MAX_TOKENS)
    return [
        f"Assumptions (llmguard's defaults): TOKEN_CHALLENGE=pow with no CAPTCHA (a `captcha` rung is skipped:"
        f" the work rung before it holds), CHALLENGE_WINDOW 1 hour, JWT_TTL {JWT_TTL_MINUTES} minutes,"
        f" JWT_MAX_USES off, RATE_LIMIT {RATE_LIMIT_PER_MINUTE}/minute,"
        f" TOKENS_PER_IP {TOKENS_PER_IP_PER_DAY:,}/day, MAX_TOKENS {MAX_TOKENS:,},"
        f" MAX_PROMPT_TOKENS {MAX_PROMPT_TOKENS:,}, OPENAI_MODEL {MODEL} (${PRICE_IN:.2f} in /"
        f" ${PRICE_OUT:.2f} out per million), MONTHLY_SPEND_CAP_USD {SPEND_CAP_USD:.0f};"
        f" {BOTNET} addresses the server sees as {BOTNET} clients; CPU figures are the expected ones above.",
        "",
        f"1. Minting flat out. The ladder lets one address mint {len(steps)} tokens an hour, then answers 429."
        f" Their work: {hashes / 1e6:,.2f} million SHA-256 on average = {altcha:,.0f} CPU-s with altcha's"
        f" Python solver, {optimized:,.0f} CPU-s optimized, about {native_s:,.0f} CPU-s native (estimate)."
        f" {BOTNET} addresses: {BOTNET * len(steps):,} tokens an hour for"
        f" {BOTNET * altcha / 3600:,.1f} / {BOTNET * optimized / 3600:,.1f} / ~{BOTNET * native_s / 3600:,.1f}"
        f" CPU-hours an hour (that many cores busy without pause), {altcha / len(steps):,.2f} /"
        f" {optimized / len(steps):,.2f} / ~{native_s / len(steps):,.3f} CPU-s per token on average.",
        "",
        f"2. What the tokens can spend. A token is good for {JWT_TTL_MINUTES} minutes and, by default, any number"
        f" of chats; the per-client window caps what one address spends at {TOKENS_PER_IP_PER_DAY:,} tokens a"
        f" day, however many tokens it minted ({requests_to_drain} chats of {MAX_PROMPT_TOKENS:,} prompt +"
        f" {MAX_TOKENS:,} output tokens drain it in well under a minute at {RATE_LIMIT_PER_MINUTE}/minute)."
        f" {BOTNET} addresses: at most {per_day / 1e6:,.0f} million tokens a day, ${per_day / 1e6 * worst:,.2f}"
        f" a day if every token is output (${worst:.2f}/M), ${per_day / 1e6 * mixed:,.2f} a day at full-size"
        f" chats (${mixed:.2f}/M): the ${SPEND_CAP_USD:.0f} cap is reached after"
        f" {SPEND_CAP_USD / (per_day / 1e6 * worst):,.1f} to {SPEND_CAP_USD / (per_day / 1e6 * mixed):,.1f} days,"
        f" and then refuses everyone until the month ends.",
        "",
        f"3. What the challenge costs that botnet. One token per address per day is enough to drain its window:"
        f" {BOTNET} mints on the first rung, {BOTNET * first.altcha_expected_s:,.1f} CPU-s with altcha's solver,"
        f" {BOTNET * first.optimized_expected_s:,.1f} optimized, a day. Even with JWT_MAX_USES=1 (a token per"
        f" chat), {requests_to_drain} mints per address drain its window for the day; minted in one hour, the"
        f" spent share counted, they ask maxnumbers {', '.join(f'{r.maxnumber:,}' for r in single_use)}:"
        f" {single_use_s:,.1f} CPU-s optimized per address, {BOTNET * single_use_s / 3600:,.2f} CPU-hours a day"
        f" for all {BOTNET}. So against addresses it really has, the bill is bounded by"
        f" TOKENS_PER_IP × addresses and the monthly cap, not by the proof-of-work: the challenge makes"
        f" every mint cost CPU, caps one address at {len(steps)} tokens an hour (TOKEN_RATE_LIMIT alone allows"
        f" {TOKEN_RATE_LIMIT_PER_MINUTE * 60}), and makes a script that mints per request, or from few addresses,"
        f" pay {optimized / len(steps):,.2f} CPU-s a token on average. Lower TOKENS_PER_IP, a spend cap, DEGRADE"
        f" and `pow+turnstile` (a CAPTCHA at the {next((r.after for r in rungs if r.step == 'captcha'), 'captcha')}"
        f"th mint) are what shrink a botnet's share.",
    ]


def render(
    ladder: str,
    results: Sequence[RungResult],
    rungs: Sequence[Rung],
    native: Mapping[str, float],
    chromium: tuple[dict[str, Any] | None, str],
    arithmetic: Sequence[str],
    seconds: float,
    verify_s: float,
) -> list[str]:
    def s(value: float) -> str:
        if value != value:  # NaN: not measured
            return "–"
        return f"{value:.4f}" if value < 0.01 else f"{value:.3f}" if value < 10 else f"{value:,.1f}"

    machine = f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"
    lines = [
        f"# What a mint costs a bot, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine}",
        "",
        f"`CHALLENGE_LADDER={ladder}` against `llmguard serve` (`TOKEN_CHALLENGE=pow`, memory://);"
        f" one address climbing (a fresh one when a rung needed more mints); {seconds:.0f} s.",
        "Bot CPU-s per token: process CPU time of the solve, mean / median over the rung's mints, and"
        " expected (CPU per hash over all mints × maxnumber / 2). Native: an **estimate** from `openssl speed`.",
        "",
        "| after mints | maxnumber | expected hashes | mints | altcha (Python): mean / median / expected"
        " | optimized (Python): mean / median / expected | native, estimate | server CPU-ms per mint: mean / median |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    measured = {result.after for result in results}
    for result in results:
        lines.append(
            f"| {result.after} | {result.maxnumber:,} | {result.maxnumber // 2:,} | {result.mints}"
            f" | {s(result.altcha_mean_s)} / {s(result.altcha_median_s)} / {s(result.altcha_expected_s)}"
            f" | {s(result.optimized_mean_s)} / {s(result.optimized_median_s)} / {s(result.optimized_expected_s)}"
            f" | ~{s(result.native_estimate_s)} | {result.server_mean_ms:.2f} / {result.server_median_ms:.2f} |"
        )
    for rung in rungs:
        if rung.after in measured:
            continue
        what = {
            "captcha": "CAPTCHA (with `pow+turnstile`/`pow+hcaptcha`; with `pow` alone the work rung before holds)",
            "refuse": "refused: 429 `RateLimitExceeded` until the window lets the client down",
        }.get(str(rung.step), f"maxnumber {rung.step}: not measured in this run")
        lines.append(f"| {rung.after} | {what} | | | | | | |")
    per_hash = native.get("per_block")
    one_shot = native.get("one_shot_80_bytes")
    lines += [
        "",
        "Native estimate: "
        + (
            f"OpenSSL SHA-256 on one core of this machine, {per_hash / 1e6:.1f} million 64-byte blocks a second"
            f" (a solver that keeps the salt's state hashes one block per number); hashing whole 80-byte"
            f" messages one call at a time, {one_shot / 1e6:.1f} million a second. A GPU is orders of magnitude faster:"
            f" these are not a bot's floor."
            if per_hash and one_shot
            else "not measured (no openssl)."
        ),
    ]
    lines += [
        "",
        f"Server: the CPU per mint above is the whole of `GET /api/challenge` and `POST /api/token` (HTTP, the"
        f" ladder's count and the single-use mark in the storage, signing the challenge and the JWT); checking"
        f" the proof itself (altcha's `verify_solution`: one SHA-256, one HMAC) takes {verify_s * 1e6:.0f} µs"
        f" of CPU, timed in this process.",
    ]
    data, note = chromium
    figure = median_ms(data) if data else None
    lines += [
        "",
        "A person's first mint in Chromium (the SDK's own SHA-256 search in Web Workers, first rung): "
        + (f"median {figure:,.0f} ms ({note}; {json.dumps(data)})." if figure is not None else note + "."),
        "",
        f"## A {BOTNET}-address botnet against a ${SPEND_CAP_USD:.0f} monthly spend cap",
        "",
        *arithmetic,
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one mint on each of the first two rungs, no Chromium")
    parser.add_argument("--ladder", default=DEFAULT_LADDER, help=f"CHALLENGE_LADDER (default {DEFAULT_LADDER})")
    parser.add_argument("--mints", type=int, default=10, help="mints per rung, at least (default 10)")
    parser.add_argument("--no-chromium", action="store_true", help="skip js/scripts/first-mint.mjs")
    args = parser.parse_args()
    rungs = parse_ladder(args.ladder, option="--ladder")
    work = [index for index, rung in enumerate(rungs) if isinstance(rung.step, int)]
    wanted = dict.fromkeys(work[:2], 1) if args.quick else dict.fromkeys(work, max(1, args.mints))
    started = time.monotonic()

    print("openssl speed sha256 (the native estimate) ...", flush=True)
    native = native_rates(1 if args.quick else 3)
    port = free_port()
    command = [sys.executable, "-m", "llmguard", "serve", "--port", str(port)]
    print(f"minting against llmguard serve, ladder {args.ladder}:", flush=True)
    with service(command, port, env=serve_env(args.ladder)) as process:
        bot = Bot(f"http://127.0.0.1:{port}", process.pid)
        try:
            mints = bot.climb(wanted)
        finally:
            bot.close()
    results = summarize(rungs, mints, native.get("per_block"))
    chromium: tuple[dict[str, Any] | None, str] = (None, "not measured (--quick or --no-chromium)")
    if not (args.quick or args.no_chromium):
        print(f"first mint in Chromium ({FIRST_MINT.relative_to(ROOT)}) ...", flush=True)
        chromium = first_mint()
    arithmetic = botnet(rungs, results, native.get("per_block"))
    verify_s = verify_cost_s()
    lines = render(args.ladder, results, rungs, native, chromium, arithmetic, time.monotonic() - started, verify_s)
    print()
    print("\n".join(lines))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "challenge.md").write_text("\n".join(lines) + "\n")
        data = {
            "ladder": args.ladder,
            "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "native_sha256_per_second": native,
            "rungs": [asdict(result) for result in results],
            "mints": [asdict(mint) for mint in mints],
            "chromium_first_mint": chromium[0],
            "chromium_note": chromium[1],
            "verify_solution_s": verify_s,
        }
        (RESULTS / "challenge.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
