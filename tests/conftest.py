from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from servers import ThreadedServer, free_port

from llmguard import Settings, create_app
from llmguard.testing import FakeProvider

# Distinctive values, so a test can search any output for them (or a fragment of them).
T = TypeVar("T")

KEY = "sk-test-Q7vX2mN9pL4kR8sT1wY6zA3bC5dE0fG"
SECRET = "test-secret-0123456789abcdefghijklmnopqrstuv"
ORIGIN = "https://app.example.com"

# Shared, noisy machines: a property is about what happens, never how fast (bench/ measures that).
hypothesis_settings.register_profile("llmguard", deadline=None, print_blob=True)
hypothesis_settings.load_profile("llmguard")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # Every `async def test_...` runs on anyio, marked before anyio's plugin looks at it.
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _ServerErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "llmguard", None)
        if isinstance(fields, dict) and fields.get("status") == 500:
            self.seen.append(f"{fields['method']} {fields['path']}")


@pytest.fixture(autouse=True)
def _no_request_gets_a_500(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test: no request served in this process may end in a 500 (unless it crashes on purpose)."""
    handler = _ServerErrors()
    access = logging.getLogger("llmguard.access")
    previous = access.level
    access.setLevel(logging.INFO)
    access.addHandler(handler)
    try:
        yield
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)
    if request.node.get_closest_marker("crashes_on_purpose") is None:
        assert handler.seen == [], f"requests answered 500: {handler.seen}"


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


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": KEY,
        "jwt_secret": SECRET,
        "allowed_origins": (ORIGIN,),
        "upstream_retries": 0,
        # Limits are tested where they are the subject; elsewhere they stay out of the way.
        "rate_limit_max": 100_000,
        "token_rate_limit": "100000/minute",
        "tokens_per_ip": None,
    }
    values.update(overrides)
    return Settings(**values)


async def _no_server_error(response: httpx.Response) -> None:
    # A 500 is always a bug: every failure llmguard knows of has its own status and code.
    assert response.status_code != 500, f"500 from {response.request.url}"


class Harness:
    """The bundled app in-process, its fake provider, and a client on an allowed origin."""

    def __init__(self, app: Any, provider: FakeProvider, client: httpx.AsyncClient) -> None:
        self.app = app
        self.provider = provider
        self.client = client

    async def token(self) -> str:
        response = await self.client.post("/api/token")
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def chat(self, body: Any, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        token = token or await self.token()
        headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return await self.client.post("/api/chat", content=body, headers=headers, **kwargs)
        return await self.client.post("/api/chat", json=body, headers=headers, **kwargs)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(api_key=KEY)


@pytest.fixture
async def harness_factory(provider: FakeProvider) -> AsyncIterator[Callable[..., Any]]:
    opened: list[tuple[Any, httpx.AsyncClient]] = []

    async def make(**overrides: Any) -> Harness:
        app = create_app(make_settings(**overrides), transport=provider.transport())
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 50000)),
            base_url="http://testserver",
            headers={"origin": ORIGIN},
            event_hooks={"response": [_no_server_error]},
        )
        opened.append((lifespan, client))
        return Harness(app, provider, client)

    yield make
    for lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def harness(harness_factory: Callable[..., Any]) -> Harness:
    result: Harness = await harness_factory()
    return result


@pytest.fixture(params=["refuses", "hangs"])
def broken_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis that is down (connection refused) or hung (accepts, never answers)."""
    if request.param == "refuses":
        yield f"redis://127.0.0.1:{free_port()}/0"
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes connections; nobody ever reads or answers
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[tuple[FakeProvider, str]]:
    """The fake provider over real HTTP (uvicorn in a thread), shared by the end-to-end modules."""
    provider = FakeProvider(api_key=KEY)
    with ThreadedServer(provider) as server:
        yield provider, server.url
