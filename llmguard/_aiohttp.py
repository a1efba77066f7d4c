"""aiohttp's connection pool under httpx, its errors said the httpx way (``llmguard[speed]``).

httpx-aiohttp maps aiohttp's errors loosely: a refused connection and a server
that hung up after reading the request both come out as ``ConnectTimeout``, and
some (a bad status line, a bad chunk size) come out unmapped. Whether the
provider may have billed a request depends on exactly that difference, so this
transport maps every aiohttp error itself, from aiohttp's own class:

- never sent (``ConnectError``/``ConnectTimeout``): the connection was refused,
  timed out, or was closing when the request was written to it;
- sent, then no answer in time (``ReadTimeout``);
- sent, then broken (``RemoteProtocolError``, or ``ReadError`` mid-body).

Imported only when the aiohttp transport is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport with ``limits``, its errors mapped as above."""
    return AiohttpErrors(AiohttpTransport(limits=limits, trust_env=False))


class AiohttpErrors(httpx.AsyncBaseTransport):
    """``inner``, with every aiohttp error (raised, or the cause of httpx-aiohttp's) mapped."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
            if not isinstance(cause, aiohttp.ClientError):
                raise
            raise _before_answer(cause, request) from cause
        stream = _Body(response.stream, request)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, request: httpx.Request) -> None:
        if not isinstance(inner, httpx.AsyncByteStream):
            raise TypeError("expected an async byte stream")
        self.inner = inner
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
            if not isinstance(cause, aiohttp.ClientError):
                raise
            message = f"{type(cause).__name__}: {cause}"
            if isinstance(cause, aiohttp.ServerTimeoutError):
                raise httpx.ReadTimeout(message, request=self.request) from cause
            raise httpx.ReadError(message, request=self.request) from cause

    async def aclose(self) -> None:
        with contextlib.suppress(aiohttp.ClientError):  # closing a broken body: nothing left to read or tell
            await self.inner.aclose()


def _before_answer(error: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """What ``error``, raised before the provider's answer began, says of the request."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(error, (aiohttp.ClientConnectorError, aiohttp.ClientConnectionResetError)):
        # ClientConnectionResetError: "Cannot write to closing transport", the request went nowhere.
        return httpx.ConnectError(message, request=request)
    if isinstance(error, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)
