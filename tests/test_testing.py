from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from harness import HELLO as CHAT
from harness import KEY, sse_events

from llmguard.testing import FakeProvider, FakeReply, demo_reply

BASE_URL = "https://fake.example/v1"
HELLO: dict[str, Any] = {"model": "gpt-4.1-mini", **CHAT}  # in OpenAI's shape: the model is named
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
async def client(provider: FakeProvider) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=provider.transport(), base_url=BASE_URL, headers=AUTH) as client:
        yield client


@pytest.fixture
async def asgi_client(provider: FakeProvider) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as client:
        yield client


@pytest.mark.parametrize("via", ["transport", "asgi"])
async def test_json_completion_in_openai_shape(
    client: httpx.AsyncClient, asgi_client: httpx.AsyncClient, via: str
) -> None:
    chosen = client if via == "transport" else asgi_client
    response = await chosen.post("/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-4.1-mini"
    assert isinstance(data["id"], str)
    assert isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == demo_reply(HELLO["messages"])
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] > 0


async def test_scripted_text_and_finish_reason(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(text="Cut short", finish_reason="length"))
    data = (await client.post("/chat/completions", json=HELLO)).json()
    assert data["choices"][0]["message"]["content"] == "Cut short"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2


async def test_usage_can_be_left_out(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(text="Hi", usage=False), FakeReply(chunks=["Hi"], usage=False))
    assert "usage" not in (await client.post("/chat/completions", json=HELLO)).json()
    streamed = await client.post(
        "/chat/completions", json={**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert not [e for e in sse_events(streamed.text) if isinstance(e, dict) and e.get("usage")]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("via", ["transport", "asgi"])
async def test_streamed_completion_in_openai_shape(
    client: httpx.AsyncClient, asgi_client: httpx.AsyncClient, provider: FakeProvider, include_usage: bool, via: str
) -> None:
    provider.enqueue(FakeReply(chunks=["Hel", "lo"]))
    body = {**HELLO, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = await (client if via == "transport" else asgi_client).post("/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(d for d in deltas if d) == "Hello"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    usage_chunks = [c for c in chunks if "usage" in c]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0] is chunks[-1]
        assert usage_chunks[0]["choices"] == []
        assert usage_chunks[0]["usage"]["completion_tokens"] == 2
    else:
        assert usage_chunks == []


async def test_requests_are_recorded(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    await client.post("/chat/completions", json=HELLO, headers={"x-trace": "one"})
    await client.post("/chat/completions", json={**HELLO, "temperature": 0.5})
    assert len(provider.requests) == 2
    first, second = provider.requests
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.json == HELLO
    assert first.headers["x-trace"] == "one"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.finished
    assert second.json["temperature"] == 0.5
    assert provider.last_request is second
    provider.reset()
    assert provider.requests == []


async def test_replies_are_served_in_enqueue_order(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(text="first"), FakeReply.failure(503, retry_after=2))
    provider.enqueue(FakeReply(text="third"))
    replies = [await client.post("/chat/completions", json=HELLO) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 503, 200, 200]
    assert replies[0].json()["choices"][0]["message"]["content"] == "first"
    assert replies[1].headers["retry-after"] == "2"
    assert replies[1].json()["error"]["type"] == "invalid_request_error"
    assert replies[2].json()["choices"][0]["message"]["content"] == "third"
    assert replies[3].json()["choices"][0]["message"]["content"] == demo_reply(HELLO["messages"])


async def test_failure_carries_openai_error_fields(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply.failure(429, "Slow down", type="requests", code="rate_limit_exceeded"))
    response = await client.post("/chat/completions", json=HELLO)
    assert response.status_code == 429
    assert response.json() == {
        "error": {"message": "Slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }


async def test_wrong_key_gets_a_401_quoting_it_masked(provider: FakeProvider) -> None:
    wrong = "sk-wrong-ABCDEFGHIJKLMNOP1234"
    async with httpx.AsyncClient(transport=provider.transport(), base_url=BASE_URL) as client:
        response = await client.post("/chat/completions", json=HELLO, headers={"authorization": f"Bearer {wrong}"})
        missing = await client.post("/chat/completions", json=HELLO)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided: sk-wrong")
    assert "1234" in error["message"]
    assert wrong not in error["message"]
    assert "ABCDEFGHIJKLMNOP" not in error["message"]
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert provider.requests[0].finished


async def test_reply_function_writes_the_default_answer() -> None:
    echo = FakeProvider(reply=lambda messages: f"{len(messages)} messages")
    async with httpx.AsyncClient(transport=echo.transport(), base_url=BASE_URL) as client:
        response = await client.post("/chat/completions", json=HELLO)
    assert response.json()["choices"][0]["message"]["content"] == "1 messages"


async def test_no_key_configured_accepts_any_key() -> None:
    open_provider = FakeProvider()
    async with httpx.AsyncClient(transport=open_provider.transport(), base_url=BASE_URL) as client:
        response = await client.post("/chat/completions", json=HELLO, headers={"authorization": "Bearer anything"})
    assert response.status_code == 200


@pytest.mark.parametrize("via", ["transport", "asgi"])
async def test_models_lists_the_model(
    client: httpx.AsyncClient, asgi_client: httpx.AsyncClient, provider: FakeProvider, via: str
) -> None:
    chosen = client if via == "transport" else asgi_client
    response = await chosen.get("/models")
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [{"id": "gpt-4.1-mini", "object": "model", "created": 0, "owned_by": "fake"}],
    }
    assert provider.requests == []


async def test_unknown_paths_are_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/embeddings", json={"input": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_a_body_without_messages_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b"not json")
    assert response.status_code == 400


async def test_transport_keeps_streams_streaming(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=["one ", "two ", "three ", "four"]))
    seen_at_first_delta: int | None = None
    texts: list[str] = []
    async with client.stream("POST", "/chat/completions", json={**HELLO, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content")
            if delta:
                texts.append(delta)
                if seen_at_first_delta is None:
                    seen_at_first_delta = provider.last_request.deltas_sent
    assert texts == ["one ", "two ", "three ", "four"]
    # The first delta reached the client before the provider had produced the rest.
    assert seen_at_first_delta is not None
    assert seen_at_first_delta <= 1
    assert provider.last_request.deltas_sent == 4
    assert provider.last_request.finished


async def test_cut_stream_has_no_finish_and_no_done(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=["a", "b", "c"], cut_after=1))
    response = await client.post("/chat/completions", json={**HELLO, "stream": True})
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None]
    assert provider.last_request.deltas_sent == 1


async def test_abrupt_stream_drops_the_connection(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=["a", "b", "c"], cut_after=2, abrupt=True))
    received: list[str] = []

    async def read_all() -> None:
        async with client.stream("POST", "/chat/completions", json={**HELLO, "stream": True}) as response:
            async for line in response.aiter_lines():
                received.append(line)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_all()
    assert sum(1 for line in received if '"content": "' in line) == 3  # role chunk + two deltas


def test_demo_reply_echoes_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "  what\nnow  "},
    ]
    reply = demo_reply(messages)
    assert "You said: “what now”" in reply
    assert "no model was called" in reply
    assert "You said" not in demo_reply([{"role": "assistant", "content": "hi"}])
    assert "..." in demo_reply([{"role": "user", "content": "x" * 500}])


NESTED_960 = (
    '{"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hi"}], "response_format": '
    + '{"a": ' * 960
    + "1"
    + "}" * 961
)


async def test_a_body_nested_960_deep_is_a_400_not_a_crash(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    response = await client.post("/chat/completions", content=NESTED_960, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert provider.last_request.json is None  # recorded, unreadable
    assert provider.billed_tokens == 0


async def test_served_over_asgi_a_body_nested_960_deep_is_a_400_too(
    asgi_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await asgi_client.post(
        "/chat/completions", content=NESTED_960, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_billing_follows_what_a_provider_bills(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=["a", "b", "c"], reasoning_tokens=5))
    schema = {"type": "json_schema", "json_schema": {"name": "x", "description": "word " * 100}}
    response = await client.post("/chat/completions", json={**HELLO, "response_format": schema, "max_tokens": 6})
    usage = response.json()["usage"]
    # The schema is billed as input; hidden and visible output together stop at the output cap.
    assert usage["prompt_tokens"] > 100
    assert usage["completion_tokens"] == 6
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert response.json()["choices"][0]["message"]["content"] == "a"
    assert provider.last_request.billed_tokens == usage["total_tokens"]
