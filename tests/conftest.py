from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from harness import KEY, Harness, running
from hypothesis import settings as hypothesis_settings
from servers import ThreadedServer, free_port

from llmguard.testing import FakeProvider

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


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(api_key=KEY)


@pytest.fixture
async def harness_factory(provider: FakeProvider) -> AsyncIterator[Callable[..., Any]]:
    """``await harness_factory(authenticate=..., transport=..., **overrides)``: a Harness on
    ``make_settings(**overrides)`` (in front of ``provider`` unless ``transport``), closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Harness:
            return await stack.enter_async_context(running(provider, **overrides))

        yield make


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
