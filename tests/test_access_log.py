from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    PEER,
    SECRET,
    Harness,
    access_records,
    assert_error,
    assert_no_secrets,
    fields_of,
)
from starlette.types import Message, Receive, Scope, Send

from llmguard._access_log import AccessLog, JSONFormatter, TextFormatter
from llmguard._state import Usage, request_state
from llmguard.testing import FakeReply

INJECTION = "https://evil.example\r\n2026-01-01T00:00:00.000Z INFO llmguard.access 1.2.3.4 POST /api/chat 200"


# -- through the app ------------------------------------------------------------------


async def test_one_record_per_request_with_its_fields(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness.provider.enqueue(FakeReply(chunks=["Hi", " there"]))
    token = await harness.token()
    response = await harness.chat(HELLO, token=token)
    assert response.status_code == 200

    token_record, chat_record = access_records(caplog)
    assert chat_record.levelno == logging.INFO
    fields = fields_of(chat_record)
    usage = response.json()["usage"]
    assert fields["request_id"] == response.headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]{16}", fields["request_id"])
    assert fields["client_ip"] == PEER
    assert fields["method"] == "POST"
    assert fields["path"] == "/api/chat"
    assert fields["status"] == 200
    assert isinstance(fields["latency_ms"], float)
    assert fields["latency_ms"] >= 0
    assert fields["origin"] == ORIGIN
    assert fields["model"] == "gpt-4.1-mini"
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (usage["prompt_tokens"], 2)
    assert fields["tokens_estimated"] is False
    assert fields["error"] is None
    line = TextFormatter().format(chat_record)
    assert f"{PEER} POST /api/chat 200" in line
    assert f"tokens={usage['prompt_tokens']}+2" in line
    assert "model=gpt-4.1-mini" in line
    assert f"id={fields['request_id']}" in line

    token_fields = fields_of(token_record)
    assert token_fields["path"] == "/api/token"
    assert token_fields["model"] is None
    assert token_fields["prompt_tokens"] is None
    assert token_fields["request_id"] != fields["request_id"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error"),
    [
        pytest.param({"headers": {"origin": "https://evil.example"}}, 403, "Forbidden", id="forbidden-origin"),
        pytest.param({"headers": {"authorization": "Bearer nope"}}, 401, "Unauthorized", id="bad-token"),
        pytest.param({"content": b"{not json"}, 400, "InvalidRequest", id="malformed-body"),
    ],
)
async def test_refusals_are_logged_with_their_code(
    harness: Harness, caplog: pytest.LogCaptureFixture, request_kwargs: dict[str, Any], status: int, error: str
) -> None:
    token = await harness.token()
    caplog.set_level(logging.INFO, logger="llmguard.access")
    caplog.clear()
    headers = {"authorization": f"Bearer {token}", **request_kwargs.get("headers", {})}
    content = request_kwargs.get("content", json.dumps(HELLO).encode())
    response = await harness.client.post("/api/chat", content=content, headers=headers)
    body = assert_error(response, status, error)
    [record] = access_records(caplog)
    fields = fields_of(record)
    assert fields["status"] == status
    assert fields["error"] == error
    assert fields["request_id"] == response.headers["x-request-id"] == body["request_id"]
    assert f"error={error}" in TextFormatter().format(record)


async def test_upstream_failure_mid_stream_is_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness.provider.enqueue(FakeReply(chunks=["a", "b", "c"], cut_after=1, usage=False))
    response = await harness.chat({**HELLO, "stream": True})
    assert response.status_code == 200
    fields = fields_of(access_records(caplog)[-1])
    assert fields["status"] == 200
    assert fields["error"] == "UpstreamError"
    assert fields["tokens_estimated"] is True
    assert fields["completion_tokens"] >= 1


