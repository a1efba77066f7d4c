"""What the tests share: distinctive values, the bundled app in-process, an app to put behind a
middleware, one reader each for an error, a stream and a log, and what a provider call may end with.

Plain functions and classes; the fixtures built on them live in conftest.py.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import openai
import pytest
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard import Settings, TokenBudget, create_app
from llmguard._token_endpoint import Authenticate
from llmguard.testing import FakeProvider

if TYPE_CHECKING:
    from servers import LLMGuardProcess

T = TypeVar("T")

# Distinctive values, so a test can search any output for them (or a fragment of them).
KEY = "sk-test-Q7vX2mN9pL4kR8sT1wY6zA3bC5dE0fG"
SECRET = "test-secret-0123456789abcdefghijklmnopqrstuv"
ORIGIN = "https://app.example.com"
#: The socket peer of the in-process clients unless a test picks another.
PEER = "203.0.113.7"

HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}]}
STREAM: dict[str, Any] = {**HELLO, "stream": True}
#: The last event of a UI message stream; ``sse_events`` gives it as this string.
DONE = "[DONE]"
# (OPENAI_BASE_URL, MAX_TOKENS_PARAM) → the payload field that carries the output cap.
TOKEN_PARAM_CASES = [
    ("https://api.openai.com/v1", "auto", "max_completion_tokens"),
    ("https://API.OpenAI.com/v1", "auto", "max_completion_tokens"),
    ("https://api.groq.com/openai/v1", "auto", "max_tokens"),
    ("http://localhost:11434/v1", "auto", "max_tokens"),
    ("https://api.openai.com.proxy.example/v1", "auto", "max_tokens"),
    ("https://api.groq.com/openai/v1", "max_completion_tokens", "max_completion_tokens"),
    ("https://api.openai.com/v1", "max_tokens", "max_tokens"),
]


# -- settings and the ASGI tree --------------------------------------------------------


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: the values above, no retries, and limits out of the way."""
    values: dict[str, Any] = {
        "openai_api_key": KEY,
        "jwt_secret": SECRET,
        "allowed_origins": (ORIGIN,),
        "upstream_retries": 0,
        # Limits are tested where they are the subject; elsewhere they stay out of the way.
        "rate_limit_max": 100_000,
        "token_rate_limit": "100000/minute",
        "tokens_per_ip": None,
        "token_challenge": "off",
    }
    values.update(overrides)
    return Settings(**values)


