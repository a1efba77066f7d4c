"""/v1/chat/completions and /v1/models, driven by the official openai package (in-process)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import openai
import pytest
from harness import HELLO, KEY, ORIGIN, SECRET, Harness, assert_openai_error, openai_sdk, preflight
from openai.types.chat import ChatCompletion

from llmguard._tokens import estimate_prompt_tokens
from llmguard.testing import FakeReply

Factory = Callable[..., Any]


async def test_a_json_completion_through_the_sdk(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(system_prompt="Be the server.", max_tokens=300)
    harness.provider.enqueue(FakeReply(text="Hi there!"))
    client = await openai_sdk(harness)
    completion = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=HELLO["messages"], max_completion_tokens=10_000, temperature=0.3, seed=1
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hi there!"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2

    sent = harness.provider.last_request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json["model"] == "gpt-4.1-mini"
    assert sent.json["max_completion_tokens"] == 300  # clamped to MAX_TOKENS (OpenAI's name for api.openai.com)
    assert sent.json["messages"][0] == {"role": "system", "content": "Be the server."}
    assert sent.json["temperature"] == 0.3
    assert sent.json["seed"] == 1
    assert "stream" not in sent.json


async def test_a_streamed_completion_passes_the_providers_chunks_through(harness: Harness) -> None:
    harness.provider.enqueue(FakeReply(chunks=["Hel", "lo", "!"]))
    client = await openai_sdk(harness)
    stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"], stream=True)
    chunks = [chunk async for chunk in stream]
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert deltas == ["Hel", "lo", "!"]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The provider was asked for usage (the budget settles on it), but this client did not ask.
    assert harness.provider.last_request.json["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)


async def test_a_stream_that_asks_for_usage_gets_it(harness: Harness) -> None:
    harness.provider.enqueue(FakeReply(chunks=["a", "b"]))
    client = await openai_sdk(harness)
    stream = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=HELLO["messages"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


async def test_models_lists_what_a_client_may_name(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(allowed_models=("gpt-4.1-nano",))
    client = await openai_sdk(harness)
    assert [model.id async for model in client.models.list()] == ["gpt-4.1-mini", "gpt-4.1-nano"]
    harness.provider.enqueue(FakeReply(text="small"))
    await client.chat.completions.create(model="gpt-4.1-nano", messages=HELLO["messages"])
    assert harness.provider.last_request.json["model"] == "gpt-4.1-nano"


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"model": "gpt-4o"}, id="a-model-not-offered"),
        pytest.param({"n": 2}, id="two-choices"),
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, id="tools"),
        pytest.param({"service_tier": "priority"}, id="a-dearer-tier"),
        pytest.param({"temperature": 5}, id="temperature"),
        pytest.param({"messages": []}, id="no-messages"),
    ],
)
async def test_a_malformed_request_is_a_bad_request_error(harness: Harness, arguments: dict[str, Any]) -> None:
    client = await openai_sdk(harness)
    request: dict[str, Any] = {"model": "gpt-4.1-mini", **HELLO, **arguments}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**request)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["code"] == "InvalidRequest"
    assert body["message"]
    assert harness.provider.requests == []


async def test_a_body_that_is_not_json_is_a_400_in_openais_shape(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/chat/completions", content=b"{nope", headers={"authorization": f"Bearer {await harness.token()}"}
    )
    assert assert_openai_error(response, 400, "InvalidRequest")["type"] == "invalid_request_error"


def _expired() -> str:
    now = int(time.time())
    claims = {"iss": "llmguard", "aud": "llmguard", "iat": now - 3600, "exp": now - 600, "jti": "old"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("token", ["not-a-jwt", _expired()], ids=["bad", "expired"])
async def test_a_bad_or_expired_token_is_an_authentication_error(harness: Harness, token: str) -> None:
    client = await openai_sdk(harness, token)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "Unauthorized"
    assert harness.provider.requests == []


async def test_a_forced_429_is_a_rate_limit_error_with_retry_headers(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(rate_limit_max=1)
    client = await openai_sdk(harness)
    await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    headers = caught.value.response.headers
    seconds = int(headers["retry-after"])
    assert seconds >= 1
    assert headers["retry-after-ms"] == str(seconds * 1000)
    assert headers["ratelimit-policy"].startswith('"chat";q=1;')
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "RateLimitExceeded"


async def test_one_request_limit_for_api_chat_and_v1(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(rate_limit_max=1)
    assert (await harness.chat(HELLO)).status_code == 200
    with pytest.raises(openai.RateLimitError):
        await (await openai_sdk(harness)).chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])


async def test_the_monthly_cap_applies_and_settles_from_the_usage_chunk(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(monthly_token_cap=150, max_tokens=100)
    client = await openai_sdk(harness)
    prompt = estimate_prompt_tokens(message["content"] for message in HELLO["messages"])
    harness.provider.enqueue(FakeReply(chunks=["x"] * 50))
    stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"], stream=True)
    async for _ in stream:
        pass
    # Settled to the usage chunk (prompt + 50), not the reservation (prompt + 100): 91 left.
    harness.provider.enqueue(FakeReply(chunks=["y"] * 100))
    await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    assert harness.provider.last_request.json["max_completion_tokens"] == 150 - (prompt + 50) - prompt
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "TokenCapReached"


@pytest.mark.parametrize("allowed", [True, False])
async def test_the_system_prompt_policy(harness_factory: Factory, allowed: bool) -> None:
    harness: Harness = await harness_factory(system_prompt="Server rules.", allow_client_system=allowed)
    client = await openai_sdk(harness)
    messages: Any = [{"role": "developer", "content": "Client rules."}, *HELLO["messages"]]
    if not allowed:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gpt-4.1-mini", messages=messages)
        refusal = (refused.value.status_code, refused.value.code, refused.value.param)
        assert refusal == (400, "InvalidRequest", "messages")
        assert harness.provider.requests == []
        return
    await client.chat.completions.create(model="gpt-4.1-mini", messages=messages)
    sent = harness.provider.last_request.json["messages"]
    assert sent[0] == {"role": "system", "content": "Client rules."}
    assert {"role": "system", "content": "Server rules."} not in sent


async def test_a_stream_cut_by_the_provider_is_an_api_error_for_the_sdk(harness: Harness) -> None:
    harness.provider.enqueue(FakeReply(chunks=["a", "b", "c"], cut_after=1))
    client = await openai_sdk(harness)
    stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"], stream=True)
    received: list[Any] = []

    async def read_all() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    assert "ended before the reply was complete" in str(caught.value)
    assert received  # what came before the failure was delivered


async def test_provider_errors_keep_their_status_and_never_relay_the_key(harness: Harness) -> None:
    harness.provider.enqueue(FakeReply.failure(401, code="invalid_api_key"))
    client = await openai_sdk(harness)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    assert caught.value.status_code == 502
    assert KEY[:12] not in json.dumps(caught.value.body)
    assert "Incorrect API key" not in json.dumps(caught.value.body)


async def test_the_sdks_preflight_and_refusals_work_for_browsers(harness: Harness) -> None:
    answer = await harness.client.options(
        "/v1/chat/completions",
        headers=preflight("authorization,content-type,x-stainless-os,x-stainless-retry-count"),
    )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    allowed = {name.strip() for name in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-stainless-os", "x-stainless-retry-count"} <= allowed

    refused = await harness.client.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(refused, 401, "Unauthorized")
    exposed = refused.headers["access-control-expose-headers"]
    for name in ("retry-after", "retry-after-ms", "x-request-id"):
        assert name in exposed


async def test_a_forbidden_origin_is_refused_in_openais_shape(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", headers={"origin": "https://evil.example"})
    assert assert_openai_error(response, 403, "Forbidden")["type"] == "permission_error"


async def test_unknown_v1_paths_and_methods_answer_in_openais_shape(harness: Harness) -> None:
    token = await harness.token()
    headers = {"authorization": f"Bearer {token}"}
    missing = await harness.client.get("/v1/embeddings", headers=headers)
    assert_openai_error(missing, 404, "NotFound")
    wrong = await harness.client.get("/v1/chat/completions", headers=headers)
    assert_openai_error(wrong, 405, "MethodNotAllowed")


async def test_requests_with_httpx_directly_get_the_same_answer(harness: Harness) -> None:
    # What the browser's fetch sends: no SDK involved.
    harness.provider.enqueue(FakeReply(text="plain"))
    response = await harness.client.post(
        "/v1/chat/completions",
        json={**HELLO, "model": "gpt-4.1-mini"},
        headers={"authorization": f"Bearer {await harness.token()}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    # The same completion the SDK reads, in the shape it checks.
    completion = ChatCompletion.model_validate(body, strict=True)
    assert (completion.object, completion.model) == ("chat.completion", "gpt-4.1-mini")
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "plain", "stop")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 1
