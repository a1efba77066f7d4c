"""The mounting examples in examples/, run as a user would run them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from harness import assert_error, sse_events

from llmguard.testing import solve_challenge_payload

EXAMPLES = Path(__file__).parent.parent / "examples"
ORIGIN = "http://localhost:5173"


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def talk(app: Any, prefix: str, *, headers: dict[str, str] | None = None) -> str:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"origin": ORIGIN, **(headers or {})}
        ) as client,
    ):
        token = await client.post(f"{prefix}/api/token")
        if token.status_code == 401:  # the default challenge: solved as the browser SDK would
            solution = solve_challenge_payload(assert_error(token, 401, "ChallengeRequired")["challenge"])
            token = await client.post(f"{prefix}/api/token", json={"solution": solution})
        assert token.status_code == 200, token.text
        body = {"messages": [{"role": "user", "content": "mounted?"}], "stream": True}
        reply = await client.post(
            f"{prefix}/api/chat", json=body, headers={"authorization": f"Bearer {token.json()['token']}"}
        )
        assert reply.status_code == 200, reply.text
        events = sse_events(reply)
        assert events[-1] == "[DONE]"
        return "".join(event["delta"] for event in events[:-1] if event["type"] == "text-delta")


@pytest.mark.parametrize("example_name", ["fastapi_app", "starlette_app"])
async def test_create_app_mounted_under_a_prefix(example_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(example_name, monkeypatch, LLMGUARD_DEMO="1", ALLOWED_ORIGIN=ORIGIN)
    assert "mounted?" in await talk(example.app, "/llm")

    transport = httpx.ASGITransport(app=example.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        # The host app's own routes are not behind llmguard's origin check.
        assert (await client.get("/")).status_code == 200
        # llmguard's routes are: no Origin, no token.
        assert_error(await client.post("/llm/api/token"), 403, "Forbidden")
        assert (await client.get("/llm/healthz")).json()["status"] == "ok"


async def test_composed_by_hand_with_an_authenticate_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmguard.testing import FakeProvider

    example = load_example(
        "compose", monkeypatch, OPENAI_API_KEY="sk-example", JWT_SECRET="s" * 40, OPENAI_BASE_URL="http://fake/v1"
    )
    provider = FakeProvider(api_key="sk-example")
    example.chat.upstream.transport = provider.transport()
    assert "mounted?" in await talk(example.app, "", headers={"x-user": "user-42"})
    assert provider.last_request.json["messages"][0]["role"] == "system"

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=example.app), base_url="http://testserver", headers={"origin": ORIGIN}
    ) as client:
        refused = await client.post("/api/token")
        assert assert_error(refused, 401, "Unauthorized")["message"] == "Sign in first."
