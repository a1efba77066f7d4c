"""End to end: locked prompts through a real ``llmguard serve``, over ``/api/chat`` and the official ``openai`` client.

The server runs in template-only mode: ``PRESETS`` (from a file) and a
``SYSTEM_PROMPT``, ``ALLOW_CLIENT_SYSTEM`` left at ``auto``: a client picks a
preset by name and cannot write its own system prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    SECRET,
    assert_clean_logs,
    assert_error,
    bearer,
    http_client,
    mint,
    openai_over_http,
    sse_events,
)
from servers import LLMGuardProcess

from llmguard.testing import FakeProvider, FakeReply

SYSTEM_PROMPT = "You are the default assistant."
PRESETS = {
    "support": {"system": "You answer questions about Acme.", "model": "gpt-4.1-nano", "max_tokens": 120,
                "temperature": 0.2},
    "haiku": {"system": "Answer in a haiku."},
}  # fmt: skip
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def server(
    fake_upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LLMGuardProcess]:
    _, url = fake_upstream
    folder = tmp_path_factory.mktemp("presets")
    path = folder / "presets.json"
    path.write_text(json.dumps(PRESETS), encoding="utf-8")
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{url}/v1",
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "SYSTEM_PROMPT": SYSTEM_PROMPT,
        "PRESETS": f"@{path}",
        "MAX_TOKENS": str(MAX_TOKENS),
        "UPSTREAM_RETRIES": "0",
        "RATE_LIMIT_MAX": "100000",
        "TOKEN_RATE_LIMIT": "100000/minute",
        "TOKENS_PER_IP": "off",
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "info",
    }
    with LLMGuardProcess(env, folder / "server.log") as process:
        yield process
    logs = process.logs()
    assert_clean_logs(logs)


@pytest.fixture
def provider(fake_upstream: tuple[FakeProvider, str]) -> FakeProvider:
    fake, _ = fake_upstream
    fake.reset()
    return fake


@pytest.fixture
def http(server: LLMGuardProcess) -> Iterator[httpx.Client]:
    with http_client(server) as client:
        yield client


def chat(http: httpx.Client, server: LLMGuardProcess, body: dict[str, Any]) -> httpx.Response:
    return http.post("/api/chat", json=body, headers=bearer(mint(server)))


def test_a_preset_picks_what_the_provider_receives(
    server: LLMGuardProcess, http: httpx.Client, provider: FakeProvider
) -> None:
    provider.enqueue(FakeReply(text="Acme answers."))
    response = chat(http, server, {**HELLO, "preset": "support", "max_tokens": 5000, "temperature": 1.9})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Acme answers."
    sent = provider.last_request.json
    assert sent["messages"] == [
        {"role": "system", "content": "You answer questions about Acme."},
        {"role": "user", "content": "Hello"},
    ]
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("gpt-4.1-nano", 120, 0.2)


def test_a_streamed_preset_chat(server: LLMGuardProcess, http: httpx.Client, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=["old ", "pond"]))
    response = chat(http, server, {**HELLO, "preset": "haiku", "stream": True, "max_tokens": 50})
    assert response.status_code == 200, response.text
    deltas = [event["delta"] for event in sse_events(response) if event != "[DONE]" and event["type"] == "text-delta"]
    assert deltas == ["old ", "pond"]
    sent = provider.last_request.json
    assert sent["messages"][0] == {"role": "system", "content": "Answer in a haiku."}
    assert (sent["model"], sent["max_tokens"]) == ("gpt-4.1-mini", 50)


def test_without_a_preset_the_server_prompt_applies(
    server: LLMGuardProcess, http: httpx.Client, provider: FakeProvider
) -> None:
    assert chat(http, server, HELLO).status_code == 200
    sent = provider.last_request.json
    assert sent["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert sent["max_tokens"] == MAX_TOKENS


def test_template_only_mode_refuses_a_client_system_prompt_naming_the_field(
    server: LLMGuardProcess, http: httpx.Client, provider: FakeProvider
) -> None:
    for body in ({**HELLO, "system": "You are a general assistant now."}, {**HELLO, "system": "x", "preset": "haiku"}):
        refused = assert_error(chat(http, server, body), 422, "InvalidRequest")
        assert refused["param"] == "system"
        assert "system" in refused["message"]
    assert provider.requests == []


def test_an_unknown_preset_is_a_422_naming_the_field(
    server: LLMGuardProcess, http: httpx.Client, provider: FakeProvider
) -> None:
    refused = assert_error(chat(http, server, {**HELLO, "preset": "pirate"}), 422, "InvalidRequest")
    assert refused["param"] == "preset"
    assert provider.requests == []


def test_the_openai_client_names_a_preset_in_extra_body(server: LLMGuardProcess, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(text="Acme, via the SDK."), FakeReply(chunks=["a", "b"]))
    client = openai_over_http(server)
    completion = client.chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}], extra_body={"preset": "support"}
    )
    assert completion.choices[0].message.content == "Acme, via the SDK."
    sent = provider.last_request.json
    assert sent["messages"][0] == {"role": "system", "content": "You answer questions about Acme."}
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("gpt-4.1-nano", 120, 0.2)

    stream = client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        max_tokens=30,
        extra_body={"preset": "haiku"},
    )
    assert [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    sent = provider.last_request.json
    assert sent["messages"][0] == {"role": "system", "content": "Answer in a haiku."}
    assert sent["max_tokens"] == 30


def test_the_openai_client_gets_400s_naming_the_field(server: LLMGuardProcess, provider: FakeProvider) -> None:
    client = openai_over_http(server)
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}], extra_body={"preset": "pirate"}
        )
    assert (unknown.value.code, unknown.value.param) == ("InvalidRequest", "preset")
    with pytest.raises(openai.BadRequestError) as system:
        client.chat.completions.create(
            model="gpt-4.1-mini",
            messages=[{"role": "system", "content": "New rules."}, {"role": "user", "content": "Hi"}],
        )
    assert (system.value.code, system.value.param) == ("InvalidRequest", "messages")
    assert provider.requests == []
