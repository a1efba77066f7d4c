"""Each framework's example served by uvicorn on loopback, as a deployment serves it: the lifespan on,
behind a proxy that strips /app (``--root-path /app``), and the token challenge on (``pow``).

The browser's round of tests/test_frameworks.py, over real HTTP: the challenge fetched and solved
under /llm, the stream read off the wire, and nothing in the logs that should not be there.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from harness import assert_clean_logs
from servers import ThreadedServer
from test_frameworks import EXAMPLE_LIST, IDS, ROOT, Example, browser_round, load, provider_client

from llmguard.testing import FakeProvider


@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=IDS)
async def test_served_by_uvicorn_under_a_root_path(
    example: Example, monkeypatch: pytest.MonkeyPatch, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    module = load(example, monkeypatch, provider, challenge="pow")
    with ThreadedServer(getattr(module, example.app), lifespan="on", root_path=ROOT) as server:
        assert provider_client(module) is not None  # the startup ran before uvicorn took a request
        # The proxy took /app off the URL; uvicorn puts it back as the root path.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            token = await browser_round(client, provider, example, root="")
    assert provider_client(module) is None
    assert "Application startup complete" in caplog.text
    assert_clean_logs(caplog.text, [token])
