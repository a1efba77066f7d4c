"""JWT_MAX_USES: a token good for so many requests, counted per jti in the shared storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from harness import HELLO, SECRET, CountingApp, Harness, asgi_client, assert_error

from llmguard import JWTAuth, Settings, TokenEndpoint
from llmguard._settings import SettingsError
from llmguard._storage import Storage

Factory = Callable[..., Any]


def assert_used_up(response: httpx.Response) -> None:
    assert "used up" in assert_error(response, 401, "Unauthorized")["message"]
    assert response.headers["www-authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize("uses", [None, 1, 3])
async def test_the_token_response_says_how_many_uses_a_token_has(harness_factory: Factory, uses: int | None) -> None:
    harness: Harness = await harness_factory(jwt_max_uses=uses)
    response = await harness.client.post("/api/token")
    assert response.status_code == 200
    assert response.json()["max_uses"] == uses


@pytest.mark.parametrize("uses", [1, 3])
async def test_a_token_is_refused_once_its_uses_are_spent(harness_factory: Factory, uses: int) -> None:
    harness: Harness = await harness_factory(jwt_max_uses=uses)
    token = await harness.token()
    for _ in range(uses):
        response = await harness.chat(HELLO, token=token)
        assert response.status_code == 200, response.text
    assert_used_up(await harness.chat(HELLO, token=token))
    assert_used_up(await harness.chat(HELLO, token=token))
    assert len(harness.provider.requests) == uses

    # A new token is how a client goes on.
    response = await harness.chat(HELLO, token=await harness.token())
    assert response.status_code == 200, response.text


async def test_a_single_use_token_says_once(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(jwt_max_uses=1)
    token = await harness.token()
    assert (await harness.chat(HELLO, token=token)).status_code == 200
    refused = await harness.chat(HELLO, token=token)
    assert "once" in assert_error(refused, 401, "Unauthorized")["message"]


async def test_tokens_have_unlimited_uses_by_default(harness: Harness) -> None:
    token = await harness.token()
    for _ in range(12):
        response = await harness.chat(HELLO, token=token)
        assert response.status_code == 200, response.text


async def test_uses_are_counted_per_token(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(jwt_max_uses=2)
    first, second = await harness.token(), await harness.token()
    for token in (first, second, first, second):
        assert (await harness.chat(HELLO, token=token)).status_code == 200
    assert_used_up(await harness.chat(HELLO, token=first))
    assert_used_up(await harness.chat(HELLO, token=second))


async def test_concurrent_replays_cannot_exceed_the_uses(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(jwt_max_uses=3)
    token = await harness.token()
    responses: list[httpx.Response] = []

    async def use() -> None:
        responses.append(await harness.chat(HELLO, token=token))

    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(use)
    assert sorted(r.status_code for r in responses) == [200] * 3 + [401] * 7
    for refused in (r for r in responses if r.status_code == 401):
        assert_used_up(refused)
    assert len(harness.provider.requests) == 3


# -- the storage failing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "statuses"),
    [pytest.param("closed", [503, 503], id="closed"), pytest.param("open", [200, 200], id="open")],
)
async def test_a_storage_failure_follows_the_policy(broken_redis_url: str, failure: Any, statuses: list[int]) -> None:
    echo = CountingApp()
    storage = Storage(broken_redis_url, failure=failure, timeout=0.2)
    app = JWTAuth(echo, secret=SECRET, max_uses=1, storage=storage)
    token, _ = TokenEndpoint(secret=SECRET, max_uses=1).mint()
    headers = {"authorization": f"Bearer {token}"}
    async with asgi_client(app) as client:
        with anyio.fail_after(5):
            responses = [await client.post("/api/chat", headers=headers) for _ in statuses]
    assert [r.status_code for r in responses] == statuses
    if failure == "closed":
        for response in responses:
            assert_error(response, 503, "StorageUnavailable")
        assert echo.calls == 0
    else:
        claims = [r.json() for r in responses]
        assert claims[0]["jti"]
        assert claims == [claims[0]] * 2  # the one-use token, served twice
        assert echo.calls == 2


async def test_the_bundled_app_failing_open_serves_a_token_past_its_uses(
    harness_factory: Factory, broken_redis_url: str
) -> None:
    harness: Harness = await harness_factory(
        jwt_max_uses=1, storage_url=broken_redis_url, storage_failure="open", storage_timeout=0.2
    )
    token = await harness.token()
    with anyio.fail_after(10):
        for _ in range(2):
            response = await harness.chat(HELLO, token=token)
            assert response.status_code == 200, response.text


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("uses", [0, -1])
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda uses: JWTAuth(CountingApp(), secret=SECRET, max_uses=uses), id="JWTAuth"),
        pytest.param(lambda uses: TokenEndpoint(secret=SECRET, max_uses=uses), id="TokenEndpoint"),
    ],
)
def test_max_uses_below_one_is_refused(build: Callable[[int], object], uses: int) -> None:
    with pytest.raises(ValueError, match=rf"max_uses has value {uses}\b"):
        build(uses)


@pytest.mark.parametrize(("text", "uses"), [("1", 1), ("5", 5), ("off", None)])
def test_jwt_max_uses_is_read_from_the_environment(text: str, uses: int | None) -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-x", "JWT_MAX_USES": text})
    assert settings.jwt_max_uses == uses


@pytest.mark.parametrize("text", ["0", "-2", "once"])
def test_a_bad_jwt_max_uses_names_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="JWT_MAX_USES") as caught:
        Settings.from_env({"OPENAI_API_KEY": "sk-x", "JWT_MAX_USES": text})
    assert repr(text) in str(caught.value)
