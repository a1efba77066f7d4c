"""PrefixMount: llmguard under a path prefix of an app whose framework has no mount (Django, Quart).

Starlette, FastAPI and Litestar mount an ASGI app themselves (and leave its
lifespan to the app's own: docs/guides/frameworks.md); Quart has no mount, and
Django neither a mount nor a lifespan. Without its lifespan, ``create_app()``
still answers, but loads its tokenizer and opens its provider client on the
first request, and never closes them.

``PrefixMount(app, prefix="/llm", mounted=create_app())`` is an ASGI app:

- a request whose path is ``/llm`` or under ``/llm/`` goes to ``mounted`` with
  the scope a Starlette ``Mount`` gives: ``root_path`` ends with the prefix and
  ``path`` is the whole path, as the ASGI spec has it (whether or not the server
  put ``root_path`` in ``path``); ``/llmx`` is not under ``/llm``;
- every other request, and whatever else, goes to ``app`` untouched;
- the lifespan runs ``mounted``'s, then ``app``'s, and stops them in the reverse
  order. An app that raises on the lifespan scope instead of answering (Django:
  "Django can only handle ASGI/HTTP connections, not lifespan.") is served
  without one, as uvicorn's ``lifespan="auto"`` does; a startup that fails
  (``lifespan.startup.failed``) stops the server with its message.
"""

from __future__ import annotations

import logging

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("llmguard")


class PrefixMount:
    """``mounted`` under ``prefix`` in front of ``app``; both apps' lifespans run."""

    def __init__(self, app: ASGIApp, *, prefix: str, mounted: ASGIApp) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ValueError(f"prefix has value {prefix!r}: expected a path such as '/llm' (no trailing slash)")
        self.app = app
        self.prefix = prefix
        self.mounted = mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] in ("http", "websocket"):
            root_path: str = scope.get("root_path", "")
            path = _route_path(scope["path"], root_path)
            if path == self.prefix or path.startswith(self.prefix + "/"):
                root_path += self.prefix
                # Starlette's Mount: the prefix joins root_path, path stays whole (the spec's path holds root_path).
                child = {**scope, "root_path": root_path, "path": root_path + path[len(self.prefix) :]}
                await self.mounted(child, receive, send)
                return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        apps = [_Lifespan(self.mounted, scope), _Lifespan(self.app, scope)]
        failure = shutdown_failure = None
        async with anyio.create_task_group() as tasks:
            for app in apps:
                tasks.start_soon(app.run)
            await receive()  # lifespan.startup
            started: list[_Lifespan] = []
            for app in apps:
                failure = await app.step("startup")
                if failure is not None:
                    break
                started.append(app)
            if failure is None:
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
            for app in reversed(started):
                shutdown_failure = await app.step("shutdown") or shutdown_failure
            # An app left behind by a failed startup still waits for a message that is not coming.
            tasks.cancel_scope.cancel()
        for app in apps:
            app.close()
        if failure is not None:
            await send({"type": "lifespan.startup.failed", "message": failure})
        elif shutdown_failure is not None:
            await send({"type": "lifespan.shutdown.failed", "message": shutdown_failure})
        else:
            await send({"type": "lifespan.shutdown.complete"})


def _route_path(path: str, root_path: str) -> str:
    """``path`` without ``root_path`` (servers following the spec include it; older ones do not)."""
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path) :]
    return path


class _Lifespan:
    """One app's side of the lifespan protocol, driven from here one phase at a time."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        #: False once the app raised or returned instead of answering the startup: it has no lifespan.
        self.speaks = True
        self._to_app, self._inbox = anyio.create_memory_object_stream[Message](1)
        self._from_app, self._replies = anyio.create_memory_object_stream[Message | Exception](1)

    async def run(self) -> None:
        with self._from_app:
            try:
                await self.app(self.scope, self._inbox.receive, self._from_app.send)
            except Exception as exc:
                await self._from_app.send(exc)

    async def step(self, phase: str) -> str | None:
        """Send ``lifespan.{phase}``: None once the app completed it (or has no lifespan), else why it failed."""
        if not self.speaks:
            return None
        await self._to_app.send({"type": f"lifespan.{phase}"})
        try:
            reply = await self._replies.receive()
        except anyio.EndOfStream:
            reply = None  # it returned without a word
        if reply is None or isinstance(reply, Exception):
            if phase == "startup":
                self.speaks = False
                logger.info("%s does not speak the ASGI lifespan protocol (%r): served without one", self, reply)
                return None
            return f"{self} ended its lifespan {phase} with {reply!r}"
        if reply.get("type") == f"lifespan.{phase}.complete":
            return None
        if reply.get("type") == f"lifespan.{phase}.failed":
            return str(reply.get("message") or f"{self} failed to {phase}")
        return f"{self} answered the lifespan {phase} with {reply.get('type')!r}"

    def close(self) -> None:
        for stream in (self._to_app, self._inbox, self._from_app, self._replies):
            stream.close()

    def __str__(self) -> str:
        return getattr(self.app, "__qualname__", None) or type(self.app).__qualname__
