"""The token format shared by TokenEndpoint (mints) and JWTAuth (verifies), and the checks of its options."""

from __future__ import annotations

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti")
RESERVED_CLAIMS = frozenset({*REQUIRED_CLAIMS, "nbf"})
MIN_SECRET_BYTES = 32
MAX_LEEWAY = 30


def check_secret(secret: str | bytes, option: str = "secret") -> bytes:
    """The secret as bytes, or ValueError naming ``option`` (never the secret itself)."""
    if not isinstance(secret, (str, bytes)):
        raise ValueError(f"{option} is a {type(secret).__name__}: expected a string or bytes")
    raw = secret.encode() if isinstance(secret, str) else secret
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{option} is {len(raw)} bytes; an HS256 secret must be at least "
            f"{MIN_SECRET_BYTES} bytes (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return raw


def check_max_uses(max_uses: int | None, option: str = "max_uses") -> int | None:
    """``max_uses`` as given (``None``: unlimited), or ValueError naming ``option`` and the value."""
    if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
        raise ValueError(f"{option} has value {max_uses!r}: must be at least 1 (or None for unlimited)")
    return max_uses
