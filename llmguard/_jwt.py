"""The token format shared by TokenEndpoint (mints) and JWTAuth (verifies)."""

from __future__ import annotations

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti")
RESERVED_CLAIMS = frozenset({*REQUIRED_CLAIMS, "nbf"})
MIN_SECRET_BYTES = 32
MAX_LEEWAY = 30


def check_secret(option: str, secret: str | bytes) -> bytes:
    """The secret as bytes, or ValueError naming ``option`` (never the secret itself)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{option} is {len(raw)} bytes; an HS256 secret must be at least "
            f"{MIN_SECRET_BYTES} bytes (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return raw
