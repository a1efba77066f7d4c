"""The token format shared by TokenEndpoint (mints) and JWTAuth (verifies), and the checks of its options."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti")
RESERVED_CLAIMS = frozenset({*REQUIRED_CLAIMS, "nbf"})
MIN_SECRET_BYTES = 32
MAX_LEEWAY = 30
#: What a key id is made from, besides the secret: a fingerprint of this purpose only.
KID_CONTEXT = b"llmguard kid v1"


def check_secret(secret: str | bytes, option: str = "secret") -> bytes:
    """The secret as bytes, or ValueError naming ``option`` (never the secret itself)."""
    if not isinstance(secret, (str, bytes)):
        raise ValueError(f"{option} is a {type(secret).__name__}: expected a string or bytes")
    raw = secret.encode() if isinstance(secret, str) else secret
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{option} is {len(raw)} bytes; an HS256 secret must be at least "
            f"{MIN_SECRET_BYTES} bytes (`llmguard keygen` prints one)"
        )
    return raw


def check_max_uses(max_uses: int | None, option: str = "max_uses") -> int | None:
    """``max_uses`` as given (``None``: unlimited), or ValueError naming ``option`` and the value."""
    if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
        raise ValueError(f"{option} has value {max_uses!r}: must be at least 1 (or None for unlimited)")
    return max_uses


def key_id(secret: bytes) -> str:
    """The public fingerprint of a signing secret, the ``kid`` of the tokens it signs.

    16 hex digits of SHA-256 over a fixed context and the secret: it tells the
    secrets apart, and says nothing of them that a signed token does not
    already (both let someone with a guess of the secret check it).
    """
    return hashlib.sha256(KID_CONTEXT + secret).hexdigest()[:16]


def check_previous_secrets(
    previous: Iterable[str | bytes], current: bytes = b"", option: str = "previous_secrets"
) -> tuple[bytes, ...]:
    """The previous secrets as bytes, each checked as a secret and none the same as ``current``.

    A string is one secret, not a list of them. ValueError names ``option``
    and which secret (by position), never a secret itself.
    """
    if isinstance(previous, (str, bytes)):
        raise ValueError(f"{option} is a single {type(previous).__name__}: expected a list of secrets")
    checked: list[bytes] = []
    for position, secret in enumerate(previous, 1):
        raw = check_secret(secret, f"{option}: secret {position}")
        if raw == current:
            raise ValueError(
                f"{option}: secret {position} is the current secret itself; list only the secrets that came before it"
            )
        if raw not in checked:
            checked.append(raw)
    return tuple(checked)
