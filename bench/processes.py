"""Loopback services for the benchmarks: a free port, and a process that is up before use and stopped after."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def service(
    command: list[str], port: int, env: dict[str, str] | None = None, *, stderr: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends, once it accepts connections on ``port`` (20 s at most).

    Its output is dropped, or with ``stderr`` its standard error (where `llmguard serve` logs) goes to that file.
    """
    with open(stderr or os.devnull, "wb") as errors:
        process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command} did not start") from None
                time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def redis_command(port: int) -> list[str]:
    """A throwaway redis-server on loopback, with no persistence."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def guarded_env(upstream: str, *, secret: str, origin: str, **extra: str) -> dict[str, str]:
    """The environment of an ``llmguard serve`` whose every guard is on but out of reach.

    Every request is rate-limited, reserves and settles on the client window and the monthly
    cap, and none is refused: what a benchmark measures is the guards' cost, not their refusals.
    """
    return {
        "OPENAI_API_KEY": "sk-bench-not-a-real-key-0123456789",
        "OPENAI_BASE_URL": upstream,
        "JWT_SECRET": secret,
        "ALLOWED_ORIGIN": origin,
        "RATE_LIMIT_MAX": "1000000000",
        "TOKEN_RATE_LIMIT": "1000000/minute",
        "TOKENS_PER_IP": "1000000000000/day",
        "MONTHLY_TOKEN_CAP": "1000000000000000",
        "MAX_TOKENS": "2000",
        "LOG_LEVEL": "info",
        # What a mint costs a client is bench/challenge.py's subject; here the proxy's cost is.
        "TOKEN_CHALLENGE": "off",
        **extra,
    }
