"""GET /sdk.js: the browser build of @llmguard/sdk, served by the proxy it talks to."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from harness import Harness


@pytest.mark.parametrize("name", ["sdk.js", "widget.js", "sdk-pow.js", "sdk-captcha.js"])
async def test_scripts_are_the_committed_browser_builds(harness: Harness, name: str) -> None:
    response = await harness.client.get(f"/{name}", headers={"origin": "https://any-site.example"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == resources.files("llmguard").joinpath(f"static/{name}").read_bytes()
    assert b"export{" in response.content  # an ES module
    # Any page may import it as a module script (those are fetched with CORS).
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "max-age" in response.headers["cache-control"]


@pytest.mark.parametrize(
    ("name", "loads"),
    [("sdk.js", ["sdk-pow.js"]), ("widget.js", ["sdk-pow.js", "sdk-captcha.js"])],  # the widget draws CAPTCHAs
)
async def test_the_builds_load_the_challenge_solvers_beside_them(harness: Harness, name: str, loads: list[str]) -> None:
    """Relative to where the build was served from, so they follow any mount prefix; served by this app too."""
    build = (await harness.client.get(f"/{name}")).text
    for lazy in loads:
        assert f"./{lazy}" in build, lazy
        assert (await harness.client.get(f"/{lazy}")).status_code == 200


async def test_the_widget_build_registers_the_element(harness: Harness) -> None:
    widget = (await harness.client.get("/widget.js")).text
    assert "llmguard-chat" in widget
    assert "customElements" in widget


async def test_sdk_js_revalidates_with_its_etag(harness: Harness) -> None:
    first = await harness.client.get("/sdk.js")
    again = await harness.client.get("/sdk.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    stale = await harness.client.get("/sdk.js", headers={"if-none-match": '"something-else"'})
    assert stale.status_code == 200


async def test_the_demo_page_is_the_widget_from_its_own_server(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(demo_page=True)
    page = await harness.client.get("/")
    assert '<script type="module" src="./widget.js"></script>' in page.text
    assert "<llmguard-chat" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    # The token challenge's proof-of-work runs in a blob worker; nothing else may frame or be framed.
    assert "worker-src blob:" in policy
    assert "frame-src 'none'" in policy


async def test_the_demo_page_lets_the_captcha_widget_in_when_there_is_one(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(
        demo_page=True, token_challenge="turnstile", captcha_site_key="0x-site", captcha_secret="0x-secret"
    )
    policy = (await harness.client.get("/")).headers["content-security-policy"]
    script_src = policy.split("script-src", 1)[1].split(";", 1)[0]
    assert "https://challenges.cloudflare.com" in script_src
    assert "frame-src https://challenges.cloudflare.com" in policy
