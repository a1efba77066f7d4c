"""End to end: ``llmguard serve --uds PATH``, the start-up warning, and ``TRUSTED_PROXIES=unix``.

A Unix-socket peer has no address: without ``TRUSTED_PROXIES=unix`` every
client shares one rate limit (and the server says so when it starts); with
it, the proxy's ``X-Forwarded-For`` gives each client its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from harness import HELLO, KEY, ORIGIN, SECRET, assert_error, assert_not_500, bearer

from llmguard.testing import FakeProvider

WARNING = "serving on a Unix socket"


@contextmanager
def serving(fake_upstream: tuple[FakeProvider, str], folder: Path, **extra: str) -> Iterator[tuple[httpx.Client, Path]]:
    """``llmguard serve --uds`` with ``extra`` settings; a client over its socket, and its log file."""
    _, url = fake_upstream
    socket_path = folder / "llmguard.sock"
    log_path = folder / "server.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{url}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "TOKEN_CHALLENGE": "off",
        "RATE_LIMIT_MAX": "2",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "off",
        **extra,
    }
    command = [sys.executable, "-m", "llmguard", "serve", "--uds", str(socket_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    client = httpx.Client(
        transport=transport,
        base_url="http://llmguard",
        headers={"origin": ORIGIN},
        timeout=20,
        event_hooks={"response": [assert_not_500]},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llmguard exited with {process.returncode}:\n{log_path.read_text()}")
            if listening(socket_path) and client.get("/healthz").status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmguard did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield client, log_path
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening(path: Path) -> bool:
    """Whether a server accepts on the Unix socket at ``path`` (checked with a socket closed at once)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def chat_as(client: httpx.Client, ip: str) -> httpx.Response:
    """A chat from ``ip``, as a proxy on the socket would forward it."""
    forwarded = {"x-forwarded-for": ip}
    token = client.post("/api/token", headers=forwarded).json()["token"]
    return client.post("/api/chat", json=HELLO, headers={**bearer(token), **forwarded})


def test_without_trusting_unix_every_client_shares_one_limit_and_the_server_warns(
    fake_upstream: tuple[FakeProvider, str], tmp_path: Path
) -> None:
    with serving(fake_upstream, tmp_path) as (client, log_path):
        assert chat_as(client, "198.51.100.1").status_code == 200
        assert chat_as(client, "198.51.100.2").status_code == 200
        # A third client, but the same (unknown) address: the shared limit of 2 is used up.
        assert_error(chat_as(client, "198.51.100.3"), 429, "RateLimitExceeded")
    logs = log_path.read_text()
    assert WARNING in logs
    assert "TRUSTED_PROXIES=unix" in logs
    assert logs.count("a request came with no client address") == 1  # ClientIP's own warning, once
    assert "unknown POST /api/chat 429" in logs
    assert "Traceback" not in logs


def test_trusting_unix_gives_each_forwarded_client_its_own_limit(
    fake_upstream: tuple[FakeProvider, str], tmp_path: Path
) -> None:
    with serving(fake_upstream, tmp_path, TRUSTED_PROXIES="unix") as (client, log_path):
        for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8:7:1::1"):
            assert chat_as(client, ip).status_code == 200, ip
        assert chat_as(client, "198.51.100.1").status_code == 200
        assert_error(chat_as(client, "198.51.100.1"), 429, "RateLimitExceeded")
        # IPV6_PREFIX left at 64: another /64 of the same /48 is another client.
        assert chat_as(client, "2001:db8:7:2::1").status_code == 200
    logs = log_path.read_text()
    assert WARNING not in logs
    assert "no client address" not in logs
    assert "198.51.100.1 POST /api/chat 429" in logs
    assert "Traceback" not in logs


@pytest.mark.parametrize("prefix", ["48", "/48"])
def test_ipv6_prefix_48_groups_a_whole_site(
    fake_upstream: tuple[FakeProvider, str], tmp_path: Path, prefix: str
) -> None:
    with serving(fake_upstream, tmp_path, TRUSTED_PROXIES="unix", IPV6_PREFIX=prefix) as (client, log_path):
        assert chat_as(client, "2001:db8:7:1::1").status_code == 200
        assert chat_as(client, "2001:db8:7:2::1").status_code == 200
        assert_error(chat_as(client, "2001:db8:7:ffff::1"), 429, "RateLimitExceeded")
    assert "2001:db8:7::/48 POST /api/chat 429" in log_path.read_text()
