"""The bundled server's own parts: FreezeAfterStartup (the bounded protocol is driven in test_faults_e2e)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from starlette.types import Message

from llmguard import Settings, create_app
from llmguard._server import FreezeAfterStartup

STARTED_AND_STOPPED = ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def start_and_stop(app: object) -> list[str]:
    """Run an app's lifespan, startup then shutdown; the messages it sent."""
    sent: list[str] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)  # type: ignore[operator]
    return sent


async def test_the_library_app_leaves_the_garbage_collector_alone(unfrozen: None) -> None:
    app = create_app(Settings(demo=True, jwt_secret="s" * 32))
    assert await start_and_stop(app) == STARTED_AND_STOPPED
    assert gc.get_freeze_count() == 0


async def test_the_server_freezes_what_the_app_loaded_once_it_started(unfrozen: None) -> None:
    app = FreezeAfterStartup(create_app(Settings(demo=True, jwt_secret="s" * 32)))
    assert await start_and_stop(app) == STARTED_AND_STOPPED
    assert gc.get_freeze_count() > 0
