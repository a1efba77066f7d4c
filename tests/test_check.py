"""`llmguard check` and `llmguard keygen`: against a real provider over HTTP and a real Redis, or none.

``check`` runs in-process (``main(["check"])``, its output captured) against
the fake provider served by uvicorn and a throwaway redis-server, or against
ports where nothing answers; one run each goes through the real command line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import KEY, SECRET
from servers import RawProvider, RawReply, RedisServer, closed_port_url, free_port

from llmguard import Settings
from llmguard._cli import main
from llmguard._jwt import key_id
from llmguard.testing import FakeProvider

PREVIOUS = "check-previous-Wq5Hn0Vb8Xc3Lm7Kt2Py6Zr9Jd4"
REDIS_PASSWORD = "redis-pass-Tz8Qw1Hk4Vn"
METRICS_TOKEN = "metrics-token-Lr5Pw9Xe2Hd7"
WEBHOOK_PATH = "/services/T000/B000/webhook-path-Gm3Ks8Yv1"
CAPTCHA_SECRET = "0x-captcha-secret-Nb6Rj2Wt9"
#: Every secret a check's output must never show (the provider key in pieces too).
SECRETS = (KEY, KEY[:12], KEY[-6:], SECRET, PREVIOUS, REDIS_PASSWORD, METRICS_TOKEN, WEBHOOK_PATH, CAPTCHA_SECRET)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def upstream(fake_upstream: tuple[FakeProvider, str]) -> str:
    return f"{fake_upstream[1]}/v1"


def check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, **env: str
) -> tuple[int, str]:
    """``llmguard check *args`` in this process with exactly ``env`` as its environment: (exit status, output)."""
    monkeypatch.setattr(os, "environ", {"PATH": "/usr/bin:/bin", **env})
    status = main(["check", *args])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    for secret in SECRETS:
        assert secret not in output
    return status, output


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The check table's first three rows: name → (status, text)."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"(settings|storage|provider) +(ok|warning|FAILED) +(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


def good_env(upstream: str, redis_url: str, **more: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream, "JWT_SECRET": SECRET, "STORAGE_URL": redis_url, **more}


def test_a_good_deployment_passes_and_shows_what_it_runs_on_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], upstream: str, redis_server: RedisServer
) -> None:
    env = good_env(
        upstream,
        redis_server.url,
        JWT_PREVIOUS_SECRETS=PREVIOUS,
        ALLOWED_ORIGIN="https://app.example.com,https://www.example.com",
        RATE_LIMIT="30/minute",
        TOKEN_RATE_LIMIT="5/minute",
        TOKENS_PER_CLIENT="50000/day",
        MONTHLY_TOKEN_CAP="2000000",
        MONTHLY_SPEND_CAP_USD="25",
        TOKEN_CHALLENGE="pow+turnstile",
        CAPTCHA_SITE_KEY="0x-site-key",
        CAPTCHA_SECRET=CAPTCHA_SECRET,
        TRUSTED_PROXIES="10.0.0.0/8",
        CLIENT_IP_HEADER="Fly-Client-IP",
        # Other helpers' settings, when this build has them: never shown either.
        METRICS="true",
        METRICS_TOKEN=METRICS_TOKEN,
        ALERT_WEBHOOK_URL=f"https://hooks.slack.com{WEBHOOK_PATH}",
    )
    status, output = check(monkeypatch, capsys, **env)
    assert status == 0, output
    assert rows(output) == {
        "settings": ("ok", "valid"),
        "storage": ("ok", f"{redis_server.url} answers"),
        "provider": ("ok", f"{upstream}/models: the key works; gpt-4.1-mini is listed"),
    }
    table = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in output.splitlines()[6:18])
    assert table["origins"] == "https://app.example.com, https://www.example.com"
    assert table["request rate"] == "30 per minute per client (chat)"
    assert table["mint rate"] == "5/minute per client (tokens minted)"
    assert table["tokens per client"] == "50000/day"
    assert table["monthly caps"] == "2,000,000 tokens, $25.00"
    assert table["model"] == "gpt-4.1-mini ($0.40 in, $1.60 out per million tokens)"
    assert table["challenge"].startswith("pow+turnstile (ladder 0=100000,")
    kids = key_id(SECRET.encode()), key_id(PREVIOUS.encode())
    assert table["signing"] == f"kid {kids[0]}; previous secrets still verify: kid {kids[1]}"
    assert table["storage down"] == "refuse with 503 StorageUnavailable"
    assert table["trusted proxies"] == "10.0.0.0/8 (client IP from fly-client-ip)"
    settings = Settings.from_env(env)
    assert table["metrics"] == ("on, at /metrics (bearer token)" if hasattr(settings, "metrics") else "off")
    assert table["alerts"] == ("on, to https://hooks.slack.com" if hasattr(settings, "alert_webhook_url") else "off")
    assert output.rstrip().endswith("All checks passed.")


def test_a_key_the_provider_refuses_fails_the_check_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], upstream: str, redis_server: RedisServer
) -> None:
    wrong = "sk-wrong-Jx5Vb9Nc2Lq7Tz3Hk"
    status, output = check(monkeypatch, capsys, **good_env(upstream, redis_server.url, OPENAI_API_KEY=wrong))
    assert status == 1
    assert rows(output)["provider"] == (
        "FAILED",
        f"{upstream}/models: the provider refused the key (401); check OPENAI_API_KEY",
    )
    assert rows(output)["storage"][0] == "ok"
    # Neither the key nor the piece of it the provider's error quotes.
    assert wrong[:8] not in output
    assert wrong[-4:] not in output
    assert output.rstrip().endswith("1 check failed: provider.")


def test_a_provider_that_cannot_be_reached_or_does_not_answer_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    status, output = check(monkeypatch, capsys, **good_env(closed, redis_server.url))
    assert status == 1
    assert rows(output)["provider"] == ("FAILED", f"{closed}/models: cannot reach the provider (ConnectError)")

    monkeypatch.setattr("llmguard._check.PROVIDER_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, and never says a word
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        status, output = check(monkeypatch, capsys, **good_env(url, redis_server.url))
    assert status == 1
    assert rows(output)["provider"] == ("FAILED", f"{url}/models: no answer within 0.5 seconds")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "not found (404); check OPENAI_BASE_URL"),
        (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", "the provider answered 503"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n<html/>\r\n", "answered 200 but not with a model list"),
    ],
)
def test_a_provider_that_answers_something_else_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    reply: bytes,
    expected: str,
) -> None:
    with RawProvider(default=RawReply([reply])) as provider:
        status, output = check(monkeypatch, capsys, **good_env(f"{provider.url}/v1", redis_server.url))
    assert status == 1
    assert rows(output)["provider"][0] == "FAILED"
    assert expected in rows(output)["provider"][1]


def test_a_model_the_provider_does_not_list_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], upstream: str, redis_server: RedisServer
) -> None:
    env = good_env(upstream, redis_server.url, OPENAI_MODEL="gpt-4.1-nano", ALLOWED_MODELS="gpt-4.1-mini,o3")
    status, output = check(monkeypatch, capsys, **env)
    assert status == 0, output
    assert rows(output)["provider"] == (
        "warning",
        f"{upstream}/models: the key works; not in the provider's model list: gpt-4.1-nano, o3",
    )


def test_a_storage_that_does_not_answer_fails_the_check_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], upstream: str
) -> None:
    down = closed_port_url(REDIS_PASSWORD)
    status, output = check(monkeypatch, capsys, **good_env(upstream, down, STORAGE_FAILURE="open"))
    assert status == 1
    shown = down.replace(f":{REDIS_PASSWORD}@", "***@")
    assert rows(output)["storage"] == ("FAILED", f"{shown} does not answer (refused, or no reply within 2 seconds)")
    assert rows(output)["provider"][0] == "ok"
    assert "serve without limits, and warn" in output
    assert output.rstrip().endswith("1 check failed: storage.")


def test_the_demo_needs_no_key_and_calls_no_provider(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Even pointed at a provider that is not there: the demo never calls one.
    status, output = check(monkeypatch, capsys, "--demo", OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    assert status == 0, output
    assert rows(output) == {
        "settings": ("ok", "valid"),
        "storage": ("ok", "memory:// answers"),
        "provider": ("ok", "offline demo: the built-in fake provider, no key used"),
    }
    assert "JWT_SECRET is not set" in output
    # The demo's own page origins, as `llmguard serve --demo` would allow them.
    assert "http://localhost:8000" in output


@pytest.mark.parametrize(
    "env",
    [
        {},  # no key
        {"OPENAI_API_KEY": KEY, "JWT_SECRET": "too-short"},
        {"OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET, "JWT_PREVIOUS_SECRETS": SECRET},
        {"OPENAI_API_KEY": KEY, "RATE_LIMIT_WINDOW": "soon"},
        {"OPENAI_API_KEY": KEY, "STORAGE_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:notaport/0"},
    ],
)
def test_invalid_settings_exit_2_with_the_message_serve_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> None:
    status, output = check(monkeypatch, capsys, **env)
    assert status == 2
    assert output.startswith("llmguard: ")
    assert "Traceback" not in output
    monkeypatch.setattr(os, "environ", {"PATH": "/usr/bin:/bin", **env})
    assert main(["serve", "--port", str(free_port())]) == 2
    assert capsys.readouterr().err == output.replace("llmguard check --demo", "llmguard serve --demo")


def test_env_file_is_read_as_serve_reads_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, upstream: str
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"OPENAI_API_KEY={KEY}\nexport OPENAI_BASE_URL='{upstream}'\nJWT_SECRET=\"{SECRET}\"\n")
    status, output = check(monkeypatch, capsys, "--env-file", str(env_file))
    assert status == 0, output
    status, output = check(monkeypatch, capsys, "--env-file", str(tmp_path / "missing.env"))
    assert status == 2
    assert "cannot read --env-file" in output


# -- through the real command line


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmguard", *args],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keygen_prints_one_new_secret_and_nothing_else() -> None:
    first, second = run("keygen"), run("keygen")
    for result in (first, second):
        assert result.returncode == 0
        assert result.stderr == ""
        assert re.fullmatch(r"[A-Za-z0-9_-]{64}\n", result.stdout)
    assert first.stdout != second.stdout
    # What it prints is a JWT_SECRET llmguard takes, and a previous one next to another.
    secrets = {"JWT_SECRET": first.stdout.strip(), "JWT_PREVIOUS_SECRETS": second.stdout}
    assert Settings.from_env({"OPENAI_API_KEY": KEY, **secrets}).jwt_previous_secrets == (second.stdout.strip(),)


def test_check_on_the_command_line_exits_with_its_status(upstream: str, redis_server: RedisServer) -> None:
    good = run("check", env=good_env(upstream, redis_server.url))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "All checks passed." in good.stdout
    refused = run("check", env=good_env(upstream, redis_server.url, OPENAI_API_KEY="sk-wrong-key"))
    assert refused.returncode == 1
    assert "the provider refused the key (401)" in refused.stdout
    for result in (good, refused):
        assert all(secret not in result.stdout + result.stderr for secret in SECRETS)
