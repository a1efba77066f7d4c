"""The files the bundled app serves: the SDK's browser builds and the demo page.

``/sdk.js`` and ``/widget.js`` are the browser builds of ``@llmguard/sdk``
(``js/``, committed by ``npm run sync:browser-build``): for pages that
``import { chat } from "https://your-proxy/sdk.js"``, and for
``<llmguard-chat>``. Each file is read on its first request, not at import.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response


class Script:
    """A GET endpoint for one browser build, cached by ETag; module scripts load with CORS, hence ``*``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @functools.cached_property
    def body(self) -> bytes:
        return _read(self.name)

    @functools.cached_property
    def headers(self) -> dict[str, str]:
        return {
            "cache-control": "public, max-age=300",
            "etag": '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"',
            "access-control-allow-origin": "*",
            "cross-origin-resource-policy": "cross-origin",
            "x-content-type-options": "nosniff",
        }

    async def __call__(self, request: Request) -> Response:
        if self.headers["etag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=self.headers)
        return Response(self.body, media_type="text/javascript; charset=utf-8", headers=self.headers)


def demo_page(captcha_script: str | None = None) -> Callable[[Request], Awaitable[Response]]:
    """The demo chat page, under a policy that allows its own scripts and nothing else.

    The token challenge's proof-of-work runs in a Web Worker made from a blob
    (``worker-src blob:``); a CAPTCHA's widget script (``captcha_script``) and
    its frame come from the provider's origin.
    """
    page, policy = _demo_page(_origin(captcha_script) if captcha_script else None)
    headers = {
        "content-security-policy": policy,
        "cache-control": "no-cache",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }

    async def endpoint(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    return endpoint


@functools.cache
def _demo_page(captcha_origin: str | None) -> tuple[bytes, str]:
    page = _read("demo.html")
    scripts = re.findall(rb"<script[^>]*>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'" for script in scripts
    )
    captcha = f" {captcha_origin}" if captcha_origin else ""
    frames = captcha_origin or "'none'"
    policy = (
        f"default-src 'none'; script-src 'self' {hashes}{captcha}; style-src 'unsafe-inline'; "
        f"connect-src 'self'{captcha}; worker-src blob:; frame-src {frames}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, policy


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _read(name: str) -> bytes:
    return resources.files("llmguard").joinpath(f"static/{name}").read_bytes()
