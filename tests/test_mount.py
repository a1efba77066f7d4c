"""PrefixMount: requests under the prefix to the mounted app (with the scope Starlette's Mount gives),
the rest to the app, and both lifespans run, in order, whether or not the app speaks lifespan."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from harness import CountingApp, find, make_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from llmguard import ChatEndpoint, PrefixMount, create_app
from llmguard.testing import FakeProvider


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "root_path": request.scope["root_path"]})


def mounted_echo() -> Starlette:
    """A Starlette app (as create_app returns) that says what it saw."""
    return Starlette(routes=[Route("/", echo), Route("/api/chat", echo, methods=["GET", "POST"])])


class Recorder:
    """An app that only remembers the scopes it was called with."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


async def dispatch(path: str, *, root_path: str = "", kind: str = "http") -> tuple[Recorder, Recorder]:
    """(the app, the mounted app) after a request to ``path``, the scope as a server following the spec sends it."""
    app, mounted = Recorder(), Recorder()
    scope = {"type": kind, "path": path, "root_path": root_path, "headers": [], "method": "GET"}
    await PrefixMount(app, prefix="/llm", mounted=mounted)(scope, _never_receive, _never_send)
    assert len(app.scopes) + len(mounted.scopes) == 1
    return app, mounted


async def _never_receive() -> Message:
    raise AssertionError("receive called")


async def _never_send(message: Message) -> None:
    raise AssertionError(f"send called: {message}")


@pytest.mark.parametrize("prefix", ["llm", "/llm/", "/", "", "//llm", "/a//b"])
def test_a_prefix_is_a_path_with_no_trailing_slash(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"prefix has value .*'/llm'"):
        PrefixMount(CountingApp(), prefix=prefix, mounted=CountingApp())


@pytest.mark.parametrize(
    ("path", "root_path", "child_path", "child_root_path"),
    [
        ("/llm", "", "/llm", "/llm"),
        ("/llm/", "", "/llm/", "/llm"),
        ("/llm/api/chat", "", "/llm/api/chat", "/llm"),
        # uvicorn --root-path /app: the spec's path holds the root path.
        ("/app/llm/api/chat", "/app", "/app/llm/api/chat", "/app/llm"),
        # A server that leaves the root path out of path: the child gets the spec's scope anyway.
        ("/llm/api/chat", "/app", "/app/llm/api/chat", "/app/llm"),
    ],
)
async def test_a_request_under_the_prefix_goes_to_the_mounted_app_as_starlettes_mount_sends_it(
    path: str, root_path: str, child_path: str, child_root_path: str
) -> None:
    for kind in ("http", "websocket"):
        _, mounted = await dispatch(path, root_path=root_path, kind=kind)
        child = mounted.scopes[0]
        assert (child["path"], child["root_path"], child["type"]) == (child_path, child_root_path, kind)


@pytest.mark.parametrize(
    ("path", "root_path"),
    [("/", ""), ("/llmx", ""), ("/llm-docs/x", ""), ("/other/llm", ""), ("/app/llmx", "/app"), ("/app", "/app")],
)
async def test_every_other_request_goes_to_the_app_untouched(path: str, root_path: str) -> None:
    for kind in ("http", "websocket"):
        app, _ = await dispatch(path, root_path=root_path, kind=kind)
        assert app.scopes == [{"type": kind, "path": path, "root_path": root_path, "headers": [], "method": "GET"}]


async def test_the_mounted_starlette_app_routes_and_sees_its_prefix() -> None:
    host = CountingApp()
    mount = PrefixMount(host, prefix="/llm", mounted=mounted_echo())
    transport = httpx.ASGITransport(app=mount, root_path="/app")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        reply = await client.post("/app/llm/api/chat")
        assert reply.json() == {"path": "/app/llm/api/chat", "root_path": "/app/llm"}
        # Starlette's slash redirect keeps the prefixes.
        redirect = await client.get("/app/llm")
        assert (redirect.status_code, redirect.headers["location"]) == (307, "http://testserver/app/llm/")
        assert (await client.get("/app/")).json() == {"ok": True}
    assert host.calls == 1


# -- lifespan ------------------------------------------------------------------------------


