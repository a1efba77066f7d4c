"""JWTAuth: only requests carrying a token minted by TokenEndpoint go further."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._errors import StorageUnavailable, Unauthorized, send_error
from llmguard._jwt import (
    ALGORITHM,
    MAX_LEEWAY,
    REQUIRED_CLAIMS,
    check_max_uses,
    check_previous_secrets,
    check_secret,
    key_id,
)
from llmguard._state import request_state
from llmguard._storage import Storage

# A JWT we mint is ~250 bytes; anything far larger is not ours and not worth decoding.
MAX_TOKEN_LENGTH = 4096
VERIFIED_CACHE_SIZE = 4096


class JWTAuth:
    """Verify ``Authorization: Bearer <jwt>`` and put the claims in the scope.

    HS256 is pinned (``alg: none`` and every other algorithm are refused), and
    ``exp``, ``iat``, ``iss``, ``aud`` and ``jti`` are required. The verified
    claims are in ``scope["llmguard"].claims`` for the layers after this one.
    With ``max_uses`` (``1`` makes every token single-use) each ``jti`` is
    counted in ``storage`` and refused once used up.

    ``previous_secrets`` still verify the tokens they signed, so a new
    ``secret`` can take over without logging anyone out: a token's ``kid``
    header (the fingerprint of the secret that signed it) picks the one secret
    to check it with, and a token of an unknown ``kid`` is refused unchecked.
    A token without a ``kid`` (minted before kids existed) is tried with each.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: str | bytes,
        previous_secrets: Sequence[str | bytes] = (),
        issuer: str = "llmguard",
        audience: str = "llmguard",
        leeway: int = 10,
        max_uses: int | None = None,
        storage: Storage | str = "memory://",
    ) -> None:
        self.app = app
        self.secret = check_secret(secret)
        previous = check_previous_secrets(previous_secrets, self.secret)
        #: Every secret that verifies, by its key id; the signing one first.
        self.secrets = {key_id(raw): raw for raw in (self.secret, *previous)}
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway has value {leeway!r}: must be between 0 and {MAX_LEEWAY} seconds")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.options: jwt.types.Options = {"require": list(REQUIRED_CLAIMS)}
        self.max_uses = check_max_uses(max_uses)
        # A browser sends the same token for its whole life: remember the ones already verified,
        # by their exact text, until they expire. Only a verified token ever gets in.
        self._verified: dict[str, tuple[float, dict[str, object]]] = {}
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            claims = self.verify(Headers(scope=scope).getlist("authorization"))
            if self.max_uses is not None:
                await self.count_use(claims)
        except (Unauthorized, StorageUnavailable) as error:
            await send_error(scope, send, error)
            return
        request_state(scope).claims = claims
        await self.app(scope, receive, send)

    async def count_use(self, claims: dict[str, object]) -> None:
        """Refuse a token past its ``max_uses`` (a replay), counted per ``jti`` in the storage."""
        exp = claims["exp"]
        # The count only has to outlive the token (PyJWT has checked that exp is a number).
        expires_in = int(exp if isinstance(exp, (int, float)) else 0) - int(time.time()) + self.leeway
        try:
            uses = await self.storage.incr(f"jti:{claims['jti']}", expiry=max(1, expires_in))
        except StorageUnavailable:
            if not self.storage.fail_open:
                raise
            return  # failing open: served without counting this use
        if self.max_uses is not None and uses > self.max_uses:
            times = "once" if self.max_uses == 1 else f"{self.max_uses} times"
            raise Unauthorized(f"This token can be used {times} and has been used up. Get a new one.")

    def verify(self, authorization: list[str]) -> dict[str, object]:
        if not authorization:
            raise Unauthorized()
        if len(authorization) > 1:
            raise Unauthorized("Send exactly one Authorization header.")
        scheme, _, token = authorization[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The token is not valid.")
        cached = self._verified.get(token)
        if cached is not None:
            if cached[0] + self.leeway >= time.time():
                return cached[1]
            del self._verified[token]
        try:
            claims = self.decode(token)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired. Get a new one from POST /api/token.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The token is missing the {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The token is not valid.") from None
        if not isinstance(claims.get("jti"), str):
            raise Unauthorized("The token is not valid.")
        exp = claims["exp"]
        if isinstance(exp, (int, float)):
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = (float(exp), claims)
        return claims

    def decode(self, token: str) -> dict[str, object]:
        """The token's claims, checked with the secret its ``kid`` names (with each, when it names none)."""
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is not None:
            secret = self.secrets.get(kid) if isinstance(kid, str) else None
            if secret is None:
                # Signed with a secret this server was never given, or one removed since: not checked at all.
                raise Unauthorized("The token was signed with a key this server does not accept. Get a new one.")
            candidates: tuple[bytes, ...] = (secret,)
        else:
            candidates = tuple(self.secrets.values())
        for secret in candidates[:-1]:
            try:
                return self.decode_with(token, secret)
            except jwt.InvalidSignatureError:
                continue  # the signature is checked before any claim: the next secret may be the one
        return self.decode_with(token, candidates[-1])

    def decode_with(self, token: str, secret: bytes) -> dict[str, object]:
        claims: dict[str, object] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options=self.options,
        )
        return claims
