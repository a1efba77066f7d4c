"""The bundled server's HTTP connections: uvicorn's protocols, with the two bounds they lack.

uvicorn closes a keep-alive connection that stays idle, but a connection that
never finishes sending its request headers (slowloris) stays open for good, and
its ``limit_concurrency`` refuses in plain text. ``llmguard serve`` runs
uvicorn with this protocol instead, so that:

- each request's headers must arrive within ``header_timeout`` seconds of the
  connection opening or of the request's first byte; otherwise the connection
  gets a JSON 408 ``RequestTimeout`` (or, if it sent nothing, is just closed);
- past ``max_connections`` open connections, a request is marked busy
  (``scope["llmguard"].server_busy``) and the app answers it with a 503
  ``ServerBusy`` and closes its connection, through its usual layers (request
  id, CORS, OpenAI's error shape on ``/v1``) but before any guard or endpoint.

The body's own deadline is the app's (``BODY_TIMEOUT``, in ``ChatEndpoint``).

:class:`FreezeAfterStartup` is the server's, not the library's: once the app
has started, whatever it loaded is moved out of the garbage collector's way.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import re
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmguard._errors import ErrorStyle, RequestTimeout, error_body, error_headers
from llmguard._state import new_request_id, request_state

_REQUEST_LINE = re.compile(rb"^[A-Z]+ (/[^ ?#\r\n]*)")


class FreezeAfterStartup:
    """Run ``gc.freeze()`` once the app has started: what it loaded lives as long as the process.

    Kept out of the collector's full passes, which otherwise walk it all (the token counter's
    vocabulary, the provider client, the imports) mid-stream: bench/ measured the stream lag.
    A process-wide choice, so it is made by ``llmguard serve``, never by ``create_app``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_and_freeze(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                gc.freeze()

        await self.app(scope, receive, send_and_freeze)


def timeout_response(received: bytes) -> bytes:
    """The 408 for a request whose headers never ended, in the shape its path speaks (as far as it came)."""
    line = _REQUEST_LINE.match(received)
    path = line.group(1).decode("latin-1") if line else ""
    style: ErrorStyle = "openai" if path == "/v1" or path.startswith("/v1/") else "llmguard"
    request_id = new_request_id()
    error = RequestTimeout("The request headers did not arrive in time.", headers={"connection": "close"})
    body = error_body(error, style=style, request_id=request_id)
    head = b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(
        name + b": " + value + b"\r\n"
        for name, value in [*error_headers(error, len(body)), (b"x-request-id", request_id.encode())]
    )
    return head + b"\r\n" + body


class _MarkBusy:
    """The app, told that its request came past ``MAX_CONNECTIONS`` (it answers 503 ``ServerBusy``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_state(scope).server_busy = True
        await self.app(scope, receive, send)


class _Bounded:
    """The bounds, over whichever uvicorn protocol class comes next in the MRO."""

    # Set by uvicorn's protocol classes.
    app: Any
    cycle: Any
    connections: set[Any]
    transport: asyncio.Transport

    def __init__(self, *args: Any, header_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._own_app = self.app
        self._busy_app = _MarkBusy(self.app)
        self._header_timer: asyncio.TimerHandle | None = None
        self._received = b""  # the start of the request whose headers are on the clock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            # These bytes start a new request, or carry on its headers: they are on the clock.
            if len(self._received) < 256:
                self._received += data[:256]
            if self._header_timer is None:
                self._arm()
            self.app = self._busy_app if len(self.connections) > self.max_connections else self._own_app
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not cycle:
            self._disarm()  # the headers are complete: the request has started
            self._received = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._received:
            self.transport.write(timeout_response(self._received))
        self.transport.close()


class BoundedH11Protocol(_Bounded, H11Protocol):
    """uvicorn's h11 protocol, bounded."""


_FASTEST: type[_Bounded] = BoundedH11Protocol
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (llmguard[speed])
    pass
else:

    class BoundedHttpToolsProtocol(_Bounded, HttpToolsProtocol):
        """uvicorn's httptools protocol, bounded."""

    _FASTEST = BoundedHttpToolsProtocol


def protocol(*, header_timeout: float, max_connections: int) -> Callable[..., _Bounded]:
    """The ``http=`` argument for uvicorn: its fastest protocol (httptools when installed), bounded.

    A ``functools.partial`` of a module-level class, so that it pickles into
    ``--workers`` processes.
    """
    return functools.partial(_FASTEST, header_timeout=header_timeout, max_connections=max_connections)
