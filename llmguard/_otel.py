"""GenAITelemetry: each provider call as an OpenTelemetry span and metrics, in the GenAI semantic conventions.

Recorded like ``Metrics``, by ``AccessLog`` when a request ends, from what the
layers left in ``scope["llmguard"]``: a request that reached the provider
(``RequestState.provider_started`` set) becomes one ``chat {model}`` span,
timed by the provider call, and one sample of each GenAI client metric. A
request refused before the provider is none of them (``Metrics`` counts it).

Only opentelemetry-api is used, and only when a ``GenAITelemetry`` is made
(``pip install 'llmguard[otel]'``): the SDK, its exporters and where they send
are the application's, set up as it sets up the global providers, or passed in.
Attributes never hold a prompt, a reply, a token or a client address.
"""

from __future__ import annotations

import importlib.util
import time
from typing import TYPE_CHECKING

from starlette.types import Scope

from llmguard._state import request_state
from llmguard._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

#: What to install when opentelemetry-api is missing.
INSTALL = "pip install 'llmguard[otel]'"
# The buckets the GenAI semantic conventions advise for their two client histograms.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


def installed() -> bool:
    """Whether opentelemetry-api can be imported (``OTEL=true`` checks it at start-up)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ModuleNotFoundError:  # not even the namespace package
        return False


class GenAITelemetry:
    """OpenTelemetry spans and metrics of the provider calls: recorded by ``AccessLog(metrics=)``.

    ``tracer_provider`` and ``meter_provider`` default to OpenTelemetry's
    global ones (whatever the application or ``opentelemetry-instrument`` set
    up; without an SDK, nothing is recorded). ``provider`` is the
    ``gen_ai.provider.name`` (and the older ``gen_ai.system``) of every call.

    Each provider call is a span ``chat {model}`` (kind ``CLIENT``) from the
    call's start to the end of its reply, with ``gen_ai.operation.name``,
    ``gen_ai.provider.name``, ``gen_ai.system``, ``gen_ai.request.model``,
    ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens`` (what the
    budget charged) and, when it failed, ``error.type`` (llmguard's error
    code). Metrics: ``gen_ai.client.token.usage`` (``{token}``, by
    ``gen_ai.token.type`` ``input`` or ``output``) and
    ``gen_ai.client.operation.duration`` (seconds).

    Raises ``ModuleNotFoundError`` naming ``pip install 'llmguard[otel]'``
    when opentelemetry-api is not installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        provider: str = "openai",
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"GenAITelemetry needs opentelemetry-api: {INSTALL}", name=exc.name) from exc
        if not provider:
            raise ValueError(f"provider has value {provider!r}: name the provider, as 'openai'")
        self.provider = provider
        self._tracer = trace.get_tracer("llmguard", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("llmguard", __version__, meter_provider=meter_provider)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)

    # -- recording (AccessLog calls these) ---------------------------------------------------

    def route(self, scope: Scope) -> None:
        """Nothing to read on arrival: a span is named after its model, not its route."""
        return None

    def stream_opened(self) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    def request_ended(self, scope: Scope, route: None, status: int) -> None:
        """The request's provider call, if it had one, as a span and metric samples."""
        state = request_state(scope)
        model, started = state.model, state.provider_started
        if model is None or started is None:
            return  # refused before the provider, or no chat request at all
        now = time.perf_counter()
        ended = state.provider_ended if state.provider_ended is not None else now
        # perf_counter readings as nanoseconds since the epoch, the clock spans carry.
        wall = time.time_ns() - round(now * 1e9)
        common: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": model,
        }
        attributes: dict[str, AttributeValue] = {**common, "gen_ai.system": self.provider}
        usage = state.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        error = state.error_code
        if error:
            attributes["error.type"] = common["error.type"] = error
        span = self._tracer.start_span(
            f"chat {model}", kind=self._client, attributes=attributes, start_time=wall + round(started * 1e9)
        )
        if error:
            span.set_status(self._error)
        span.end(end_time=wall + round(ended * 1e9))
        self._duration.record(max(0.0, ended - started), common)
        if usage is not None:
            self._token_usage.record(usage.prompt_tokens, {**common, "gen_ai.token.type": "input"})
            self._token_usage.record(usage.completion_tokens, {**common, "gen_ai.token.type": "output"})
