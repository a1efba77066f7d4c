from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import strategies
from harness import Harness, assert_error
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope

from llmguard import InvalidRequest, PayloadTooLarge
from llmguard._chat_request import MAX_DEPTH, ChatMessage, ChatRequest, parse_chat_request, parse_json, read_body
from llmguard._chat_service import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
USER_HI = {"role": "user", "content": "Hi"}


def http_scope(headers: dict[str, str] | None = None) -> Scope:
    raw = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": "/api/chat", "headers": raw}


def receiver(*messages: Message) -> tuple[Receive, list[Message]]:
    """A receive callable that plays ``messages`` and remembers which were taken."""
    pending = list(messages)
    taken: list[Message] = []

    async def receive() -> Message:
        message = pending.pop(0)
        taken.append(message)
        return message

    return receive, taken


def body(chunk: bytes, *, more: bool = False) -> Message:
    return {"type": "http.request", "body": chunk, "more_body": more}


# -- read_body ------------------------------------------------------------------------


async def test_read_body_joins_chunks() -> None:
    receive, _ = receiver(body(b'{"mess', more=True), body(b'ages": []', more=True), body(b"}"))
    assert await read_body(http_scope(), receive, max_bytes=100) == b'{"messages": []}'


async def test_read_body_accepts_a_body_of_exactly_max_bytes() -> None:
    receive, _ = receiver(body(b"x" * 10))
    assert await read_body(http_scope({"content-length": "10"}), receive, max_bytes=10) == b"x" * 10


async def test_read_body_refuses_a_declared_oversize_before_reading_anything() -> None:
    receive, taken = receiver(body(b"x" * 11))
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(http_scope({"content-length": "11"}), receive, max_bytes=10)
    assert caught.value.status_code == 413
    assert "10 bytes" in caught.value.message
    assert taken == []


async def test_read_body_stops_reading_an_undeclared_oversize_at_the_limit() -> None:
    receive, taken = receiver(*(body(b"x" * 4, more=True) for _ in range(10)), body(b""))
    with pytest.raises(PayloadTooLarge):
        await read_body(http_scope(), receive, max_bytes=10)
    assert len(taken) == 3  # 4 + 4 + 4 > 10: the rest is never read


async def test_read_body_catches_a_body_longer_than_its_content_length() -> None:
    receive, _ = receiver(body(b"x" * 8, more=True), body(b"x" * 8))
    with pytest.raises(PayloadTooLarge):
        await read_body(http_scope({"content-length": "5"}), receive, max_bytes=10)


@pytest.mark.parametrize("length", ["abc", "1e3", "", "0x10"])
async def test_read_body_refuses_a_content_length_that_is_not_a_number(length: str) -> None:
    receive, _ = receiver(body(b"{}"))
    with pytest.raises(InvalidRequest) as caught:
        await read_body(http_scope({"content-length": length}), receive, max_bytes=10)
    assert caught.value.status_code == 400
    assert "Content-Length" in caught.value.message


async def test_read_body_refuses_a_client_that_went_away() -> None:
    receive, _ = receiver(body(b"{", more=True), {"type": "http.disconnect"})
    with pytest.raises(InvalidRequest) as caught:
        await read_body(http_scope(), receive, max_bytes=10)
    assert caught.value.status_code == 400


# -- parse_json -----------------------------------------------------------------------


def test_parse_json_returns_the_document() -> None:
    assert parse_json(b'{"messages": [{"role": "user", "content": "\\u00e9"}]}') == {
        "messages": [{"role": "user", "content": "é"}]
    }


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b" \r\n\t ", id="whitespace"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"hello", id="text"),
        pytest.param(b'{"temperature": NaN}', id="NaN"),
        pytest.param(b'{"temperature": Infinity}', id="Infinity"),
        pytest.param(b'{"temperature": -Infinity}', id="-Infinity"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b'{"max_tokens": ' + b"9" * 5000 + b"}", id="5000-digit-integer"),
        pytest.param(b'{"a": "\xff"}', id="not-utf8"),
    ],
)
def test_parse_json_refuses_what_is_not_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json(raw)
    assert caught.value.status_code == 400
    assert caught.value.message


