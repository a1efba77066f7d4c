"""GenAITelemetry: the spans and GenAI metrics of known requests, recorded in memory by opentelemetry-sdk.

The providers are passed to the class, never set globally, so each test reads only its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from harness import HELLO, KEY, SECRET, STREAM, asgi_client, assert_no_secrets, make_settings, sse_events
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from llmguard import (
    AccessLog,
    ChatEndpoint,
    GenAITelemetry,
    JWTAuth,
    Metrics,
    Settings,
    SettingsError,
    TokenBudget,
    TokenEndpoint,
    create_app,
)
from llmguard._state import Usage, request_state
from llmguard.testing import FakeProvider, FakeReply

MODEL = "gpt-4.1-mini"
REPLY = ["Zebra", " quartz", " lantern"]  # words no attribute may hold


@dataclass
class Recorded:
    """A stack with its telemetry, and what the telemetry recorded."""

    client: httpx.AsyncClient
    budget: TokenBudget
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    async def chat(self, body: Any, token: str | None = None) -> httpx.Response:
        token = token or (await self.client.post("/token")).json()["token"]
        return await self.client.post("/chat", json=body, headers={"authorization": f"Bearer {token}"})

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[HistogramDataPoint]:
        """The data points of one histogram (none when it recorded nothing)."""
        data = self.reader.get_metrics_data()
        found: list[HistogramDataPoint] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [point for point in metric.data.data_points if isinstance(point, HistogramDataPoint)]
        return found

    def units(self) -> dict[str, str]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric.unit or ""
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


def telemetry() -> tuple[GenAITelemetry, InMemorySpanExporter, InMemoryMetricReader]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    recorder = GenAITelemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))
    return recorder, spans, reader


@pytest.fixture
async def recorded(provider: FakeProvider) -> AsyncIterator[Recorded]:
    """/token and /chat (JWTAuth ▶ TokenBudget ▶ ChatEndpoint) behind AccessLog with Metrics and the telemetry."""
    recorder, spans, reader = telemetry()
    chat = ChatEndpoint(api_key=KEY, transport=provider.transport(), retries=0)
    budget = TokenBudget(chat, monthly_token_cap=100_000)
    inner = Router(
        routes=[Route("/token", TokenEndpoint(secret=SECRET)), Route("/chat", JWTAuth(budget, secret=SECRET))]
    )
    metrics = Metrics(budget=budget, registry=CollectorRegistry())
    try:
        async with asgi_client(AccessLog(inner, metrics=[metrics, recorder])) as client:
            yield Recorded(client, budget, spans, reader)
    finally:
        await chat.aclose()


def _stream_usage(response: httpx.Response) -> dict[str, int]:
    finish = [event for event in sse_events(response) if isinstance(event, dict) and event.get("type") == "finish"]
    usage: dict[str, int] = finish[0]["messageMetadata"]["usage"]
    return usage


async def test_a_json_chat_and_a_stream_are_one_span_each(recorded: Recorded, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=REPLY), FakeReply(chunks=REPLY[:2]))
    before = time.time_ns()
    json_reply = await recorded.chat(HELLO)
    stream = await recorded.chat(STREAM)
    after = time.time_ns()
    assert (json_reply.status_code, stream.status_code) == (200, 200)
    usages = [json_reply.json()["usage"], _stream_usage(stream)]
    assert [usage["completion_tokens"] for usage in usages] == [3, 2]

    spans = recorded.finished()
    assert len(spans) == 2
    for span, usage in zip(spans, usages, strict=True):
        assert span.name == f"chat {MODEL}"
        assert span.kind is SpanKind.CLIENT
        assert dict(span.attributes or {}) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.usage.input_tokens": usage["prompt_tokens"],
            "gen_ai.usage.output_tokens": usage["completion_tokens"],
        }
        assert span.status.status_code is StatusCode.UNSET
        # The provider call's own times, on the epoch clock: within the requests, in order.
        assert span.start_time is not None
        assert span.end_time is not None
        assert before <= span.start_time <= span.end_time <= after
    assert spans[0].end_time is not None
    assert spans[1].start_time is not None
    assert spans[0].end_time <= spans[1].start_time
    assert recorded.units() == {"gen_ai.client.token.usage": "{token}", "gen_ai.client.operation.duration": "s"}
    durations = recorded.points("gen_ai.client.operation.duration")
    assert [point.count for point in durations] == [2]
    assert dict(durations[0].attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
    }
    took = sum((span.end_time or 0) - (span.start_time or 0) for span in spans) / 1e9
    assert durations[0].sum == pytest.approx(took, abs=1e-5)


async def test_the_token_metrics_add_up_to_what_the_budget_charged(recorded: Recorded, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=REPLY), FakeReply(chunks=REPLY), FakeReply(chunks=["one"]))
    token = (await recorded.client.post("/token")).json()["token"]
    responses = [await recorded.chat(HELLO, token), await recorded.chat(STREAM, token), await recorded.chat(HELLO)]
    assert [response.status_code for response in responses] == [200, 200, 200]
    usages = [responses[0].json()["usage"], _stream_usage(responses[1]), responses[2].json()["usage"]]

    by_type = {
        dict(point.attributes or {})["gen_ai.token.type"]: point
        for point in recorded.points("gen_ai.client.token.usage")
    }
    assert set(by_type) == {"input", "output"}
    assert by_type["input"].sum == sum(usage["prompt_tokens"] for usage in usages)
    assert by_type["output"].sum == sum(usage["completion_tokens"] for usage in usages) == 3 + 3 + 1
    assert by_type["input"].count == by_type["output"].count == 3
    month = f"budget:month-tokens:{datetime.now(timezone.utc):%Y-%m}"
    charged = await recorded.budget.storage.get(month)
    assert by_type["input"].sum + by_type["output"].sum == charged


async def test_a_refused_request_is_no_span(recorded: Recorded) -> None:
    response = await recorded.client.post("/chat", json=HELLO)
    assert response.status_code == 401
    response = await recorded.chat({"messages": "nope"})
    assert response.status_code == 422
    assert recorded.finished() == []
    assert recorded.points("gen_ai.client.operation.duration") == []
    assert recorded.points("gen_ai.client.token.usage") == []


async def test_an_upstream_failure_sets_the_error_type(recorded: Recorded, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply.failure(500))
    response = await recorded.chat(HELLO)
    assert response.status_code == 502
    (span,) = recorded.finished()
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "UpstreamError"
    assert attributes["gen_ai.request.model"] == MODEL
    assert span.status.status_code is StatusCode.ERROR
    (duration,) = recorded.points("gen_ai.client.operation.duration")
    assert dict(duration.attributes or {})["error.type"] == "UpstreamError"


async def test_no_secret_prompt_or_reply_is_recorded(recorded: Recorded, provider: FakeProvider) -> None:
    provider.enqueue(FakeReply(chunks=REPLY), FakeReply(chunks=REPLY), FakeReply.failure(500))
    token = (await recorded.client.post("/token")).json()["token"]
    secret_prompt = {"messages": [{"role": "user", "content": "Marmalade-7731 is my password"}]}
    await recorded.chat(secret_prompt, token)
    await recorded.chat({**secret_prompt, "stream": True}, token)
    await recorded.chat(secret_prompt, token)
    spans = recorded.finished()
    assert len(spans) == 3
    metrics = recorded.reader.get_metrics_data()
    assert metrics is not None
    recorded_text = "\n".join(span.to_json() for span in spans) + metrics.to_json()
    assert_no_secrets(recorded_text, [token])
    for text in ("Marmalade", "password", *(word.strip() for word in REPLY), "203.0.113.7"):
        assert text not in recorded_text


async def test_recording_reads_the_scope_a_hand_written_endpoint_left() -> None:
    recorder, spans, reader = telemetry()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        state.model, state.usage = "m-1", Usage(7, 11)
        state.provider_started = time.perf_counter() - 2.0
        state.provider_ended = time.perf_counter() - 0.5
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with asgi_client(AccessLog(endpoint, metrics=recorder)) as client:
        await client.post("/anything")
    (span,) = spans.get_finished_spans()
    assert span.name == "chat m-1"
    assert span.start_time is not None
    assert span.end_time is not None
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(1.5, abs=1e-3)
    assert span.end_time / 1e9 == pytest.approx(time.time() - 0.5, abs=0.5)
    attributes = dict(span.attributes or {})
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (7, 11)
    assert reader.get_metrics_data() is not None


async def test_access_log_takes_one_recorder_several_or_none() -> None:
    first, first_spans, _ = telemetry()
    second, second_spans, _ = telemetry()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        state.model, state.provider_started, state.provider_ended = "m-1", time.perf_counter(), time.perf_counter()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    for recorders in ([], [first], (first, second), None):
        async with asgi_client(AccessLog(endpoint, metrics=recorders)) as client:
            assert (await client.get("/")).status_code == 200
    assert (len(first_spans.get_finished_spans()), len(second_spans.get_finished_spans())) == (2, 1)
    assert AccessLog(endpoint, metrics=[first]).metrics is first
    assert AccessLog(endpoint, metrics=[]).metrics is None


# -- the bundled app: OTEL=true ---------------------------------------------------------------


async def test_the_bundled_app_records_to_the_global_providers(provider: FakeProvider) -> None:
    # No SDK was set up globally: the spans go nowhere, and the app serves as ever.
    app = create_app(make_settings(otel=True, metrics=True, metrics_token="metrics-token-0123456789"))
    assert app.state.settings.otel is True
    assert Settings.from_env({"OPENAI_API_KEY": KEY, "OTEL": "true"}).otel is True
    assert Settings.from_env({"OPENAI_API_KEY": KEY}).otel is False


def test_otel_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("opentelemetry", "opentelemetry.trace", "opentelemetry.metrics"):
        monkeypatch.setitem(sys.modules, module, None)  # as if never installed: imports fail
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"OPENAI_API_KEY": KEY, "OTEL": "true"})
    assert str(raised.value).startswith("Setting OTEL has value 'true': ")
    assert "pip install 'llmguard[otel]'" in str(raised.value)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'llmguard\[otel\]'"):
        GenAITelemetry()
    assert make_settings().otel is False  # off, the package is never asked for


def test_the_provider_name_is_checked() -> None:
    with pytest.raises(ValueError, match=r"^provider has value ''"):
        GenAITelemetry(provider="")
