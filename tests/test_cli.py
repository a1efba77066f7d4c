"""`llmguard serve`, run as users run it: a real process."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import LLMGuardProcess, free_port

from llmguard import Settings
from llmguard._cli import load_settings
from llmguard._settings_docs import rows


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmguard", *args],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def refused_start_up(env: dict[str, str] | None = None) -> str:
    """What ``llmguard serve`` says when it refuses to start (exit status 2, no traceback)."""
    result = run_cli("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def demo_client(server: LLMGuardProcess, **options: Any) -> httpx.Client:
    """A client of a ``--demo`` server, from one of the origins the demo allows."""
    origin = server.url.replace("127.0.0.1", "localhost")
    return httpx.Client(base_url=server.url, headers={"origin": origin}, **options)


def test_serve_without_a_key_exits_with_one_line_naming_the_variable() -> None:
    (line,) = refused_start_up().strip().splitlines()
    assert "OPENAI_API_KEY" in line
    assert "--demo" in line


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("RATE_LIMIT_WINDOW", "soon", True),
        ("ALLOWED_ORIGIN", "https://app.example.com/path", True),
        ("MAX_TOKENS", "lots", True),
        ("STORAGE_FAILURE", "maybe", True),
        ("JWT_SECRET", "too-short-secret", False),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(variable: str, value: str, shown: bool) -> None:
    message = refused_start_up({"OPENAI_API_KEY": "sk-x", variable: value})
    assert variable in message
    assert (value in message) is shown


def test_serve_help_lists_every_variable_with_its_default_and_help() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for row in rows():
        line = " or ".join(row.variables) + f"  (default: {row.default.replace('`', '')})"
        assert line in result.stdout
        first_words = " ".join(row.help.replace("`", "").split()[:4])
        assert first_words in " ".join(result.stdout.split())
    for variable in ("OPENAI_API_KEY", "RATE_LIMIT", "TOKENS_PER_CLIENT", "STORAGE_URL", "JWT_MAX_USES"):
        assert variable in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("llmguard ")


def test_demo_adds_its_own_origins() -> None:
    settings = load_settings({"ALLOWED_ORIGIN": "https://app.example.com"}, demo=True, port=8123)
    assert settings.demo
    assert settings.openai_api_key is None
    assert settings.allowed_origins == (
        "https://app.example.com",
        "http://localhost:8123",
        "http://127.0.0.1:8123",
        "http://[::1]:8123",
    )
    assert load_settings({"OPENAI_API_KEY": "sk-x"}, demo=False, port=8123).allowed_origins == (
        "http://localhost:5173",
    )


def test_demo_server_serves_its_page_and_streams_word_by_word(tmp_path: Path) -> None:
    with LLMGuardProcess({"LOG_FORMAT": "json"}, tmp_path / "demo.log", args=("--demo",)) as server:
        page = httpx.get(server.url + "/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "widget.js" in page.text

        with demo_client(server) as client:
            token = client.post("/api/token").json()["token"]
            body = {"messages": [{"role": "user", "content": "Are you there?"}], "stream": True}
            arrivals = []
            headers = {"authorization": f"Bearer {token}"}
            with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if '"text-delta"' in line:
                        arrivals.append((time.monotonic(), json.loads(line.removeprefix("data: "))["delta"]))
        reply = "".join(delta for _, delta in arrivals)
        assert "offline demo" in reply
        assert "Are you there?" in reply
        assert len(arrivals) > 20  # word by word
        assert arrivals[-1][0] - arrivals[0][0] > 0.5  # visibly streamed, not one burst

    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(line.get("path") == "/api/chat" and line.get("status") == 200 for line in lines)
    assert all("time" in line and "level" in line for line in lines)


def test_port_comes_from_the_environment_as_on_railway(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "port.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmguard", "serve", "--demo"],
            env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert response.json()["status"] == "ok"
        assert f":{port}" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_workers_serve_and_warn_about_memory_storage(tmp_path: Path) -> None:
    with LLMGuardProcess({}, tmp_path / "workers.log", args=("--demo", "--workers", "2")) as server:
        # A new connection per request, so requests land on either worker.
        with demo_client(server, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            # Tokens minted by whichever worker answers are accepted by every worker.
            for _ in range(10):
                token = client.post("/api/token").json()["token"]
                body = {"messages": [{"role": "user", "content": "hi"}]}
                reply = client.post("/api/chat", json=body, headers={"authorization": f"Bearer {token}"})
                assert reply.status_code == 200, reply.text
        logs = server.logs()
    assert "memory:// with 2 workers" in logs
    assert "Use redis://" in logs
    assert logs.count("Started server process") == 2


def test_workers_get_the_settings_of_the_cli_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmguard._cli import _prepare_workers

    environ = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "ALLOWED_ORIGIN", "LLMGUARD_DEMO")}
    environ["MAX_TOKENS"] = "77"  # stale: the CLI's settings below say otherwise, and win
    monkeypatch.setattr(os, "environ", environ)  # the workers' environment, thrown away afterwards
    settings = dataclasses.replace(load_settings({}, demo=True, port=8123), max_tokens=300)
    prepared = _prepare_workers(settings, 3, logging.getLogger("test"))

    # Every worker reads the same secret, so a token from one is valid on all.
    assert prepared.jwt_secret is not None
    assert len(prepared.jwt_secret) >= 32
    assert prepared == dataclasses.replace(settings, jwt_secret=prepared.jwt_secret)
    # And each worker, reading the environment, runs on exactly the CLI's settings.
    assert Settings.from_env(dict(os.environ)) == prepared