# -- parse_chat_request ---------------------------------------------------------------


def test_parse_plain_messages() -> None:
    data = {
        "messages": [USER_HI, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
        "system": "Be brief.",
        "stream": True,
        "max_tokens": 50,
        "temperature": 1,
    }
    assert parse_chat_request(data, server_model=MODEL) == ChatRequest(
        messages=(
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello!"),
            ChatMessage("user", "Bye"),
        ),
        system="Be brief.",
        stream=True,
        max_tokens=50,
        temperature=1.0,
    )


def test_parse_defaults() -> None:
    request = parse_chat_request({"messages": [USER_HI]}, server_model=MODEL)
    assert request == ChatRequest(messages=(ChatMessage("user", "Hi"),))
    assert request.stream is False


def test_parse_ai_sdk_parts_keeps_text_and_drops_what_carries_none() -> None:
    message = {
        "id": "m1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "thinking…"},
            {"type": "text", "text": "Hel"},
            {"type": "source-url", "url": "https://example.com"},
            {"type": "data-weather", "data": {"temp": 20}},
            {"type": "tool-search", "state": "output-available"},
            {"type": "text", "text": "lo"},
        ],
    }
    request = parse_chat_request(
        {"id": "chat1", "messages": [message], "trigger": "submit-message"}, server_model=MODEL
    )
    assert request.messages == (ChatMessage("assistant", "Hello"),)


def test_parse_accepts_the_server_model_and_one_choice() -> None:
    request = parse_chat_request({"messages": [USER_HI], "model": MODEL, "n": 1}, server_model=MODEL)
    assert request.messages == (ChatMessage("user", "Hi"),)


def test_parse_treats_an_empty_system_as_none() -> None:
    assert parse_chat_request({"messages": [USER_HI], "system": ""}, server_model=MODEL).system is None


@pytest.mark.parametrize(("temperature", "expected"), [(0, 0.0), (2, 2.0), (0.7, 0.7)])
def test_parse_temperature_bounds_are_inclusive(temperature: float, expected: float) -> None:
    request = parse_chat_request({"messages": [USER_HI], "temperature": temperature}, server_model=MODEL)
    assert request.temperature == expected


def messages_with(message: object) -> dict[str, Any]:
    return {"messages": [message]}


