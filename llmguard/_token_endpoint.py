"""TokenEndpoint: mints the short-lived JWT a browser uses for the chat routes."""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llmguard._challenge import TokenChallenge
from llmguard._chat_request import parse_json, read_body
from llmguard._errors import InvalidRequest, LLMGuardError, MethodNotAllowed, RequestTimeout, Unauthorized, send_error
from llmguard._jwt import ALGORITHM, RESERVED_CLAIMS, check_max_uses, check_secret, key_id

ClaimsResult = Mapping[str, Any] | None
Authenticate = Callable[[Request], ClaimsResult | Awaitable[ClaimsResult]]
MIN_TTL, MAX_TTL = 10, 86400
#: A token request's body only carries a challenge's solution.
MAX_BODY_BYTES = 8192
BODY_TIMEOUT = 10


def check_ttl(ttl: float, option: str = "ttl") -> float:
    """``ttl`` as given, or ValueError naming ``option`` and the value: 10 seconds to a day."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"{option} has value {ttl!r}: must be between {MIN_TTL} and {MAX_TTL} seconds")
    return ttl


class TokenEndpoint:
    """``POST`` → ``{"token", "expires_at", "expires_in", "max_uses"}``.

    ``max_uses`` tells the client how many requests the token is good for
    (``None``: any number until it expires); it must match ``JWTAuth``'s.

    ``authenticate(request)`` (sync or async) may return extra claims for the
    token, such as ``{"sub": user.id}`` so budgets follow the user instead of
    the IP (a non-string ``sub`` is turned into a string); returning ``None``
    refuses with 401, and raising any
    ``LLMGuardError`` refuses with that error. The registered claims (``iss``,
    ``aud``, ``iat``, ``nbf``, ``exp``, ``jti``) are always the server's.

    With a ``challenge`` (:class:`TokenChallenge`), the body must carry its
    solution, ``{"solution": "..."}``, checked before ``authenticate`` runs:
    401 ``ChallengeRequired`` without one, 403 ``ChallengeFailed`` for a wrong
    one (both bodies carry the challenge to solve).

    Each token's header names the secret that signed it (``kid``, a public
    fingerprint of ``secret``), so ``JWTAuth(previous_secrets=...)`` can tell
    the tokens of an old secret from the new ones during a rotation.
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        ttl: int = 900,
        issuer: str = "llmguard",
        audience: str = "llmguard",
        authenticate: Authenticate | None = None,
        max_uses: int | None = None,
        challenge: TokenChallenge | None = None,
    ) -> None:
        self.secret = check_secret(secret)
        self.headers = {"kid": key_id(self.secret)}
        self.ttl = int(check_ttl(ttl))
        self.issuer = issuer
        self.audience = audience
        self.authenticate = authenticate
        self.max_uses = check_max_uses(max_uses)
        self.challenge = challenge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"allow": "POST"})
            request = Request(scope, receive)
            if self.challenge is not None and not self.challenge.off:
                await self.challenge.verify(scope, await self.solution(request))
            extra = await self.extra_claims(request)
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        token, expires_at = self.mint(extra)
        body = {"token": token, "expires_at": expires_at, "expires_in": self.ttl, "max_uses": self.max_uses}
        response = JSONResponse(body, headers={"cache-control": "no-store"})
        await response(scope, receive, send)

    async def solution(self, request: Request) -> object:
        """The ``solution`` of ``{"solution": ...}`` (``None`` for an empty body); the body stays readable."""
        try:
            with anyio.fail_after(BODY_TIMEOUT):
                body = await read_body(request.scope, request.receive, max_bytes=MAX_BODY_BYTES)
        except TimeoutError:
            message = f"The request body did not arrive within {BODY_TIMEOUT} seconds."
            raise RequestTimeout(message, headers={"connection": "close"}) from None
        request._body = body  # what Request.body() returns to an authenticate hook
        if not body.strip():
            return None
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InvalidRequest('The request body must be a JSON object, such as {"solution": "..."}.')
        return data.get("solution")

    async def extra_claims(self, request: Request) -> Mapping[str, Any]:
        if self.authenticate is None:
            return {}
        result = self.authenticate(request)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            raise Unauthorized("Sign in to use the assistant.")
        return result

    def mint(self, extra: Mapping[str, Any] | None = None) -> tuple[str, int]:
        now = int(time.time())
        expires_at = now + self.ttl
        claims = {key: value for key, value in (extra or {}).items() if key not in RESERVED_CLAIMS}
        if "sub" in claims and not isinstance(claims["sub"], str):
            # JWT wants a string subject (RFC 7519); user ids are often numbers.
            claims["sub"] = str(claims["sub"])
        claims.update(
            iss=self.issuer,
            aud=self.audience,
            iat=now,
            nbf=now,
            exp=expires_at,
            jti=secrets.token_urlsafe(16),
        )
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM, headers=self.headers), expires_at
