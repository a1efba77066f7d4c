import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import SECRET, CountingApp, asgi_client, assert_error

from llmguard import JWTAuth

DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": "llmguard", "aud": "llmguard", "iat": now, "nbf": now, "exp": now + 900, "jti": "jti-1"}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def forge(
    payload: dict[str, Any], *, alg: str = "HS256", key: str = SECRET, digest: str | None = None, **header: Any
) -> str:
    """A JWT signed by hand, so any header can be paired with any HMAC."""
    signing_input = b64json({"alg": alg, "typ": "JWT", **header}) + "." + b64json(payload)
    mac = hmac.new(key.encode(), signing_input.encode(), DIGESTS[digest or alg])
    return signing_input + "." + b64(mac.digest())


async def call(headers: list[tuple[str, str]], **options: Any) -> tuple[httpx.Response, CountingApp]:
    """POST through JWTAuth to an app that answers with the claims it was given."""
    echo = CountingApp()
    app = JWTAuth(echo, secret=SECRET, **options)
    async with asgi_client(app) as client:
        response = await client.post("/api/chat", headers=headers)
    return response, echo


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def assert_refused(headers: list[tuple[str, str]], **options: Any) -> httpx.Response:
    response, echo = await call(headers, **options)
    assert_error(response, 401, "Unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    for _, value in headers:
        credentials = value.partition(" ")[2].strip()
        assert all(part not in response.text for part in credentials.split(".") if len(part) >= 8)
    assert echo.calls == 0
    return response


async def accepted(headers: list[tuple[str, str]], payload: dict[str, Any], **options: Any) -> None:
    """The request reached the app, once, with ``payload`` as its claims."""
    response, echo = await call(headers, **options)
    assert response.status_code == 200, response.text
    assert response.json() == payload
    assert echo.calls == 1


async def test_a_valid_token_hands_its_claims_to_the_app() -> None:
    payload = claims(sub="user-42", scope="chat")
    await accepted(bearer(forge(payload)), payload)


async def test_the_scheme_is_case_insensitive() -> None:
    payload = claims()
    await accepted([("authorization", "bearer " + forge(payload))], payload)


async def test_a_token_expired_within_the_leeway_is_accepted() -> None:
    now = int(time.time())
    payload = claims(iat=now - 900, nbf=now - 900, exp=now - 3)
    await accepted(bearer(forge(payload)), payload)


def alg_none(with_signature_part: bool) -> str:
    token = b64json({"alg": "none", "typ": "JWT"}) + "." + b64json(claims())
    return token + "." if with_signature_part else token


def expired() -> str:
    now = int(time.time())
    return forge(claims(iat=now - 960, nbf=now - 960, exp=now - 60))


ATTACKER_KEY = "attacker-key-0123456789abcdefghijklmnopq"
ATTACKS: dict[str, Callable[[], str]] = {
    "alg-none": lambda: alg_none(with_signature_part=True),
    "alg-none-no-signature-part": lambda: alg_none(with_signature_part=False),
    "alg-None": lambda: forge(claims(), alg="None", digest="HS256"),
    "alg-hs256-lowercase": lambda: forge(claims(), alg="hs256", digest="HS256"),
    "hs384-same-secret": lambda: forge(claims(), alg="HS384"),
    "hs512-same-secret": lambda: forge(claims(), alg="HS512"),
    "rs256-header-hmac-signed": lambda: forge(claims(), alg="RS256", digest="HS256"),
    "another-secret": lambda: forge(claims(), key="another-secret-0123456789abcdefghijklmnop"),
    "embedded-jwk": lambda: forge(claims(), key=ATTACKER_KEY, jwk={"kty": "oct", "k": b64(ATTACKER_KEY.encode())}),
    "expired": expired,
    "iat-in-the-future": lambda: forge(claims(iat=int(time.time()) + 120)),
    "nbf-in-the-future": lambda: forge(claims(nbf=int(time.time()) + 120)),
    "wrong-aud": lambda: forge(claims(aud="another-app")),
    "wrong-iss": lambda: forge(claims(iss="another-issuer")),
    "jti-not-a-string": lambda: forge(claims(jti=12345)),
    "jti-an-object": lambda: forge(claims(jti={"id": "x"})),
    "not-a-jwt": lambda: "not-a-jwt",
    "ten-kilobytes": lambda: forge(claims(padding="x" * 10_000)),
}


@pytest.mark.parametrize("make_token", list(ATTACKS.values()), ids=list(ATTACKS))
async def test_a_forged_or_invalid_token_is_refused(make_token: Callable[[], str]) -> None:
    await assert_refused(bearer(make_token()))


async def test_a_tampered_payload_is_refused() -> None:
    header, _, signature = forge(claims(sub="user-1")).split(".")
    await assert_refused(bearer(f"{header}.{b64json(claims(sub='admin'))}.{signature}"))


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "jti"])
async def test_each_required_claim_must_be_present(claim: str) -> None:
    await assert_refused(bearer(forge(claims(**{claim: None}))))


async def test_an_expired_token_says_so() -> None:
    response = await assert_refused(bearer(expired()))
    assert "expired" in response.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="no-authorization"),
        pytest.param([("authorization", "Basic dXNlcjpwYXNzd29yZA==")], id="basic"),
        pytest.param([("authorization", "Bearer")], id="bearer-without-token"),
        pytest.param([("authorization", "Bearer    ")], id="bearer-with-spaces"),
        pytest.param([("authorization", "Token " + forge(claims()))], id="other-scheme"),
        pytest.param(bearer(forge(claims())) * 2, id="two-authorization-headers"),
        pytest.param(bearer(forge(claims())) + bearer("junk"), id="valid-then-junk"),
    ],
)
async def test_a_missing_or_malformed_authorization_header_is_refused(headers: list[tuple[str, str]]) -> None:
    await assert_refused(headers)


async def test_issuer_and_audience_are_configurable() -> None:
    payload = claims(iss="my-app", aud="my-app-chat")
    token = forge(payload)
    await accepted(bearer(token), payload, issuer="my-app", audience="my-app-chat")
    await assert_refused(bearer(token))


async def test_leeway_zero_refuses_a_just_expired_token() -> None:
    now = int(time.time())
    await assert_refused(bearer(forge(claims(iat=now - 900, nbf=now - 900, exp=now - 3))), leeway=0)


async def test_other_scopes_pass_straight_through() -> None:
    inner = CountingApp()

    async def receive() -> Any:
        raise AssertionError("JWTAuth must not read")

    async def send(message: Any) -> None:
        raise AssertionError("JWTAuth must not answer")

    await JWTAuth(inner, secret=SECRET)({"type": "lifespan"}, receive, send)
    assert inner.scope_types == ["lifespan"]


def test_a_short_secret_is_refused_without_being_shown() -> None:
    secret = "short-secret-Kd8Wm3"
    with pytest.raises(ValueError, match="secret") as caught:
        JWTAuth(CountingApp(), secret=secret)
    assert secret not in str(caught.value)


@pytest.mark.parametrize("leeway", [-1, 31, 3600])
def test_leeway_is_bounded(leeway: int) -> None:
    with pytest.raises(ValueError, match="leeway"):
        JWTAuth(CountingApp(), secret=SECRET, leeway=leeway)


def test_a_bytes_secret_of_32_bytes_is_accepted() -> None:
    JWTAuth(CountingApp(), secret=b"\x00" * 32, leeway=30)
