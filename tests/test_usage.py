"""GET /api/usage and the token window in the chat replies' RateLimit fields, in-process."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from harness import HELLO, ORIGIN, SECRET, STREAM, Harness, asgi_client, assert_error, bearer, preflight, sse_events
from servers import closed_port_url
from starlette.requests import Request

from llmguard._degrade import parse_degrade
from llmguard._usage_endpoint import NEAR_CAP, UsageEndpoint
from llmguard.testing import FakeReply

Factory = Callable[..., Any]
# A request limit, a token window and both monthly caps: every field of the answer has something to say.
LIMITS: dict[str, Any] = {
    "rate_limit_max": 60,
    "tokens_per_ip": "100000/day",
    "monthly_token_cap": 7_654_321,
    "monthly_spend_cap_usd": 432.1,
    "max_tokens": 100,
}
WINDOW_KEYS = {"limit", "remaining", "reset", "window"}
MEMBER = re.compile(r'^"(?P<name>[A-Za-z0-9_-]+)"((?:;[a-z]+=\d+)+)$')


async def usage(harness: Harness, token: str, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    response = await (client or harness.client).get("/api/usage", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def members(field: str) -> dict[str, dict[str, int]]:
    """A RateLimit or RateLimit-Policy field: each member's name and its integer parameters, in order."""
    found: dict[str, dict[str, int]] = {}
    for item in field.split(", "):
        match = MEMBER.match(item)
        assert match is not None, field
        pairs = (pair.split("=") for pair in match[2].lstrip(";").split(";"))
        found[match["name"]] = {key: int(value) for key, value in pairs}
    return found


def words(count: int) -> FakeReply:
    """A reply of ``count`` deltas; the fake reports one completion token per delta."""
    return FakeReply(chunks=["word "] * count)


# -- the answer --------------------------------------------------------------------------------


async def test_the_answer_says_what_is_left_and_never_money_or_the_caps(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS)
    response = await harness.client.get("/api/usage", headers=bearer(await harness.token()))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    body = response.json()
    assert set(body) == {"requests", "tokens", "degraded", "near_cap"}
    assert body["requests"] == {"limit": 60, "remaining": 60, "reset": 0, "window": 60}
    tokens = body["tokens"]
    assert set(tokens) == WINDOW_KEYS
    assert (tokens["limit"], tokens["remaining"], tokens["window"]) == (100_000, 100_000, 86_400)
    assert 0 < tokens["reset"] <= 86_400
    assert (body["degraded"], body["near_cap"]) == (False, False)
    # Neither cap's size, nor any amount of money (the spend cap in dollars or in millionths).
    for secret in ("7654321", "432", "$", "usd", "spend"):
        assert secret not in response.text.lower()
    # Its own limit (the chat rate, counted apart) is on the answer, not the chat limit's.
    assert members(response.headers["ratelimit-policy"]) == {"usage": {"q": 60, "w": 60}}


async def test_a_chat_moves_the_numbers_by_exactly_what_it_was_charged(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS)
    token = await harness.token()
    before = await usage(harness, token)

    harness.provider.enqueue(words(30))
    reply = await harness.chat(HELLO, token=token)
    assert reply.status_code == 200
    charged = reply.json()["usage"]["total_tokens"]
    after = await usage(harness, token)
    assert after["requests"]["remaining"] == before["requests"]["remaining"] - 1
    assert after["tokens"]["remaining"] == before["tokens"]["remaining"] - charged

    # A stream is charged what its finish event says, all the same.
    harness.provider.enqueue(words(12))
    streamed = await harness.chat(STREAM, token=token)
    finish = [event for event in sse_events(streamed) if isinstance(event, dict) and event["type"] == "finish"]
    charged = finish[0]["messageMetadata"]["usage"]["total_tokens"]
    last = await usage(harness, token)
    assert last["requests"]["remaining"] == after["requests"]["remaining"] - 1
    assert last["tokens"]["remaining"] == after["tokens"]["remaining"] - charged


