import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
import pytest
from harness import HELLO, SECRET, CountingApp, Harness, assert_error, running
from starlette.requests import Request

from llmguard import Forbidden, JWTAuth, TokenEndpoint
from llmguard.testing import FakeProvider

REGISTERED = ["iss", "aud", "iat", "nbf", "exp", "jti"]


def decode(token: str, *, issuer: str = "llmguard", audience: str = "llmguard") -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], issuer=issuer, audience=audience, options={"require": REGISTERED}
    )
    return claims


def user_from_header(request: Request) -> Mapping[str, Any] | None:
    user = request.headers.get("x-user")
    return {"sub": user, "plan": "pro"} if user else None


async def user_from_header_async(request: Request) -> Mapping[str, Any] | None:
    return user_from_header(request)


HOOKS = [pytest.param(user_from_header, id="sync"), pytest.param(user_from_header_async, id="async")]


async def test_post_mints_a_token_with_its_expiry(harness: Harness) -> None:
    before = int(time.time())
    response = await harness.client.post("/api/token")
    after = int(time.time())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "expires_at", "expires_in", "max_uses"}
    assert body["max_uses"] is None
    assert body["expires_in"] == 900
    assert before + 900 <= body["expires_at"] <= after + 900


async def test_the_token_carries_the_registered_claims(harness: Harness) -> None:
    body = (await harness.client.post("/api/token")).json()
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    claims = decode(body["token"])
    assert claims["exp"] == body["expires_at"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16


@pytest.mark.parametrize("ttl", [60, 3600])
async def test_the_lifetime_follows_jwt_ttl(harness_factory: Callable[..., Any], ttl: int) -> None:
    harness = await harness_factory(jwt_ttl=ttl)
    body = (await harness.client.post("/api/token")).json()
    claims = decode(body["token"])
    assert body["expires_in"] == ttl
    assert claims["exp"] - claims["iat"] == ttl


async def test_every_token_has_its_own_jti(harness: Harness) -> None:
    first, second = await harness.token(), await harness.token()
    assert first != second
    assert decode(first)["jti"] != decode(second)["jti"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_only_post_mints(harness: Harness, method: str) -> None:
    response = await harness.client.request(method, "/api/token")
    body = assert_error(response, 405, "MethodNotAllowed")
    assert response.headers["allow"] == "POST"
    assert "token" not in body


async def test_a_token_needs_an_allowed_origin(harness: Harness) -> None:
    response = await harness.client.post("/api/token", headers={"origin": "https://evil.example.net"})
    assert "token" not in assert_error(response, 403, "Forbidden")


@pytest.mark.parametrize("hook", HOOKS)
async def test_claims_from_the_authenticate_hook_are_in_the_token(
    provider: FakeProvider, hook: Callable[..., Any]
) -> None:
    async with running(provider, authenticate=hook) as harness:
        response = await harness.client.post("/api/token", headers={"x-user": "user-42"})
    assert response.status_code == 200
    claims = decode(response.json()["token"])
    assert (claims["sub"], claims["plan"]) == ("user-42", "pro")


@pytest.mark.parametrize("hook", HOOKS)
async def test_a_hook_returning_none_refuses_with_401(provider: FakeProvider, hook: Callable[..., Any]) -> None:
    async with running(provider, authenticate=hook) as harness:
        response = await harness.client.post("/api/token")
    assert "token" not in assert_error(response, 401, "Unauthorized")


async def test_the_hook_can_read_the_request_body(provider: FakeProvider) -> None:
    async def login(request: Request) -> Mapping[str, Any] | None:
        body = await request.json()
        return {"sub": body["user"]} if body.get("password") == "open sesame" else None

    async with running(provider, authenticate=login) as harness:
        accepted = await harness.client.post("/api/token", json={"user": "ada", "password": "open sesame"})
        refused = await harness.client.post("/api/token", json={"user": "ada", "password": "guess"})
    assert decode(accepted.json()["token"])["sub"] == "ada"
    assert "token" not in assert_error(refused, 401, "Unauthorized")


async def test_reserved_claims_from_the_hook_are_the_servers(provider: FakeProvider) -> None:
    def overreach(request: Request) -> Mapping[str, Any]:
        return {"sub": "user-1", "iss": "evil", "aud": "evil", "iat": 0, "nbf": 0, "exp": 4102444800, "jti": "fixed"}

    before = int(time.time())
    async with running(provider, authenticate=overreach) as harness:
        response = await harness.client.post("/api/token")
    claims = decode(response.json()["token"])
    assert claims["sub"] == "user-1"
    assert claims["iat"] >= before
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"] != "fixed"


def forbid(request: Request) -> Mapping[str, Any]:
    raise Forbidden("Your plan does not include the assistant.")


async def forbid_async(request: Request) -> Mapping[str, Any]:
    raise Forbidden("Your plan does not include the assistant.")


@pytest.mark.parametrize("hook", [pytest.param(forbid, id="sync"), pytest.param(forbid_async, id="async")])
async def test_a_hook_raising_an_llmguard_error_refuses_with_it(
    provider: FakeProvider, hook: Callable[..., Any]
) -> None:
    async with running(provider, authenticate=hook) as harness:
        response = await harness.client.post("/api/token")
    assert assert_error(response, 403, "Forbidden")["message"] == "Your plan does not include the assistant."


@pytest.mark.parametrize("user", ["user-42", 42])
async def test_a_token_from_the_hook_works_for_chat(provider: FakeProvider, user: object) -> None:
    async def hook(request: Request) -> Mapping[str, Any]:
        return {"sub": user}

    async with running(provider, authenticate=hook) as harness:
        token = await harness.token()
        response = await harness.chat(HELLO, token=token)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "assistant"


async def test_standalone_it_pairs_with_jwt_auth() -> None:
    endpoint = TokenEndpoint(secret=SECRET, ttl=60, issuer="my-app", audience="my-app-chat")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint), base_url="http://t") as client:
        body = (await client.post("/")).json()
    assert body["expires_in"] == 60
    claims = decode(body["token"], issuer="my-app", audience="my-app-chat")
    assert claims["iss"] == "my-app"

    headers = {"authorization": f"Bearer {body['token']}"}
    paired, default = CountingApp(), CountingApp()
    guards = [JWTAuth(paired, secret=SECRET, issuer="my-app", audience="my-app-chat"), JWTAuth(default, secret=SECRET)]
    responses = []
    for guard in guards:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
            responses.append(await client.post("/", headers=headers))
    accepted, refused = responses
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == claims
    assert_error(refused, 401, "Unauthorized")  # another issuer and audience than the default's
    assert (paired.calls, default.calls) == (1, 0)


def test_a_short_secret_is_refused_without_being_shown() -> None:
    secret = "short-secret-Kd8Wm3"
    with pytest.raises(ValueError, match="secret") as caught:
        TokenEndpoint(secret=secret)
    assert secret not in str(caught.value)


@pytest.mark.parametrize("ttl", [0, 9, 86401])
def test_ttl_out_of_range_is_refused(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        TokenEndpoint(secret=SECRET, ttl=ttl)


@pytest.mark.parametrize("ttl", [10, 86400])
def test_ttl_bounds_are_accepted(ttl: int) -> None:
    assert TokenEndpoint(secret=SECRET, ttl=ttl).ttl == ttl