class LifespanApp:
    """An app with a lifespan that records each step in ``log`` and can fail one."""

    def __init__(self, name: str, log: list[str], *, fail: str | None = None, raise_on: str | None = None) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.raise_on = raise_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            phase = (await receive())["type"].removeprefix("lifespan.")
            if phase == self.raise_on:
                raise RuntimeError(f"{self.name} broke in {phase}")
            if phase == self.fail:
                await send({"type": f"lifespan.{phase}.failed", "message": f"{self.name} cannot {phase}"})
                return
            self.log.append(f"{self.name} {phase}")
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return


async def django_like(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")


async def returns_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    return


async def serve_lifespan(app: PrefixMount, *, between: Callable[[], object] = lambda: None) -> list[Message]:
    """What ``app`` tells a server through a lifespan: startup, then (``between`` called) shutdown if it started."""
    to_app, inbox = anyio.create_memory_object_stream[Message](2)
    told: list[Message] = []

    async def send(message: Message) -> None:
        told.append(message)
        if message["type"] == "lifespan.startup.complete":
            between()
            await to_app.send({"type": "lifespan.shutdown"})

    with to_app, inbox:
        await to_app.send({"type": "lifespan.startup"})
        with anyio.fail_after(5):
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.receive, send)
    return told


async def test_the_mounted_lifespan_starts_first_and_stops_last() -> None:
    log: list[str] = []
    mount = PrefixMount(LifespanApp("app", log), prefix="/llm", mounted=LifespanApp("llm", log))
    told = await serve_lifespan(mount)
    assert [message["type"] for message in told] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert log == ["llm startup", "app startup", "app shutdown", "llm shutdown"]


@pytest.mark.parametrize("app", [django_like, returns_at_once], ids=["raises", "returns"])
async def test_an_app_without_a_lifespan_is_served_without_one(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    caplog.set_level(logging.INFO, logger="llmguard")
    told = await serve_lifespan(PrefixMount(app, prefix="/llm", mounted=LifespanApp("llm", log)))
    assert [message["type"] for message in told] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert log == ["llm startup", "llm shutdown"]
    assert "does not speak the ASGI lifespan protocol" in caplog.text
    assert "Traceback" not in caplog.text


async def test_create_apps_lifespan_runs_beside_an_app_without_one(provider: FakeProvider) -> None:
    llm = create_app(make_settings(), transport=provider.transport())
    upstream = find(llm, ChatEndpoint).upstream
    opened: list[bool] = []
    told = await serve_lifespan(
        PrefixMount(django_like, prefix="/llm", mounted=llm),
        between=lambda: opened.append(upstream._client is not None),
    )
    assert [message["type"] for message in told] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert opened == [True]  # the provider client, opened by the startup
    assert upstream._client is None  # and closed by the shutdown


async def test_a_failed_mounted_startup_fails_the_server_and_never_starts_the_app() -> None:
    log: list[str] = []
    mount = PrefixMount(LifespanApp("app", log), prefix="/llm", mounted=LifespanApp("llm", log, fail="startup"))
    told = await serve_lifespan(mount)
    assert told == [{"type": "lifespan.startup.failed", "message": "llm cannot startup"}]
    assert log == []


async def test_a_failed_app_startup_stops_the_mounted_app_and_fails_the_server() -> None:
    log: list[str] = []
    mount = PrefixMount(LifespanApp("app", log, fail="startup"), prefix="/llm", mounted=LifespanApp("llm", log))
    told = await serve_lifespan(mount)
    assert told == [{"type": "lifespan.startup.failed", "message": "app cannot startup"}]
    assert log == ["llm startup", "llm shutdown"]


@pytest.mark.parametrize(("fail", "raise_on"), [("shutdown", None), (None, "shutdown")])
async def test_a_failed_shutdown_is_reported_after_the_other_app_stopped(
    fail: str | None, raise_on: str | None
) -> None:
    log: list[str] = []
    app = LifespanApp("app", log, fail=fail, raise_on=raise_on)
    told = await serve_lifespan(PrefixMount(app, prefix="/llm", mounted=LifespanApp("llm", log)))
    assert [message["type"] for message in told] == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    assert "app" in told[-1]["message"]
    assert log == ["llm startup", "app startup", "llm shutdown"]


async def confused(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


async def test_an_app_that_answers_out_of_turn_fails_the_startup() -> None:
    log: list[str] = []
    told = await serve_lifespan(PrefixMount(confused, prefix="/llm", mounted=LifespanApp("llm", log)))
    assert told == [
        {
            "type": "lifespan.startup.failed",
            "message": "confused answered the lifespan startup with 'lifespan.shutdown.complete'",
        }
    ]
    assert log == ["llm startup", "llm shutdown"]