async def test_reading_usage_counts_against_its_own_limit_not_the_chats(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**{**LIMITS, "rate_limit_max": 3})
    token = await harness.token()
    for _ in range(3):
        assert (await usage(harness, token))["requests"]["remaining"] == 3
    refused = await harness.client.get("/api/usage", headers=bearer(token))
    assert_error(refused, 429, "RateLimitExceeded")
    assert members(refused.headers["ratelimit-policy"]) == {"usage": {"q": 3, "w": 60}}
    # The chats still have all of theirs.
    assert [(await harness.chat(HELLO, token=token)).status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_a_single_use_token_is_not_used_up_by_reading_usage(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS, jwt_max_uses=1)
    token = await harness.token()
    for _ in range(3):
        await usage(harness, token)
    assert (await harness.chat(HELLO, token=token)).status_code == 200
    assert (await harness.chat(HELLO, token=token)).status_code == 401
    # Used up for chatting, still good for reading what is left until it expires.
    assert (await usage(harness, token))["requests"]["remaining"] == 58


def user_from_header(request: Request) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": request.headers["x-user"]}
    if "x-quota" in request.headers:
        claims["quota"] = int(request.headers["x-quota"])
    return claims


async def test_the_token_window_is_the_tokens_user_with_its_quota(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS, authenticate=user_from_header)
    carol = await harness.token(headers={"x-user": "carol", "x-quota": "5000"})
    dave = await harness.token(headers={"x-user": "dave"})

    tokens = (await usage(harness, carol))["tokens"]
    assert (tokens["limit"], tokens["remaining"]) == (5000, 5000)
    reply = await harness.chat(HELLO, token=carol)
    charged = reply.json()["usage"]["total_tokens"]
    assert (await usage(harness, carol))["tokens"]["remaining"] == 5000 - charged
    # The reply's fields state carol's quota, not the window's amount.
    assert members(reply.headers["ratelimit-policy"])["tokens"] == {"q": 5000, "w": 86_400}
    # Dave, on the same IP, has his own window at the default amount; the request limit is the IP's.
    other = await usage(harness, dave)
    assert (other["tokens"]["limit"], other["tokens"]["remaining"]) == (100_000, 100_000)
    assert other["requests"]["remaining"] == 59


async def test_a_zero_quota_leaves_nothing_and_never_goes_below_zero(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS, authenticate=user_from_header)
    token = await harness.token(headers={"x-user": "erin", "x-quota": "0"})
    tokens = (await usage(harness, token))["tokens"]
    assert (tokens["limit"], tokens["remaining"]) == (0, 0)


async def test_no_token_window_is_null(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**{**LIMITS, "tokens_per_ip": None})
    token = await harness.token()
    body = await usage(harness, token)
    assert body["tokens"] is None
    assert body["requests"]["remaining"] == 60
    # And the chat replies carry the request limit alone.
    reply = await harness.chat(HELLO, token=token)
    assert list(members(reply.headers["ratelimit-policy"])) == ["chat"]
    assert list(members(reply.headers["ratelimit"])) == ["chat"]


async def test_without_any_cap_nothing_is_near_it(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(tokens_per_ip="1000/hour")
    body = await usage(harness, await harness.token())
    assert (body["degraded"], body["near_cap"]) == (False, False)
    assert body["tokens"]["window"] == 3600


@pytest.mark.parametrize(
    ("cap", "degrade", "degraded", "near_cap"),
    [
        pytest.param(10_000, "", False, False, id="far-from-the-cap"),
        pytest.param(600, "", False, True, id="past-80-percent"),
        pytest.param(1000, "50%::50", True, True, id="a-degrade-step-in-force"),
        pytest.param(10_000, "50%::50", False, False, id="a-degrade-step-not-reached"),
    ],
)
async def test_degraded_and_near_cap_follow_the_month(
    harness_factory: Factory, cap: int, degrade: str, degraded: bool, near_cap: bool
) -> None:
    """One chat charges about 510 tokens of the monthly token cap."""
    steps = parse_degrade(degrade) if degrade else ()
    harness: Harness = await harness_factory(monthly_token_cap=cap, max_tokens=600, degrade=steps)
    token = await harness.token()
    harness.provider.enqueue(words(500))
    charged = (await harness.chat(HELLO, token=token)).json()["usage"]["total_tokens"]
    assert (charged / cap >= NEAR_CAP) == (near_cap and not degraded)
    body = await usage(harness, token)
    assert (body["degraded"], body["near_cap"]) == (degraded, near_cap)
    assert body["tokens"] is None


# -- refusals ----------------------------------------------------------------------------------


async def test_refusals(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS)
    assert_error(await harness.client.get("/api/usage"), 401, "Unauthorized")
    assert_error(await harness.client.get("/api/usage", headers=bearer("not-a-jwt")), 401, "Unauthorized")
    token = await harness.token()
    stranger = harness.client_from("198.51.100.9", origin="https://evil.example")
    assert_error(await stranger.get("/api/usage", headers=bearer(token)), 403, "Forbidden")
    refused = await harness.client.post("/api/usage", headers=bearer(token))
    assert_error(refused, 405, "MethodNotAllowed")
    assert refused.headers["allow"] == "GET"
    # The browser's preflight for a GET with a bearer token.
    answer = await harness.client.options("/api/usage", headers=preflight("authorization", method="GET"))
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("failure", ["closed", "open"])
async def test_a_storage_that_is_down_is_a_503_whatever_the_failure_policy(
    harness_factory: Factory, failure: str
) -> None:
    harness: Harness = await harness_factory(
        **LIMITS, storage_url=closed_port_url(), storage_failure=failure, storage_timeout=0.5
    )
    # Signed here: POST /api/token needs the storage too (its rate limit).
    now = int(time.time())
    claims = {"iss": "llmguard", "aud": "llmguard", "iat": now, "exp": now + 60, "jti": "usage-storage-down"}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert_error(await harness.client.get("/api/usage", headers=bearer(token)), 503, "StorageUnavailable")


async def test_the_endpoint_alone_reports_what_it_is_given() -> None:
    async with asgi_client(UsageEndpoint()) as client:
        response = await client.get("/")
    assert response.json() == {"requests": None, "tokens": None, "degraded": False, "near_cap": False}


# -- the RateLimit fields of a chat reply ------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_chat_replies_carry_the_request_limit_then_the_token_window(harness_factory: Factory, path: str) -> None:
    harness: Harness = await harness_factory(**LIMITS)
    token = await harness.token()
    before = await usage(harness, token)
    harness.provider.enqueue(words(20))
    reply = await harness.client.post(path, json=HELLO, headers=bearer(token))
    assert reply.status_code == 200, reply.text
    after = await usage(harness, token)

    policy = members(reply.headers["ratelimit-policy"])
    assert list(policy) == ["chat", "tokens"]
    assert policy == {"chat": {"q": 60, "w": 60}, "tokens": {"q": 100_000, "w": 86_400}}
    left = members(reply.headers["ratelimit"])
    assert list(left) == ["chat", "tokens"]
    assert left["chat"]["r"] == after["requests"]["remaining"] == 59
    assert 0 < left["chat"]["t"] <= 60
    # After this request's hold: its worst case counted (prompt + the output cap of 100), not its charge.
    held = before["tokens"]["remaining"] - left["tokens"]["r"]
    charged = before["tokens"]["remaining"] - after["tokens"]["remaining"]
    assert charged < held <= charged + 100
    assert left["tokens"]["t"] == pytest.approx(after["tokens"]["reset"], abs=1)
    # Browser code may read both fields.
    exposed = reply.headers["access-control-expose-headers"]
    assert {"ratelimit", "ratelimit-policy"} <= set(exposed.split(", "))


async def test_a_refusal_by_the_token_window_says_what_is_left_of_it(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**{**LIMITS, "tokens_per_ip": "300/hour"})
    token = await harness.token()
    # Replies longer than the output cap (100): three or so use the window up.
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 10:
        harness.provider.enqueue(words(200))
        refused = await harness.chat(HELLO, token=token)
        statuses.append(refused.status_code)
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}, statuses
    assert_error(refused, 429, "TokenBudgetExceeded")
    left = (await usage(harness, token))["tokens"]["remaining"]
    assert members(refused.headers["ratelimit"])["tokens"]["r"] == left
    assert list(members(refused.headers["ratelimit-policy"])) == ["chat", "tokens"]


async def test_other_routes_carry_no_token_window(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(**LIMITS)
    token = await harness.token()
    models = await harness.client.get("/v1/models", headers=bearer(token))
    assert list(members(models.headers["ratelimit-policy"])) == ["chat"]
    # A chat refused before anything was reserved: the request limit alone.
    invalid = await harness.chat({"messages": []}, token=token)
    assert invalid.status_code == 422
    assert list(members(invalid.headers["ratelimit"])) == ["chat"]
    minted = await harness.client.post("/api/token")
    assert "ratelimit" not in minted.headers