async def test_crlf_in_origin_stays_on_one_line(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    response = await harness.client.post("/api/token", headers={"origin": INJECTION})
    assert_error(response, 403, "Forbidden")
    [record] = access_records(caplog)
    text, as_json = TextFormatter().format(record), JSONFormatter().format(record)
    for line in (text, as_json):
        assert "\n" not in line
        assert "\r" not in line
    assert "origin=https://evil.example\\r\\n2026" in text
    assert json.loads(as_json)["origin"].startswith("https://evil.example\\r\\n2026")


# -- AccessLog alone ------------------------------------------------------------------


def inner_app(status: int = 200, *, usage: Usage | None = None, model: str | None = None) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        state.model = model
        state.usage = usage
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def run(
    app: Callable[..., Any], *, headers: dict[str, str] | None = None, path: str = "/api/chat"
) -> list[Message]:
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
        "client": ("198.51.100.9", 4321),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await AccessLog(app)(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    "origin",
    [INJECTION, "https://a.example\nX", "https://a.example\rX", "https://a.example\x00\x1b[31m\x7f"],
    ids=["crlf", "lf", "cr", "other-controls"],
)
async def test_control_characters_in_origin_are_escaped(caplog: pytest.LogCaptureFixture, origin: str) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    await run(inner_app(), headers={"origin": origin})
    [record] = access_records(caplog)
    text = TextFormatter().format(record)
    as_json = JSONFormatter().format(record)
    for line in (text, as_json):
        assert len(line.splitlines()) == 1
        assert not re.search(r"[\x00-\x1f\x7f]", line)
    assert "origin=https://" in text
    assert "\\" in json.loads(as_json)["origin"]


async def test_a_huge_origin_is_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    await run(inner_app(), headers={"origin": "https://" + "a" * 10_000 + ".example"})
    assert len(TextFormatter().format(access_records(caplog)[0])) < 1000


async def test_json_formatter_writes_one_json_object(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    sent = await run(inner_app(201, usage=Usage(12, 40), model="gpt-4.1-mini"), headers={"origin": ORIGIN})
    [record] = access_records(caplog)
    line = JSONFormatter().format(record)
    data = json.loads(line)
    assert data["level"] == "info"
    assert data["logger"] == "llmguard.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert data["message"].startswith("198.51.100.9 POST /api/chat 201 ")
    assert data["client_ip"] == "198.51.100.9"
    assert data["status"] == 201
    assert (data["prompt_tokens"], data["completion_tokens"]) == (12, 40)
    assert data["tokens_estimated"] is False
    assert data["model"] == "gpt-4.1-mini"
    assert data["origin"] == ORIGIN
    start = sent[0]
    assert (b"x-request-id", data["request_id"].encode()) in start["headers"]


async def test_text_formatter_marks_estimated_tokens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    await run(inner_app(usage=Usage(30, 7, estimated=True), model="m"))
    assert " tokens=~30+7" in TextFormatter().format(access_records(caplog)[0])


async def test_latency_is_measured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        time.sleep(0.05)  # noqa: ASYNC251 - a blocking pause is what is being measured
        await inner_app()(scope, receive, send)

    await run(slow)
    assert fields_of(access_records(caplog)[0])["latency_ms"] >= 45


@pytest.mark.crashes_on_purpose
async def test_an_app_that_crashes_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")

    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await run(crash)
    assert fields_of(access_records(caplog)[0])["status"] == 500


async def test_nothing_is_logged_when_the_logger_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llmguard.access")
    sent = await run(inner_app())
    assert access_records(caplog) == []
    assert any(name == b"x-request-id" for name, _ in sent[0]["headers"])


async def test_lifespan_passes_through(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def drop(message: Message) -> None:
        pass

    await AccessLog(app)({"type": "lifespan"}, nothing, drop)
    assert seen == ["lifespan"]
    assert access_records(caplog) == []


# -- no secret in any log line --------------------------------------------------------

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
BEARER_PATTERN = re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
OTHER_KEY = "sk-proj-OTHERkeyXY12ab34cd56ef78gh90"


async def test_no_secret_reaches_any_log_line(
    harness_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "llmguard", "starlette", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(TextFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    tokens: list[str] = []
    try:
        harness: Harness = await harness_factory(upstream_retries=1)
        wrong_key_harness: Harness = await harness_factory(openai_api_key=OTHER_KEY)
        for _ in range(2):
            tokens.append(await harness.token())
        token = tokens[0]
        now = int(time.time())
        claims = {"iss": "llmguard", "aud": "llmguard", "iat": now - 100, "exp": now - 50, "jti": "x"}
        expired = jwt.encode(claims, SECRET, algorithm="HS256")
        forged = jwt.encode({**claims, "exp": now + 600}, "another-secret-of-at-least-32-bytes!!", algorithm="HS256")
        tokens += [expired, forged]

        harness.provider.enqueue(
            FakeReply.failure(401),
            FakeReply.failure(429, retry_after=0),
            FakeReply.failure(429, retry_after=0),
            FakeReply.failure(500, f"internal error near {KEY}", retry_after=0),
            FakeReply.failure(500, retry_after=0),
            FakeReply(chunks=["ok"]),
            FakeReply(chunks=["fine", " thanks"]),
            FakeReply(chunks=["cut", "here"], cut_after=1, abrupt=True),
        )
        statuses = [
            (await harness.chat(HELLO, token=token)).status_code,  # provider 401 quoting the key
            (await harness.chat(HELLO, token=token)).status_code,  # 429 twice: retried, then given up
            (await harness.chat(HELLO, token=token)).status_code,  # 500 twice
            (await harness.chat(HELLO, token=token)).status_code,  # success
            (await harness.chat({**HELLO, "stream": True}, token=token)).status_code,
            (await harness.chat({**HELLO, "stream": True}, token=token)).status_code,  # dropped mid-stream
            (await harness.chat(HELLO, token=expired)).status_code,
            (await harness.chat(HELLO, token=forged)).status_code,
            (await harness.chat(HELLO, token=token + "tampered")).status_code,
            (await harness.chat(HELLO, token="not-a-jwt-at-all")).status_code,
            (await harness.chat(b'{"messages": ', token=token)).status_code,
            (await harness.chat(HELLO, token=token, headers={"origin": "https://evil.example"})).status_code,
            (await harness.chat(HELLO, token=token, headers={"origin": INJECTION})).status_code,
            (await harness.client.get("/api/chat", headers={"authorization": f"Bearer {token}"})).status_code,
            (await harness.client.get("/nowhere", headers={"authorization": f"Bearer {token}"})).status_code,
        ]
        tokens.append(await wrong_key_harness.token())
        statuses.append((await wrong_key_harness.chat(HELLO, token=tokens[-1])).status_code)
    finally:
        root.removeHandler(handler)

    assert statuses == [502, 502, 502, 200, 200, 200, 401, 401, 401, 401, 400, 403, 403, 405, 404, 502]
    assert caplog.records, "nothing was logged"
    lines = buffer.getvalue().splitlines()
    for record in caplog.records:
        lines.append(TextFormatter().format(record))
        lines.append(JSONFormatter().format(record))
        lines.append(str(vars(record)))
    assert any("llmguard.access" in line for line in lines)
    assert any("llmguard.upstream" in line for line in lines)
    everything = "\n".join(lines)
    assert_no_secrets(everything, tokens)
    assert OTHER_KEY not in everything
    assert OTHER_KEY[:12] not in everything
    assert OTHER_KEY[-12:] not in everything
    assert JWT_PATTERN.findall(everything) == []
    assert BEARER_PATTERN.findall(everything) == []
