"""AccessLog: one line per request, with the model, the tokens and no secrets; and its metrics.

The library only emits records on the ``llmguard.access`` logger; handlers and
formats are the application's choice (``llmguard serve`` installs
``TextFormatter`` or ``JSONFormatter``). The line never holds a header but the
``Origin``, whose CR/LF and other control characters are escaped.

The same place, where each request ends with its status known, records it in
``Metrics`` when given one (``_metrics``), or in any other ``Recorder``
(``GenAITelemetry``, ``_otel``): the log line and the metrics say the same
status, from one reading.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmguard._state import request_state

Route = TypeVar("Route")

logger = logging.getLogger("llmguard.access")

_CONTROL = {code: f"\\x{code:02x}" for code in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}


def escape(text: str, limit: int = 200) -> str:
    """A header value made safe for one log line."""
    return text[:limit].translate(_CONTROL)


class Recorder(Protocol[Route]):
    """What ``AccessLog(metrics=)`` records each request in (``Metrics``, ``GenAITelemetry``)."""

    def route(self, scope: Scope) -> Route:
        """What the recorder needs to read on arrival (routing changes the scope), given back at the end."""
        ...

    def stream_opened(self) -> None: ...

    def stream_closed(self) -> None: ...

    def request_ended(self, scope: Scope, route: Route, status: int) -> None:
        """Record one request as it ends, from ``scope["llmguard"]``."""
        ...


class _Recorders:
    """Several recorders as one: each gets its own arrival reading back."""

    def __init__(self, recorders: Sequence[Recorder[Any]]) -> None:
        self.recorders = tuple(recorders)

    def route(self, scope: Scope) -> tuple[Any, ...]:
        return tuple(recorder.route(scope) for recorder in self.recorders)

    def stream_opened(self) -> None:
        for recorder in self.recorders:
            recorder.stream_opened()

    def stream_closed(self) -> None:
        for recorder in self.recorders:
            recorder.stream_closed()

    def request_ended(self, scope: Scope, route: tuple[Any, ...], status: int) -> None:
        for recorder, reading in zip(self.recorders, route, strict=True):
            recorder.request_ended(scope, reading, status)


class AccessLog:
    """One record per request on ``logger``, when it ends (the client's key as ``ClientIP`` in front resolved it).

    With ``metrics`` (a ``Recorder`` such as ``Metrics`` or ``GenAITelemetry``,
    or a sequence of them), each request is also recorded there as it ends, and
    the streams open are counted. The status is the response's, or 499 when the
    response did not end: the client went away first (before any answer, or in
    the middle of a stream).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger = logger,
        metrics: Recorder[Any] | Sequence[Recorder[Any]] | None = None,
    ) -> None:
        self.app = app
        self.logger = logger
        # One recorder (or none) is called as it is; several, through one that calls each.
        if isinstance(metrics, Sequence):
            metrics = None if not metrics else metrics[0] if len(metrics) == 1 else _Recorders(metrics)
        self.metrics: Recorder[Any] | None = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        started = time.perf_counter()
        path = scope["path"]  # before routing rewrites the scope
        metrics = self.metrics
        route = metrics.route(scope) if metrics is not None else None
        status = 0
        ended = crashed = streaming = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, ended, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = state.request_id
                if metrics is not None and _is_stream(message):
                    streaming = True
                    metrics.stream_opened()
                await send(message)
            else:
                await send(message)
                ended = ended or not message.get("more_body", False)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            crashed = True
            raise
        finally:
            if crashed:
                status = 500
            elif not ended:
                status = 499  # the client went away before the response ended (nginx's "client closed request")
            if metrics is not None:
                if streaming:
                    metrics.stream_closed()
                metrics.request_ended(scope, route, status)
            if self.logger.isEnabledFor(logging.INFO):
                self.log(scope, path, status, time.perf_counter() - started)

    def log(self, scope: Scope, path: str, status: int, elapsed: float) -> None:
        state = request_state(scope)
        client = scope.get("client")
        origin = Headers(scope=scope).get("origin")
        fields: dict[str, Any] = {
            "request_id": state.request_id,
            "client_ip": state.client_ip or (client[0] if client else None),
            "method": scope["method"],
            "path": escape(path),
            "status": status,
            "latency_ms": round(elapsed * 1000, 1),
            "origin": escape(origin) if origin is not None else None,
            "model": state.model,
            "prompt_tokens": state.usage.prompt_tokens if state.usage else None,
            "completion_tokens": state.usage.completion_tokens if state.usage else None,
            "tokens_estimated": state.usage.estimated if state.usage else None,
            "cost_usd": state.cost_usd,
            "error": state.error_code,
            "preset": state.preset,
            # The degradation step the request got (its threshold in percent), near the monthly caps.
            "degraded": state.degraded.percent if state.degraded is not None else None,
        }
        self.logger.info(
            "%s %s %s %d %.1fms",
            fields["client_ip"] or "-",
            fields["method"],
            fields["path"],
            status,
            fields["latency_ms"],
            extra={"llmguard": fields},
        )


class TextFormatter(logging.Formatter):
    """``2026-01-01T12:00:00Z INFO llmguard.access 1.2.3.4 POST /api/chat 200 12.3ms model=… tokens=12+40``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        fields = getattr(record, "llmguard", None)
        if isinstance(fields, dict):
            if fields.get("model"):
                line += f" model={fields['model']}"
            if fields.get("prompt_tokens") is not None:
                mark = "~" if fields.get("tokens_estimated") else ""
                line += f" tokens={mark}{fields['prompt_tokens']}+{fields['completion_tokens']}"
            if fields.get("cost_usd") is not None:
                line += f" cost=${fields['cost_usd']:.6f}"
            if fields.get("preset"):
                line += f" preset={fields['preset']}"
            if fields.get("degraded"):
                line += f" degraded={fields['degraded']}%"
            if fields.get("error"):
                line += f" error={fields['error']}"
            if fields.get("origin"):
                line += f" origin={fields['origin']}"
            line += f" id={fields['request_id']}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and the request fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "llmguard", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def _is_stream(start: Message) -> bool:
    """Whether a response (its ``http.response.start``) is a stream of Server-Sent Events."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.startswith(b"text/event-stream"))
    return False


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