SHAPE_ERRORS = [
    pytest.param([USER_HI], None, id="array-body"),
    pytest.param("hello", None, id="string-body"),
    pytest.param({}, "messages", id="messages-missing"),
    pytest.param({"messages": []}, "messages", id="messages-empty"),
    pytest.param({"messages": "Hi"}, "messages", id="messages-not-a-list"),
    pytest.param({"messages": {"role": "user", "content": "Hi"}}, "messages", id="messages-an-object"),
    pytest.param(messages_with("Hi"), "messages[0]", id="message-not-an-object"),
    pytest.param(messages_with({"role": "system", "content": "x"}), "messages[0].role", id="role-system"),
    pytest.param(messages_with({"role": "developer", "content": "x"}), "messages[0].role", id="role-developer"),
    pytest.param(messages_with({"role": "tool", "content": "x"}), "messages[0].role", id="role-tool"),
    pytest.param(messages_with({"role": "USER", "content": "x"}), "messages[0].role", id="role-uppercase"),
    pytest.param(messages_with({"content": "x"}), "messages[0].role", id="role-missing"),
    pytest.param(messages_with({"role": ["user"], "content": "x"}), "messages[0].role", id="role-a-list"),
    pytest.param(messages_with({"role": "user", "content": 42}), "messages[0].content", id="content-number"),
    pytest.param(
        messages_with({"role": "user", "content": [{"type": "text", "text": "x"}]}),
        "messages[0].content",
        id="content-openai-parts",
    ),
    pytest.param(messages_with({"role": "user"}), "messages[0]", id="no-content-no-parts"),
    pytest.param(messages_with({"role": "user", "parts": "Hi"}), "messages[0].parts", id="parts-not-a-list"),
    pytest.param(
        messages_with({"role": "user", "parts": [{"type": "file", "url": "data:,x", "mediaType": "text/plain"}]}),
        "messages[0].parts[0]",
        id="part-file",
    ),
    pytest.param(messages_with({"role": "user", "parts": ["Hi"]}), "messages[0].parts[0]", id="part-not-object"),
    pytest.param(messages_with({"role": "user", "parts": [{"text": "x"}]}), "messages[0].parts[0]", id="part-no-type"),
    pytest.param(
        messages_with({"role": "user", "parts": [{"type": "text", "text": 1}]}),
        "messages[0].parts[0].text",
        id="part-text-number",
    ),
    pytest.param({"messages": [USER_HI], "system": 1}, "system", id="system-number"),
    pytest.param({"messages": [USER_HI], "stream": "true"}, "stream", id="stream-string"),
    pytest.param({"messages": [USER_HI], "stream": 1}, "stream", id="stream-one"),
    pytest.param({"messages": [USER_HI], "max_tokens": 0}, "max_tokens", id="max_tokens-0"),
    pytest.param({"messages": [USER_HI], "max_tokens": -5}, "max_tokens", id="max_tokens-negative"),
    pytest.param({"messages": [USER_HI], "max_tokens": "10"}, "max_tokens", id="max_tokens-string"),
    pytest.param({"messages": [USER_HI], "max_tokens": True}, "max_tokens", id="max_tokens-true"),
    pytest.param({"messages": [USER_HI], "max_tokens": 10.5}, "max_tokens", id="max_tokens-float"),
    pytest.param({"messages": [USER_HI], "temperature": 3}, "temperature", id="temperature-3"),
    pytest.param({"messages": [USER_HI], "temperature": -0.1}, "temperature", id="temperature-negative"),
    pytest.param({"messages": [USER_HI], "temperature": "1"}, "temperature", id="temperature-string"),
    pytest.param({"messages": [USER_HI], "temperature": True}, "temperature", id="temperature-true"),
    pytest.param({"messages": [USER_HI], "temperature": float("inf")}, "temperature", id="temperature-inf"),
    pytest.param({"messages": [USER_HI], "temperature": float("nan")}, "temperature", id="temperature-nan"),
    pytest.param({"messages": [USER_HI], "temperature": 10**400}, "temperature", id="temperature-huge-int"),
    pytest.param({"messages": [USER_HI], "model": "gpt-4o"}, "model", id="model-other"),
    pytest.param({"messages": [USER_HI], "n": 2}, "n", id="n-2"),
]


@pytest.mark.parametrize(("data", "param"), SHAPE_ERRORS)
def test_parse_refuses_a_wrong_shape_naming_the_field(data: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(data, server_model=MODEL)
    assert caught.value.status_code == 422
    assert caught.value.param == param
    assert caught.value.message


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param(
            {"messages": [USER_HI, {"role": "user", "content": "\ud800"}]}, "messages[1].content", id="content"
        ),
        pytest.param({"messages": [USER_HI], "system": "\udfff"}, "system", id="system"),
        pytest.param(
            {"messages": [{"role": "user", "parts": [{"type": "text", "text": "a\ud800"}]}]},
            "messages[0].parts[0].text",
            id="part-text",
        ),
        pytest.param({"messages": [USER_HI], "id": "\udc00"}, "id", id="unused-field"),
        pytest.param({"messages": [USER_HI], "metadata": {"\ud800": 1}}, "metadata (a key)", id="a-key"),
    ],
)
def test_a_lone_surrogate_anywhere_is_refused_with_400_naming_the_field(data: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json(json.dumps(data).encode())
    assert (caught.value.status_code, caught.value.param) == (400, param)
    # The message can be logged and sent: it quotes no part of the bad string.
    caught.value.message.encode("utf-8")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 960, 5000])
def test_nesting_past_the_limit_is_refused_with_400(depth: int) -> None:
    body = b'{"messages": [], "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InvalidRequest) as caught:
        parse_json(body)
    assert caught.value.status_code == 400


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 2
    data = parse_json(b'{"x": ' + b"[" * depth + b"]" * depth + b"}")
    assert set(data) == {"x"}


