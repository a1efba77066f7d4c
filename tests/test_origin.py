import re
from typing import Any

import httpx
import pytest
from harness import ORIGIN, CountingApp, asgi_client, assert_error

from llmguard import OriginFilter
from llmguard._origin import normalize_origin


def inner_app() -> CountingApp:
    """The app behind the filter, with a Vary of its own for the filter to add to."""
    return CountingApp(headers={"vary": "Accept-Encoding"})


async def request(inner: CountingApp, method: str = "POST", headers: Any = (), **options: Any) -> httpx.Response:
    app = OriginFilter(inner, allow_origins=[ORIGIN], **options)
    async with asgi_client(app) as client:
        return await client.request(method, "/api/chat", headers=list(headers))


def header_set(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


async def test_an_allowed_origin_reaches_the_app_with_cors_headers() -> None:
    inner = inner_app()
    response = await request(inner, headers=[("origin", ORIGIN)])
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert inner.scope_types == ["http"]
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert header_set(response.headers["vary"]) == {"accept-encoding", "origin"}
    exposed = header_set(response.headers["access-control-expose-headers"])
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed


@pytest.mark.parametrize(
    "origins",
    [
        pytest.param([], id="no-origin"),
        pytest.param(["null"], id="null"),
        pytest.param(["https://evil.example.net"], id="unlisted"),
        pytest.param(["https://app.example.com.evil.com"], id="look-alike"),
        pytest.param(["https://evil.com/https://app.example.com"], id="origin-in-path"),
        pytest.param(["http://app.example.com"], id="scheme-mismatch"),
        pytest.param(["https://app.example.com:8443"], id="port-mismatch"),
        pytest.param(["HTTPS://APP.EXAMPLE.COM"], id="uppercase"),
        pytest.param([ORIGIN, ORIGIN], id="two-origin-headers"),
        pytest.param([ORIGIN, "https://evil.example.net"], id="allowed-then-unlisted"),
    ],
)
async def test_other_origins_get_403_before_the_app_runs(origins: list[str]) -> None:
    inner = inner_app()
    response = await request(inner, headers=[("origin", origin) for origin in origins])
    assert_error(response, 403, "Forbidden")
    assert "access-control-allow-origin" not in response.headers
    assert inner.scopes == []


async def test_a_preflight_from_an_allowed_origin_is_answered_here() -> None:
    inner = inner_app()
    headers = [
        ("origin", ORIGIN),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "Authorization, content-type, x-stainless-os, x-evil"),
    ]
    response = await request(inner, "OPTIONS", headers)
    assert response.status_code == 204
    assert inner.scopes == []
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "post" in header_set(response.headers["access-control-allow-methods"])
    allowed = header_set(response.headers["access-control-allow-headers"])
    assert allowed == {"authorization", "content-type", "x-stainless-os"}
    assert "origin" in header_set(response.headers["vary"])


async def test_a_preflight_from_another_origin_is_refused() -> None:
    inner = inner_app()
    headers = [("origin", "https://evil.example.net"), ("access-control-request-method", "POST")]
    response = await request(inner, "OPTIONS", headers)
    assert_error(response, 403, "Forbidden")
    assert "access-control-allow-origin" not in response.headers
    assert inner.scopes == []


async def test_configured_origins_are_normalised() -> None:
    inner = inner_app()
    app = OriginFilter(inner, allow_origins=["HTTPS://App.Example.com:443/"])
    async with asgi_client(app) as client:
        response = await client.post("/", headers={"origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert inner.calls == 1


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_other_scopes_pass_straight_through(scope_type: str) -> None:
    inner = inner_app()
    app = OriginFilter(inner, allow_origins=[ORIGIN])

    async def receive() -> Any:
        raise AssertionError("the filter must not read")

    async def send(message: Any) -> None:
        raise AssertionError("the filter must not answer")

    await app({"type": scope_type, "headers": []}, receive, send)
    assert inner.scope_types == [scope_type]


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("https://App.Example.COM/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://localhost:80", "http://localhost"),
        ("http://localhost:5173", "http://localhost:5173"),
        ("https://app.example.com:80", "https://app.example.com:80"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("  http://127.0.0.1:3000  ", "http://127.0.0.1:3000"),
    ],
)
def test_normalize_origin_serializes_like_a_browser(origin: str, expected: str) -> None:
    assert normalize_origin(origin) == expected


@pytest.mark.parametrize(
    "origin",
    [
        "*",
        "null",
        "https://app.example.com/chat",
        "app.example.com",
        "https://app.example.com:0",
        "https://a.com:70000",
    ],
)
def test_normalize_origin_rejects_what_is_not_one_origin(origin: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(origin))):
        normalize_origin(origin)


@pytest.mark.parametrize(
    "allow_origins",
    [["*"], ["null"], ["https://app.example.com/chat"], "https://app.example.com"],
)
def test_bad_allow_origins_raise_naming_the_option(allow_origins: Any) -> None:
    with pytest.raises(ValueError, match="allow_origins"):
        OriginFilter(inner_app(), allow_origins=allow_origins)


def test_a_negative_max_age_raises_naming_the_option() -> None:
    with pytest.raises(ValueError, match="max_age"):
        OriginFilter(inner_app(), allow_origins=[ORIGIN], max_age=-1)
