"""The docs' blocks that need a real server, run against real ``llmguard serve`` processes on loopback.

A page's ``llmguard …``/``curl …`` blocks run in order with bash; ``llmguard serve …`` starts the
server it describes (on a free port) and the page's later blocks reach it where they say
``http://127.0.0.1:8000``. Python blocks that name the proxy run against a ``llmguard serve
--demo`` that allows ``https://app.example.com``. tests/docs_blocks.py has the details; the blocks
that run without a server are tests/test_docs.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from docs_blocks import (
    PAGE_ORIGIN,
    PROXY_URLS,
    Block,
    blocks,
    pages,
    python_job,
    secret_names,
    servers,
    shell_prelude,
    shown,
    stop_servers,
)
from harness import KEY, SECRET, assert_clean_logs

SERVER_KINDS = ("commands", "python-server")
#: What the page talks to when none of its blocks started a server.
DEFAULT_SERVER = f"ALLOWED_ORIGIN={PAGE_ORIGIN} llmguard serve --demo"


def server_pages() -> list[Path]:
    return [
        page for page in pages() if any(block.kind in SERVER_KINDS and block.not_run is None for block in blocks(page))
    ]


class Page:
    """One page's run: its bash environment, the servers its blocks started, and what they printed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.environment = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "DOCS_STATE": str(self.state),
            "DOCS_SECRET_NAMES": secret_names(),
        }

    def bash(self, script: str, where: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-c", shell_prelude() + script],
            env=self.environment,
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"{where}: exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
        return result

    def url(self) -> str:
        """The server the next block talks to: the last one started, or the default one, started now."""
        started = [record for record in servers(self.state) if record.get("up", True)]
        if not started:
            self.bash(DEFAULT_SERVER, "the default server")
            started = servers(self.state)
        url = started[-1]["url"]
        assert isinstance(url, str)
        return url

    def pointed_at_server(self, text: str) -> str:
        url = self.url()
        for proxy in PROXY_URLS:
            text = text.replace(proxy, url)
        return text

    def run_commands(self, block: Block) -> None:
        starts_a_server = "llmguard serve" in block.text
        script = block.text if starts_a_server else self.pointed_at_server(block.text)
        result = self.bash(script, block.where)
        if "curl" in block.text:
            assert result.stdout.strip(), f"{block.where}: curl printed nothing"

    def run_python(self, python_blocks: list[Block]) -> None:
        url = self.url()
        job = python_job({"page": python_blocks}, dict.fromkeys(PROXY_URLS, url))
        helper = Path(__file__).with_name("docs_blocks.py")
        environment = {**self.environment, "OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET}
        result = subprocess.run(
            [sys.executable, str(helper), "run-python"],
            input=job,
            env=environment,
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = result.stdout.strip().splitlines()
        assert lines, result.stderr[-4000:]
        failure = json.loads(lines[-1])["page"]
        assert failure is None, failure


def run_page(page: Path, tmp_path: Path) -> None:
    """Every block of ``page`` that needs a server, in order; then every server's log is checked."""
    run = Page(tmp_path)
    page_blocks = [block for block in blocks(page) if block.not_run is None]
    try:
        for block in page_blocks:
            if block.kind == "commands":
                run.run_commands(block)
        python_blocks = [block for block in page_blocks if block.kind in ("python", "python-server")]
        if any(block.kind == "python-server" for block in python_blocks):
            run.run_python(python_blocks)
    finally:
        stop_servers(run.state)
    started = servers(run.state)
    assert started, f"{shown(page)}: no server was started"
    for record in started:
        logs = Path(str(record["log"])).read_text(errors="replace")
        assert_clean_logs(logs)
        secrets = record["secrets"]
        assert isinstance(secrets, list)
        for secret in secrets:
            assert secret not in logs, f"{shown(page)}: a secret the page set is in the server's log"


@pytest.fixture(scope="module")
def page_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str | None]:
    """Every page run at once (each page's blocks in order): most of a page's time is a server starting."""

    def outcome(page: Path) -> str | None:
        try:
            run_page(page, tmp_path_factory.mktemp(page.stem))
        except AssertionError as failure:
            return str(failure)
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(server_pages(), pool.map(outcome, server_pages()), strict=True))


@pytest.mark.parametrize("page", server_pages(), ids=[shown(page) for page in server_pages()])
def test_blocks_run_against_real_servers(page: Path, page_failures: dict[Path, str | None]) -> None:
    assert page_failures[page] is None, page_failures[page]


def test_a_failing_command_block_fails_with_its_place(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```sh\nllmguard serve --demo\n```\n\n```sh\ncurl -sf http://127.0.0.1:8000/nowhere\n```\n")
    run = Page(tmp_path)
    serve, missing = blocks(page)
    try:
        run.run_commands(serve)
        with pytest.raises(AssertionError, match=r"page\.md:5: exited 22"):
            run.run_commands(missing)  # curl -f: 404
    finally:
        stop_servers(run.state)


def test_a_server_that_cannot_start_fails_its_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```sh\nMAX_TOKENS=lots llmguard serve --demo\n```\n")
    run = Page(tmp_path)
    try:
        with pytest.raises(AssertionError, match=r"exited 2\b[\s\S]*MAX_TOKENS has value 'lots'"):
            run.run_commands(blocks(page)[0])
    finally:
        stop_servers(run.state)
