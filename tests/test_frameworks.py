"""llmguard mounted under /llm in each ASGI framework, as examples/ does it, through each framework's own
test client with the lifespan running and the app served under the root path /app.

A browser's round: mint a token, chat (JSON and stream), a refusal as llmguard's JSON error; the
framework's own route answers beside it, and llmguard's lifespan opened the provider client before
the first request and closed it at the end. tests/test_frameworks_e2e.py does the same over real HTTP
(uvicorn --root-path). docs/guides/frameworks.md shows the examples' code: checked here, block by block.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from harness import DONE, HELLO, KEY, ORIGIN, SECRET, STREAM, assert_error, find, sse_events
from starlette.testclient import TestClient

from llmguard import ChatEndpoint
from llmguard.testing import FakeProvider, demo_reply, solve_challenge_payload

EXAMPLES = Path(__file__).parent.parent / "examples"
GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "frameworks.md"
#: Where a proxy serves the whole app (and strips, as uvicorn --root-path expects).
ROOT = "/app"


@dataclass(frozen=True)
class Example:
    """One framework's example: its file under examples/, the ASGI app's name in it, its own route's answer."""

    framework: str
    path: str
    app: str
    home: str


EXAMPLE_LIST = [
    Example("FastAPI", "fastapi_app.py", "app", "from your own FastAPI route"),
    Example("Starlette", "starlette_app.py", "app", "your own page"),
    Example("Litestar", "litestar_app.py", "app", "from your own Litestar route"),
    Example("Quart", "quart_app.py", "app", "from your own Quart route"),
    Example("Django", "django_app/asgi.py", "application", "from your own Django view"),
]
IDS = [example.framework for example in EXAMPLE_LIST]