def find(node: object, kind: type[T]) -> T:
    """The first ``kind`` in an ASGI tree of apps, mounts, routers and middlewares."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if isinstance(current, kind):
            return current
        if id(current) in seen:
            continue
        seen.add(id(current))
        stack.extend(child for child in (getattr(current, "app", None), getattr(current, "router", None)) if child)
        stack.extend(getattr(current, "routes", None) or [])
    raise LookupError(f"no {kind.__name__} in the app")


async def client_tokens(app: object, client: str = f"ip:{PEER}") -> int:
    """Tokens counted on one client's window in ``app``'s TokenBudget (this period and the last one)."""
    budget = find(app, TokenBudget)
    assert budget.window is not None
    period = int(time.time() // budget.window.get_expiry())
    return sum([await budget.storage.get(f"budget:client:{client}:{p}") for p in (period - 1, period)])


# -- the bundled app in-process ----------------------------------------------------------


def assert_not_500(response: httpx.Response) -> None:
    # A 500 is always a bug: every failure llmguard knows of has its own status and code.
    assert response.status_code != 500, f"500 from {response.request.url}"


async def _not_500(response: httpx.Response) -> None:
    assert_not_500(response)


class Harness:
    """The bundled app in-process and its fake provider, with clients from any IP on an allowed origin.

    ``client`` comes from ``PEER``; ``client_from(ip)`` opens another. All are closed by ``aclose``.
    """

    def __init__(self, app: Starlette, provider: FakeProvider) -> None:
        self.app = app
        self.provider = provider
        self._clients: list[httpx.AsyncClient] = []
        self.client = self.client_from(PEER)

    def client_from(self, ip: str, *, origin: str | None = ORIGIN) -> httpx.AsyncClient:
        """A client whose requests come from ``ip`` (the socket peer), with ``origin`` unless None."""
        client = asgi_client(self.app, ip, origin=origin)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def token(self, client: httpx.AsyncClient | None = None, headers: dict[str, str] | None = None) -> str:
        """A token minted by ``client`` (the default one unless given)."""
        response = await (client or self.client).post("/api/token", headers=headers or {})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def chat(
        self,
        body: Any = HELLO,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """POST ``body`` (JSON, or bytes/str as they are) to /api/chat with a token (a fresh one unless given)."""
        client = client or self.client
        token = token or await self.token(client)
        headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return await client.post("/api/chat", content=body, headers=headers, **kwargs)
        return await client.post("/api/chat", json=body, headers=headers, **kwargs)


@asynccontextmanager
async def running(
    provider: FakeProvider,
    *,
    authenticate: Authenticate | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    captcha_transport: httpx.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """``create_app(make_settings(**overrides))`` with its lifespan running, in front of ``provider``."""
    app = create_app(
        make_settings(**overrides),
        authenticate=authenticate,
        transport=transport or provider.transport(),
        captcha_transport=captcha_transport,
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        harness = Harness(app, provider)
        stack.push_async_callback(harness.aclose)
        yield harness


# -- a real llmguard process ---------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def http_client(server: LLMGuardProcess, ip: str = PEER, *, timeout: float = 20) -> httpx.Client:
    """A client of ``server`` on an allowed origin, from ``ip`` (as X-Forwarded-For from loopback, which it trusts)."""
    headers = {"origin": ORIGIN, "x-forwarded-for": ip}
    return httpx.Client(
        base_url=server.url, headers=headers, timeout=timeout, event_hooks={"response": [assert_not_500]}
    )


def mint(server: LLMGuardProcess, ip: str = PEER) -> str:
    """A token for ``ip`` from ``server``."""
    with http_client(server, ip) as http:
        response = http.post("/api/token")
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def openai_over_http(server: LLMGuardProcess, token: str | None = None) -> openai.OpenAI:
    """The official openai client of ``server``'s ``/v1``, from an allowed origin, with ``token`` or a fresh one."""
    return openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key=token or mint(server),
        default_headers={"origin": ORIGIN},
        max_retries=0,
    )


async def openai_sdk(harness: Harness, token: str | None = None) -> openai.AsyncOpenAI:
    """The official openai client of the in-process app's ``/v1``, with ``token`` or one minted by ``harness``."""
    return openai.AsyncOpenAI(
        base_url="http://testserver/v1",
        api_key=token or await harness.token(),
        # openai types this as its httpx2 client; it takes an httpx one too (_httpx2.is_legacy_httpx_async_client).
        http_client=harness.client,  # type: ignore[arg-type]
        max_retries=0,
    )


# -- an app behind a middleware ---------------------------------------------------------


def asgi_client(app: ASGIApp, ip: str = PEER, *, origin: str | None = None) -> httpx.AsyncClient:
    """A client of ``app`` in-process (a bare middleware, say) from ``ip``, with ``origin`` if given.

    Open it with ``async with``. A 500 fails the request, as for ``Harness``'s clients.
    """
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 50000)),
        base_url="http://testserver",
        headers={} if origin is None else {"origin": origin},
        event_hooks={"response": [_not_500]},
    )