def test_an_unsupported_part_type_is_named_but_cut_short() -> None:
    data = messages_with({"role": "user", "parts": [{"type": "x" * 10_000}]})
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(data, server_model=MODEL)
    assert "xxxx" in caught.value.message
    assert len(caught.value.message) < 200


# -- through the app ------------------------------------------------------------------

VALID = b'{"messages":[{"role":"user","content":"Hi"}]'


def raw(text: str) -> bytes:
    return text.encode()


MALFORMED = [
    pytest.param(b"this is not json", 400, None, id="not-json"),
    pytest.param(b"", 400, None, id="empty-body"),
    pytest.param(b"[1, 2]", 422, None, id="json-array"),
    pytest.param(raw('{"stream": true}'), 422, "messages", id="messages-missing"),
    pytest.param(raw('{"messages": []}'), 422, "messages", id="messages-empty"),
    pytest.param(raw('{"messages": "Hi"}'), 422, "messages", id="messages-not-a-list"),
    pytest.param(raw('{"messages": ["Hi"]}'), 422, "messages[0]", id="message-not-an-object"),
    pytest.param(raw('{"messages": [{"role": "system", "content": "x"}]}'), 422, "messages[0].role", id="role-system"),
    pytest.param(
        raw('{"messages": [{"role": "developer", "content": "x"}]}'), 422, "messages[0].role", id="role-developer"
    ),
    pytest.param(raw('{"messages": [{"role": "tool", "content": "x"}]}'), 422, "messages[0].role", id="role-tool"),
    pytest.param(
        raw('{"messages": [{"role": "user", "content": 42}]}'), 422, "messages[0].content", id="content-number"
    ),
    pytest.param(
        raw(
            '{"messages": [{"role": "user", "parts": [{"type": "file", "url": "data:,x", "mediaType": "text/plain"}]}]}'
        ),
        422,
        "messages[0].parts[0]",
        id="part-file",
    ),
    pytest.param(
        raw('{"messages": [{"role": "user", "parts": {"type": "text", "text": "x"}}]}'),
        422,
        "messages[0].parts",
        id="parts-not-a-list",
    ),
    pytest.param(VALID + b', "stream": "true"}', 422, "stream", id="stream-string"),
    pytest.param(VALID + b', "max_tokens": 0}', 422, "max_tokens", id="max_tokens-0"),
    pytest.param(VALID + b', "max_tokens": "10"}', 422, "max_tokens", id="max_tokens-string"),
    pytest.param(VALID + b', "max_tokens": true}', 422, "max_tokens", id="max_tokens-true"),
    pytest.param(VALID + b', "temperature": 3}', 422, "temperature", id="temperature-3"),
    pytest.param(VALID + b', "temperature": NaN}', 400, None, id="temperature-NaN-literal"),
    pytest.param(VALID + b', "temperature": ' + b"1" * 400 + b"}", 422, "temperature", id="temperature-huge-int"),
    pytest.param(VALID + b', "model": "gpt-4o"}', 422, "model", id="model-other"),
    pytest.param(VALID + b', "n": 2}', 422, "n", id="n-2"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages[0].content", id="lone-surrogate"
    ),
    pytest.param(b"[" * 100_000, 400, None, id="deep-nesting"),
    pytest.param(VALID + b', "max_tokens": ' + b"7" * 5000 + b"}", 400, None, id="5000-digit-integer"),
]


@pytest.mark.parametrize(("content", "status", "param"), MALFORMED)
async def test_malformed_chat_is_refused_before_the_provider(
    harness: Harness, content: bytes, status: int, param: str | None
) -> None:
    response = await harness.chat(content, headers={"content-type": "application/json"})
    assert assert_error(response, status, "InvalidRequest").get("param") == param
    assert harness.provider.requests == []