class Client(Protocol):
    """What a round needs of a client (httpx.AsyncClient's ``request``): each framework's is adapted to it."""

    def request(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> Awaitable[httpx.Response]: ...


def load(example: Example, monkeypatch: pytest.MonkeyPatch, provider: FakeProvider, *, challenge: str = "off") -> Any:
    """The example's module, freshly run as a user runs it: demo settings from the environment (the token
    challenge ``challenge``), and its provider swapped for ``provider`` (no word-by-word delay; it records
    what it gets)."""
    for name, value in {
        "LLMGUARD_DEMO": "1",
        "OPENAI_API_KEY": KEY,
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGIN": ORIGIN,
        "TOKEN_CHALLENGE": challenge,
        "DJANGO_ALLOWED_HOSTS": "testserver,127.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # Django finds django_app.settings and django_app.urls there
    name = "example_" + re.sub(r"\W", "_", example.path.removesuffix(".py"))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / example.path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # Litestar resolves the handlers' annotations through it
    # A Litestar app configures the root logger when it is made (its default LoggingConfig), which
    # would take pytest's capture away from this test and the ones after it: undone.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        spec.loader.exec_module(module)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    find(module.llm, ChatEndpoint).upstream.transport = provider.transport()
    return module


def provider_client(module: Any) -> httpx.AsyncClient | None:
    """llmguard's pooled provider client: made by its lifespan's startup, closed (None) by its shutdown."""
    client: httpx.AsyncClient | None = find(module.llm, ChatEndpoint).upstream._client
    return client


async def browser_round(client: Client, provider: FakeProvider, example: Example, root: str = ROOT) -> str:
    """What a browser does with llmguard under ``root``/llm, and the framework's own route; the token minted."""
    llm = f"{root}/llm"
    minted = await client.request("POST", f"{llm}/api/token", headers={"origin": ORIGIN})
    if minted.status_code == 401:  # TOKEN_CHALLENGE=pow: solved as the browser SDK does
        challenge = await client.request("GET", f"{llm}/api/challenge", headers={"origin": ORIGIN})
        assert challenge.status_code == 200, challenge.text
        solution = {"solution": solve_challenge_payload(challenge.json())}
        minted = await client.request("POST", f"{llm}/api/token", json=solution, headers={"origin": ORIGIN})
    assert minted.status_code == 200, minted.text
    token: str = minted.json()["token"]
    headers = {"origin": ORIGIN, "authorization": f"Bearer {token}"}

    reply = await client.request("POST", f"{llm}/api/chat", json=HELLO, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == demo_reply(HELLO["messages"])
    stream = await client.request("POST", f"{llm}/api/chat", json=STREAM, headers=headers)
    assert stream.status_code == 200, stream.text
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = sse_events(stream)
    assert events[-1] == DONE
    assert "".join(event["delta"] for event in events if event != DONE and event["type"] == "text-delta") == (
        demo_reply(HELLO["messages"])
    )
    assert [request.headers["authorization"] for request in provider.requests] == [f"Bearer {KEY}"] * 2

    # Refusals are llmguard's JSON errors, whatever the framework around it.
    refused = await client.request("POST", f"{llm}/api/token", headers={"origin": "https://evil.example"})
    assert "evil.example" in assert_error(refused, 403, "Forbidden")["message"]
    tokenless = await client.request("POST", f"{llm}/api/chat", json=HELLO, headers={"origin": ORIGIN})
    assert_error(tokenless, 401, "Unauthorized")
    assert (await client.request("GET", f"{llm}/healthz")).json()["status"] == "ok"

    # The framework's own route: answered by the framework, behind none of llmguard's guards.
    home = await client.request("GET", f"{root}/")
    assert home.status_code == 200, home.text
    assert example.home in home.text
    # /llmx is not under /llm: not llmguard's route (Litestar's mount takes it and llmguard answers 404).
    assert (await client.request("GET", f"{root}/llmx")).status_code == 404
    assert len(provider.requests) == 2
    return token


# -- each framework's own test client -----------------------------------------------------


class SyncClient:
    """A Starlette TestClient (sync: it runs the app on a thread of its own) as a ``Client``.

    Its replies are httpx2's; the harness reads httpx's.
    """

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        reply = self.client.request(method, url, json=json, headers=headers)
        return httpx.Response(reply.status_code, headers=reply.headers.multi_items(), content=reply.content)


class QuartClient:
    """Quart's test client as a ``Client``: its replies read whole into httpx Responses."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def request(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        reply = await self.client.open(url, method=method, json=json, headers=headers, root_path=ROOT)
        return httpx.Response(reply.status_code, headers=list(reply.headers.items()), content=await reply.get_data())


@asynccontextmanager
async def own_test_client(example: Example, module: Any) -> AsyncIterator[Client]:
    """The framework's own test client, lifespan running, serving under ``ROOT``.

    Django's test client calls Django's handler, not asgi.py's ``application``: Starlette's
    TestClient, which serves any ASGI app and runs its lifespan, stands in for it.
    """
    app = getattr(module, example.app)
    if example.framework == "Litestar":
        from litestar.testing import AsyncTestClient

        async with AsyncTestClient(app, root_path=ROOT) as litestar_client:
            yield litestar_client
    elif example.framework == "Quart":
        async with app.test_app() as test_app:
            yield QuartClient(test_app.test_client())
    else:
        if example.framework == "FastAPI":
            from fastapi.testclient import TestClient as FastAPITestClient

            client_class: type[TestClient] = FastAPITestClient
        else:
            client_class = TestClient
        with client_class(app, root_path=ROOT) as client:
            yield SyncClient(client)


@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=IDS)
async def test_mounted_with_the_frameworks_own_test_client(
    example: Example, monkeypatch: pytest.MonkeyPatch, provider: FakeProvider
) -> None:
    module = load(example, monkeypatch, provider)
    assert provider_client(module) is None
    async with own_test_client(example, module) as client:
        assert provider_client(module) is not None  # llmguard's lifespan ran with the framework's
        await browser_round(client, provider, example)
    assert provider_client(module) is None  # and its shutdown closed the provider client


# -- the docs show the examples' code -------------------------------------------------------


def code_of(path: Path) -> str:
    """The file's code after its module docstring (which the guide's prose says in its own words)."""
    source = path.read_text()
    module = ast.parse(source)
    first = module.body[0]
    assert isinstance(first, ast.Expr)
    assert isinstance(first.value, ast.Constant)
    assert isinstance(first.value.value, str), f"{path} has no module docstring"
    assert first.end_lineno is not None
    return "\n".join(source.splitlines()[first.end_lineno :]).strip() + "\n"


def guide_blocks() -> dict[str, str]:
    """Each Python block of the guide whose first line is ``# examples/<file>``, by that file, without the line."""
    blocks: dict[str, str] = {}
    for block in re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL):
        first, _, rest = block.partition("\n")
        if first.startswith("# examples/"):
            blocks[first.removeprefix("# ")] = rest.strip() + "\n"
    return blocks


def test_the_guide_shows_each_examples_code_as_it_is() -> None:
    files = [*(f"examples/{example.path}" for example in EXAMPLE_LIST), "examples/django_app/settings.py"]
    files.append("examples/django_app/urls.py")
    blocks = guide_blocks()
    assert sorted(blocks) == sorted(files)
    for file in files:
        assert blocks[file] == code_of(EXAMPLES.parent / file), f"docs/guides/frameworks.md is not {file}"


def test_each_example_says_how_to_run_it() -> None:
    for example in EXAMPLE_LIST:
        docstring = ast.get_docstring(ast.parse((EXAMPLES / example.path).read_text())) or ""
        assert re.search(r"^\s*LLMGUARD_DEMO=1 (uvicorn|hypercorn) ", docstring, flags=re.MULTILINE), example.path
