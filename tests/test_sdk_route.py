"""GET /sdk.js: the browser build of @llmguard/sdk, served by the proxy it talks to."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from conftest import Harness


async def test_sdk_js_is_the_committed_browser_build(harness: Harness) -> None:
    response = await harness.client.get("/sdk.js", headers={"origin": "https://any-site.example"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == resources.files("llmguard").joinpath("static/sdk.js").read_bytes()
    assert b"export{" in response.content  # an ES module
    # Any page may import it as a module script (those are fetched with CORS).
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "max-age" in response.headers["cache-control"]


async def test_sdk_js_revalidates_with_its_etag(harness: Harness) -> None:
    first = await harness.client.get("/sdk.js")
    again = await harness.client.get("/sdk.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    stale = await harness.client.get("/sdk.js", headers={"if-none-match": '"something-else"'})
    assert stale.status_code == 200


async def test_the_demo_page_uses_the_sdk_from_its_own_server(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(demo_page=True)
    page = await harness.client.get("/")
    assert 'from "./sdk.js"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy
    assert "connect-src 'self'" in policy