@pytest.mark.parametrize(
    ("settings", "content", "headers", "status", "code", "says"),
    [
        pytest.param(
            {}, VALID + b"}", {"content-length": "lots"}, 400, "InvalidRequest", "Content-Length", id="bad-length"
        ),
        pytest.param(
            {"max_body_bytes": 200},
            json.dumps({"messages": [{"role": "user", "content": "x" * 300}]}).encode(),
            {"content-type": "application/json"},
            413,
            "PayloadTooLarge",
            "200 bytes",
            id="oversized-with-content-length",
        ),
    ],
)
async def test_a_body_refused_for_its_content_length_never_reaches_the_provider(
    harness_factory: Callable[..., Any],
    settings: dict[str, Any],
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    says: str,
) -> None:
    harness: Harness = await harness_factory(**settings)
    response = await harness.chat(content, headers=headers)
    assert says in assert_error(response, status, code)["message"]
    assert harness.provider.requests == []


async def test_oversized_chunked_body_is_refused(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(max_body_bytes=200)
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(50):
            sent.append(1)
            yield b"x" * 50
        yield b'"}]}'

    token = await harness.token()
    response = await harness.client.post(
        "/api/chat", content=chunks(), headers={"authorization": f"Bearer {token}", "content-type": "application/json"}
    )
    assert response.request.headers.get("content-length") is None
    assert "200 bytes" in assert_error(response, 413, "PayloadTooLarge")["message"]
    assert len(sent) < 50  # the server stopped reading at the limit
    assert harness.provider.requests == []


async def test_chunked_body_under_the_limit_is_accepted(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(max_body_bytes=200)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", '
        yield b'"content": "Hi"}]}'

    token = await harness.token()
    response = await harness.client.post("/api/chat", content=chunks(), headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert harness.provider.last_request.json["messages"][-1] == USER_HI


async def test_ai_sdk_use_chat_body_is_accepted(harness: Harness) -> None:
    body = {
        "id": "chat_1",
        "trigger": "submit-message",
        "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
            {
                "id": "m2",
                "role": "assistant",
                "parts": [{"type": "step-start"}, {"type": "text", "text": "Hello! How can I help?"}],
            },
            {"id": "m3", "role": "user", "parts": [{"type": "text", "text": "Tell me a joke"}, {"type": "step-start"}]},
        ],
    }
    response = await harness.chat(body)
    assert response.status_code == 200, response.text
    # useChat never asks for a stream, and reads the reply as one: the AI SDK's shape streams.
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert '"type":"text-delta"' in response.text
    assert harness.provider.last_request.json["stream"] is True
    sent = harness.provider.last_request.json["messages"]
    assert [m for m in sent if m["role"] != "system"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert all(set(m) == {"role", "content"} for m in sent)
    assert "trigger" not in harness.provider.last_request.json


# -- properties (hypothesis): any body is parsed, or refused with a 4xx naming what is wrong ----


@settings(max_examples=300)
@given(body=st.one_of(strategies.bodies.map(strategies.encoded), st.binary(max_size=200)))
def test_any_body_is_json_or_a_400(body: bytes) -> None:
    result = strategies.outcome(lambda: parse_json(body))
    if isinstance(result, InvalidRequest):
        assert result.status_code == 400
        result.message.encode("utf-8")  # it can be logged and sent


@settings(max_examples=300)
@given(data=strategies.bodies)
def test_any_chat_body_is_validated_or_refused_naming_the_field(data: Any) -> None:
    def parse() -> ChatRequest:
        return parse_chat_request(parse_json(strategies.encoded(data)), server_model=MODEL)

    result = strategies.outcome(parse)
    if isinstance(result, InvalidRequest):
        assert result.status_code in (400, 422)
        assert result.message
        json.dumps({"message": result.message, "param": result.param}, ensure_ascii=False).encode("utf-8")
        return
    assert isinstance(result, ChatRequest)
    assert result.messages
    for message in result.messages:
        assert message.role in ("user", "assistant")
        message.content.encode("utf-8")
    assert result.model is None  # only the server's model, which it leaves unnamed
    assert result.max_tokens is None or result.max_tokens >= 1
    assert result.temperature is None or 0 <= result.temperature <= 2