class CountingApp:
    """The app behind a middleware under test: remembers the scopes that reached it; answers 200 JSON.

    The JSON is the claims JWTAuth verified, when the scope carries some, else ``{"ok": true}``.
    """

    def __init__(self, *, headers: dict[str, str] | None = None) -> None:
        self.headers = headers
        self.scopes: list[Scope] = []

    @property
    def calls(self) -> int:
        """HTTP requests that reached the app."""
        return sum(1 for scope in self.scopes if scope["type"] == "http")

    @property
    def scope_types(self) -> list[str]:
        return [scope["type"] for scope in self.scopes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] != "http":
            return
        state = scope.get("llmguard")
        claims = getattr(state, "claims", None)
        body = claims if claims is not None else {"ok": True}
        await JSONResponse(body, headers=self.headers)(scope, receive, send)


def preflight(request_headers: str, method: str = "POST") -> dict[str, str]:
    """The headers of a browser's CORS preflight for a ``method`` request sending ``request_headers``."""
    return {"access-control-request-method": method, "access-control-request-headers": request_headers}


# -- reading answers ----------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check ``response`` is llmguard's JSON error ``code`` with ``status`` and a message; return the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json", response.headers["content-type"]
    body = response.json()
    assert isinstance(body, dict), body
    assert body["error"] == code, body
    assert isinstance(body["message"], str), body
    assert body["message"].strip(), body
    return body


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Like ``assert_error``, in OpenAI's shape (the /v1 routes); return the ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json", response.headers["content-type"]
    error = response.json()["error"]
    assert isinstance(error, dict), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"].strip(), error
    return error


def sse_events(stream: httpx.Response | str | bytes) -> list[Any]:
    """The ``data`` of each event of an AI SDK stream, JSON-decoded; ``DONE`` stays the string ``"[DONE]"``.

    Checks the framing on the way: each event is one ``data:`` line, then a blank line.
    """
    if isinstance(stream, httpx.Response):
        text = stream.text
    elif isinstance(stream, bytes):
        text = stream.decode()
    else:
        text = stream
    assert text.endswith("\n\n"), text[-80:]
    events: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        data = block.removeprefix("data: ")
        events.append(data if data == DONE else json.loads(data))
    return events


def assert_no_secrets(text: str, tokens: Iterable[str] = ()) -> None:
    """Neither the provider key (nor a telling piece of it), the JWT secret, nor any of ``tokens`` is in ``text``."""
    assert KEY not in text
    assert KEY[-6:] not in text
    assert KEY[:12] not in text
    assert SECRET not in text
    for token in tokens:
        assert token not in text
        signature = token.split(".")[-1]
        assert not signature or signature not in text  # not even the signature


def assert_clean_logs(logs: str, tokens: Iterable[str] = ()) -> None:
    """What a server's whole log must be at the end of a module: no secret, no traceback, no 500."""
    assert_no_secrets(logs, tokens)
    assert "Traceback" not in logs
    assert not re.search(r" (GET|POST|OPTIONS) \S+ 500 ", logs), "a request got a 500"


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The access log's records, oldest first (the test sets ``llmguard.access`` to INFO)."""
    return [record for record in caplog.records if record.name == "llmguard.access"]


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields llmguard puts on an access record."""
    fields: dict[str, Any] = record.llmguard  # type: ignore[attr-defined]
    return fields


def access_fields(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The fields of the last access record."""
    records = access_records(caplog)
    assert records, "no access log record"
    return fields_of(records[-1])


# -- what a provider call may end with (hypothesis) -----------------------------------------

#: Token counts as a provider may report them.
token_counts = st.integers(min_value=0, max_value=100_000)
#: What a reservation may learn of its provider call: nothing (``("nothing", None)``), a refusal
#: (``("refused", None)``), the provider's usage (``("usage", (prompt, completion))``), or only
#: the text, complete or not (``("text", (tokens, complete))``).
call_outcomes = st.one_of(
    st.just(("nothing", None)),
    st.just(("refused", None)),
    st.tuples(st.just("usage"), st.tuples(token_counts, token_counts)),
    st.tuples(st.just("text"), st.tuples(token_counts, st.booleans())),
)
