"""A fake CAPTCHA verifier (Turnstile's and hCaptcha's siteverify), and a proof-of-work solver, for tests."""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from altcha.v1 import solve_challenge
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send


@dataclass
class _Issued:
    hostname: str
    action: str | None
    used: bool = False


class FakeSiteverify:
    """An ASGI app that answers siteverify as Turnstile and hCaptcha do, for the responses it issued.

    ``issue(hostname=..., action=...)`` plays the widget: it returns a response
    token that the verifier then vouches for, once. Anything else is
    ``invalid-input-response``; a second use ``timeout-or-duplicate``; a wrong
    secret ``invalid-input-secret``. Set ``delay`` to make it slow, ``status``
    to make it fail::

        verifier = FakeSiteverify(secret="0x-test")
        app = create_app(Settings(..., token_challenge="turnstile", captcha_secret="0x-test", ...),
                         captcha_transport=verifier.transport())
    """

    def __init__(self, *, secret: str = "0x-test-secret") -> None:  # noqa: S107  # a test double's own
        self.secret = secret
        self.delay = 0.0
        self.status = 200
        self.issued: dict[str, _Issued] = {}
        #: The forms it received (secret included: it is the test's own).
        self.requests: list[Mapping[str, str]] = []

    def issue(self, *, hostname: str = "localhost", action: str | None = "llmguard-token") -> str:
        token = "fake." + secrets.token_urlsafe(24)
        self.issued[token] = _Issued(hostname, action)
        return token

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # Both verifiers take a urlencoded form (what Captcha.check sends).
        form = dict(urllib.parse.parse_qsl((await Request(scope, receive).body()).decode()))
        self.requests.append(form)
        if self.delay:
            await anyio.sleep(self.delay)
        await JSONResponse(self.answer(form), status_code=self.status)(scope, receive, send)

    def answer(self, form: Mapping[str, Any]) -> dict[str, Any]:
        if form.get("secret") != self.secret:
            return {"success": False, "error-codes": ["invalid-input-secret"]}
        issued = self.issued.get(str(form.get("response", "")))
        if issued is None:
            return {"success": False, "error-codes": ["invalid-input-response"]}
        if issued.used:
            return {"success": False, "error-codes": ["timeout-or-duplicate"]}
        issued.used = True
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        answer = {"success": True, "hostname": issued.hostname, "challenge_ts": stamp, "error-codes": []}
        if issued.action is not None:
            answer["action"] = issued.action
        return answer


def solve_challenge_payload(challenge: Mapping[str, Any]) -> str:
    """The solution of a ``pow`` challenge (as ``GET /api/challenge`` gives it), for ``{"solution": ...}``.

    What the browser SDK does in a Web Worker, in Python: about ``maxnumber / 2``
    SHA-256 hashes (some 40 ms at the default first rung).
    """
    started = time.perf_counter()
    found = solve_challenge(challenge["challenge"], challenge["salt"], challenge["algorithm"], challenge["maxnumber"])
    if found is None:
        raise ValueError("the challenge has no solution up to its maxnumber")
    payload = {
        "algorithm": challenge["algorithm"],
        "challenge": challenge["challenge"],
        "number": found.number,
        "salt": challenge["salt"],
        "signature": challenge["signature"],
        "took": round((time.perf_counter() - started) * 1000),
    }
    return base64.b64encode(json.dumps(payload).encode()).decode()
