"""IPRateLimit: so many requests per client IP per window, counted in the shared storage."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Literal

import limits
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmguard._client_ip import client_key
from llmguard._errors import RateLimitExceeded, StorageUnavailable, send_error
from llmguard._storage import KEY_PREFIX, Storage


class IPRateLimit:
    """Refuse with 429 once a client IP has made ``limit`` requests in the window.

    ``limit`` uses the `limits` notation (``"60/minute"``, ``"10 per 30 seconds"``)
    and is counted with a sliding window counter, so a burst at a window's edge
    does not get twice the allowance. ``name`` keeps the counts of different
    routes apart and names the policy in the ``RateLimit-Policy`` field. Pass the
    same ``storage`` to every guard; ``redis://`` shares the counts between
    processes.

    With ``remaining``, answers that got past the limit also carry the
    ``RateLimit`` field (what is left, and when the window frees a request): one
    more storage read per request. The limit's members come first in both
    fields; a layer behind it may add its own (the token window's).

    The client is what ``ClientIP`` in front resolved (trusted proxies, IPv6
    /64), else the socket peer.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: str = "60/minute",
        name: str = "chat",
        storage: Storage | str = "memory://",
        failure: Literal["closed", "open"] = "closed",
        remaining: bool = False,
    ) -> None:
        self.item = parse_rate(limit, option="limit")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"name has value {name!r}: use letters, digits, '-' or '_'")
        self.app = app
        self.name = name
        self.storage = storage if isinstance(storage, Storage) else Storage(storage, failure=failure)
        self.window = self.item.get_expiry()
        self.policy = f'"{name}";q={self.item.amount};w={self.window}'
        self.remaining = remaining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = client_key(scope)
        fields = {"ratelimit-policy": self.policy}
        try:
            allowed = await self.storage.guarded(self.storage.limiter.hit(self.item, KEY_PREFIX, self.name, key))
            if not allowed:
                await send_error(scope, send, await self.refusal(key))
                return
        except StorageUnavailable as error:
            if not self.storage.fail_open:
                await send_error(scope, send, error)
                return
        else:
            if self.remaining:
                # Only informative: the request is counted, so a read that fails leaves the field out.
                with contextlib.suppress(StorageUnavailable):
                    left, reset = await self.window_stats(key)
                    fields["ratelimit"] = f'"{self.name}";r={left};t={reset}'

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in fields.items():
                    # A layer behind this one may have put its own members there (the token window's).
                    inner = headers.get(name)
                    headers[name] = f"{value}, {inner}" if inner else value
            await send(message)

        await self.app(scope, receive, send_with_fields)

    async def window_stats(self, key: str) -> tuple[int, int]:
        """What client ``key`` has left in the window, and whole seconds until a request is freed (0: none used).

        One storage round trip; counts nothing. Raises ``StorageUnavailable``.
        """
        stats = await self.storage.guarded(self.storage.limiter.get_window_stats(self.item, KEY_PREFIX, self.name, key))
        return stats.remaining, max(0, math.ceil(stats.reset_time - time.time()))

    async def refusal(self, key: str) -> RateLimitExceeded:
        wait = max(1, (await self.window_stats(key))[1])
        unit = "second" if wait == 1 else "seconds"
        return RateLimitExceeded(
            f"You have exceeded the allowed number of requests. Try again in {wait} {unit}.",
            retry_after=wait,
            headers={"ratelimit-policy": self.policy, "ratelimit": f'"{self.name}";r=0;t={wait}'},
        )


def parse_rate(value: object, *, option: str = "limit") -> limits.RateLimitItem:
    """A rate in the ``limits`` notation (``"60/minute"``, ``"10 per 30 seconds"``), at least 1 per window."""
    try:
        item = limits.parse(value) if isinstance(value, str) else None
    except ValueError:
        item = None
    if item is None:
        raise ValueError(f"{option} has value {value!r}: expected a rate such as '60/minute' or '100000/day'")
    if item.amount < 1:
        raise ValueError(f"{option} has value {value!r}: the amount must be at least 1")
    return item


def check_rate(value: object, *, option: str = "limit") -> str:
    """``value`` if it is a rate :func:`parse_rate` reads, else ``ValueError`` naming ``option``."""
    parse_rate(value, option=option)
    return str(value).strip()
