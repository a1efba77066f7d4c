"""OriginFilter: only configured browser origins reach the guarded routes, with CORS."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmguard._errors import Forbidden, send_error

DEFAULT_ALLOW_HEADERS = ("authorization", "content-type", "accept", "x-stainless-*")
DEFAULT_EXPOSE_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "ratelimit",
    "ratelimit-policy",
    "x-request-id",
    "x-vercel-ai-ui-message-stream",
    "x-llmguard-degraded",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>\d{1,5}))?$")


def normalize_origin(origin: str) -> str:
    """An origin as browsers serialize it: lowercase, no default port, no slash."""
    text = origin.strip().lower()
    if text.endswith("/"):
        text = text[:-1]
    if text in {"*", "null"}:
        raise ValueError(f"{origin!r} is not allowed; list exact origins such as https://app.example.com")
    match = _ORIGIN.match(text)
    if match is None:
        raise ValueError(f"{origin!r} is not an origin; expected scheme://host[:port] with no path")
    scheme, host, port = match["scheme"], match["host"], match["port"]
    if port is not None:
        number = int(port)
        if not 0 < number <= 65535:
            raise ValueError(f"{origin!r} has an invalid port")
        port = None if number == _DEFAULT_PORTS.get(scheme) else str(number)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def check_origins(origins: Iterable[str], option: str = "allow_origins") -> tuple[str, ...]:
    """The origins normalized, without repeats, or ValueError naming ``option`` and the bad origin."""
    if isinstance(origins, (str, bytes)) or not isinstance(origins, Iterable):
        raise ValueError(f"{option} has value {origins!r}: expected a list of origins")
    normalized = []
    for origin in origins:
        if not isinstance(origin, str):
            raise ValueError(
                f"{option}: {origin!r} is not an origin; expected a string such as https://app.example.com"
            )
        try:
            normalized.append(normalize_origin(origin))
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
    return tuple(dict.fromkeys(normalized))


class OriginFilter:
    """Refuse requests whose ``Origin`` is missing, ``null`` or not listed; answer CORS.

    Browsers always send ``Origin`` on cross-origin requests and on same-origin
    POSTs, so a browser page on another site can never use the routes behind
    this filter. Allowed origins get preflight answers and the CORS headers that
    let their code read ``Retry-After`` and the rate-limit fields. Non-browser
    clients can forge ``Origin``; the token and rate limits are what hold them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allow_origins: Sequence[str] = ("http://localhost:5173",),
        allow_headers: Sequence[str] = DEFAULT_ALLOW_HEADERS,
        expose_headers: Sequence[str] = DEFAULT_EXPOSE_HEADERS,
        allow_methods: Sequence[str] = ("GET", "POST"),
        max_age: int = 600,
    ) -> None:
        self.allow_origins = frozenset(check_origins(allow_origins))
        if max_age < 0:
            raise ValueError(f"max_age has value {max_age!r}: must be 0 or more")
        self.app = app
        names = [name.lower() for name in allow_headers]
        self.allow_header_names = frozenset(name for name in names if not name.endswith("*"))
        self.allow_header_prefixes = tuple(name[:-1] for name in names if name.endswith("*"))
        self.preflight_headers = {
            "access-control-allow-methods": ", ".join(m.upper() for m in allow_methods),
            "access-control-max-age": str(max_age),
            "vary": "Origin, Access-Control-Request-Headers",
            "cache-control": "no-store",
        }
        self.expose_headers = ", ".join(expose_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        origins = headers.getlist("origin")
        origin = origins[0] if len(origins) == 1 else None
        if origin is None or origin not in self.allow_origins:
            await send_error(scope, send, _forbidden(origins))
            return

        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight(scope, send, origin, headers)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["access-control-allow-origin"] = origin
                response_headers["access-control-expose-headers"] = self.expose_headers
                response_headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def preflight(self, scope: Scope, send: Send, origin: str, headers: Headers) -> None:
        requested = [
            name.strip().lower()
            for name in headers.get("access-control-request-headers", "").split(",")
            if name.strip()
        ]
        allowed = [name for name in requested if self.header_allowed(name)]
        response_headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            *((k.encode(), v.encode()) for k, v in self.preflight_headers.items()),
        ]
        if allowed:
            response_headers.append((b"access-control-allow-headers", ", ".join(allowed).encode()))
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})

    def header_allowed(self, name: str) -> bool:
        return name in self.allow_header_names or name.startswith(self.allow_header_prefixes)


def _forbidden(origins: list[str]) -> Forbidden:
    if not origins:
        reason = "The request has no Origin header; only allowed browser origins may call this route."
    elif len(origins) > 1:
        reason = "The request has more than one Origin header."
    elif origins[0] == "null":
        reason = "Requests from an opaque origin ('null') are not allowed."
    else:
        shown = origins[0][:200]
        reason = f"The origin {shown!r} is not allowed to use this server."
    return Forbidden(reason, headers={"vary": "Origin"})
