"""The code blocks of the docs (docs/**/*.md and README.md): found, sorted by what can run them, and run.

Used by tests/test_docs.py (what runs without a server) and tests/test_docs_e2e.py (what needs a
real ``llmguard serve``). Every fenced block is one of:

- **python**: executed, the blocks of a page in order in one namespace (one subprocess per page), so
  a block may build on the one before, as a reader does. Top-level ``await`` works. The environment
  has ``OPENAI_API_KEY`` and ``JWT_SECRET`` (a test key and secret) and nothing else of llmguard's;
  blocks that need a provider use ``llmguard.testing.FakeProvider`` or ``Settings(demo=True)``.
  A block that names the proxy (``https://llm-proxy.example.com``, or ``http://127.0.0.1:8000``) is
  run against a real ``llmguard serve --demo`` that allows ``https://app.example.com``, the page's
  origin in the docs.
- **sh/bash, settings only** (``NAME=value`` lines and comments): evaluated by bash and read with
  ``Settings.from_env``: every name must be a setting, and the values must start a server.
- **sh/bash, commands**: lines that run ``llmguard …`` or ``curl …`` (after ``NAME=value`` or
  ``export`` assignments; ``$(…)`` and pipes into ``python3`` are fine). Run by bash against real
  servers: ``llmguard serve …`` starts the server it describes (on a free loopback port, in the
  background, checked with ``/healthz``) and the page's later blocks talk to it, their
  ``http://127.0.0.1:8000`` pointed at it; before any such block, a page talks to the default
  ``llmguard serve --demo`` above. Any other ``llmguard`` command runs as written.
- **json / yaml / toml**: parsed. **text**: output or diagrams, nothing to run.

Anything else (TypeScript, HTML, a command that installs packages or runs until stopped…) must say
why it is not run, with ``<!-- not run: the reason -->`` on the line right before its fence.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The proxy and the page in the docs' examples, and where `llmguard serve` listens by default.
PROXY_URLS = ("https://llm-proxy.example.com", "http://127.0.0.1:8000", "http://localhost:8000")
PAGE_ORIGIN = "https://app.example.com"

MARKER = re.compile(r"^\s*<!--\s*not run\b(?P<rest>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")

PYTHON = {"python", "py", "python3"}
SHELL = {"sh", "bash", "shell", "console"}
DATA = {"json", "yaml", "yml", "toml"}
INERT = {"text", "txt", "output"}
#: Commands a docs block may run against the servers the test starts.
RUNNABLE_COMMANDS = ("llmguard", "curl")
#: What a command block must not do here: install, build, or reach beyond loopback.
NOT_HERE = re.compile(r"\b(pip|pipx|npm|npx|apt-get|apt|docker|git|cd|uvicorn|wget)\b|python3? -m (venv|http\.server)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    #: The reason of a `<!-- not run: … -->` marker right before the fence ("" for a marker with
    #: no reason), or None when there is no marker.
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}"

    @property
    def kind(self) -> str:
        """``python``, ``python-server``, ``settings``, ``commands``, ``data``, ``inert`` or ``unrunnable``."""
        if self.language in PYTHON:
            return "python-server" if names_the_proxy(self.text) else "python"
        if self.language in DATA:
            return "data"
        if self.language in INERT:
            return "inert"
        if self.language in SHELL:
            lines = logical_lines(self.text)
            if lines and all(is_assignments(line) for line in lines):
                return "settings"
            if lines and not NOT_HERE.search(self.text) and all(is_runnable_command(line) for line in lines):
                return "commands"
        return "unrunnable"


def pages() -> list[Path]:
    """Every page whose blocks are checked: the docs and the README."""
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def blocks(page: Path) -> list[Block]:
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        not_run = None if marker is None else marker["rest"].strip().removeprefix(":").strip()
        found.append(Block(page, index + 1, opening["info"].strip().split(" ")[0].lower(), "\n".join(body), not_run))
        index = end + 1
    return found


def stray_markers(page: Path) -> list[str]:
    """`not run` markers that are not on the line right before a fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    return [
        f"{shown(page)}:{number}"
        for number, line in enumerate(lines, start=1)
        if MARKER.match(line) and (number >= len(lines) or not FENCE.match(lines[number]))
    ]


def shown(page: Path) -> str:
    """A page's path as messages show it: from the repository's root when it is in it."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def names_the_proxy(text: str) -> bool:
    return any(url in text for url in PROXY_URLS)


def logical_lines(script: str) -> list[str]:
    """The commands of a shell block: comments and blank lines dropped, continuations and quotes joined."""
    commands = []
    current = ""
    for line in script.splitlines():
        current += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            words = shlex.split(current, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if words:
            commands.append(current.strip())
        current = ""
    if current.strip():
        commands.append(current.strip())
    return commands


def _skip_word(text: str, start: int) -> int:
    """The end of the shell word at ``start``: quotes and ``$(…)`` included."""
    index = start
    depth = 0
    quote = ""
    while index < len(text):
        char = text[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif text.startswith("$(", index):
            depth += 1
            index += 1
        elif char == ")" and depth:
            depth -= 1
        elif char.isspace() and not depth:
            break
        index += 1
    return index


def _without_assignments(command: str) -> str:
    """``command`` without its leading ``export`` and ``NAME=value`` words."""
    text = command.strip()
    while True:
        if text.startswith("export "):
            text = text[len("export ") :].lstrip()
        elif ASSIGNMENT.match(text):
            text = text[_skip_word(text, 0) :].lstrip()
        else:
            return "" if text.startswith("#") else text  # a comment after the assignments


def is_assignments(command: str) -> bool:
    """A line of settings: only ``NAME=value`` words, no command substitution."""
    return "$(" not in command and "`" not in command and not _without_assignments(command)


def is_runnable_command(command: str) -> bool:
    """A line that runs ``llmguard`` or ``curl`` (or only assigns, maybe from ``$(curl …)``)."""
    rest = _without_assignments(command)
    if not rest:
        return True
    return rest.split(maxsplit=1)[0] in RUNNABLE_COMMANDS


def assigned_variables(script: str, env: dict[str, str]) -> dict[str, str]:
    """The variables a settings block sets, as bash evaluates it (what bash sets by itself left out)."""

    def environment_after(script: str) -> dict[str, str]:
        dump = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
        probe = f"set -a\n{script}\nset +a\nexec {dump}"
        result = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        after: dict[str, str] = json.loads(result.stdout)
        return after

    before = environment_after(":")
    return {name: value for name, value in environment_after(script).items() if before.get(name) != value}


# -- running Python blocks ---------------------------------------------------------------------------


def python_job(pages: dict[str, Sequence[Block]], replacements: dict[str, str] | None = None) -> str:
    """The JSON a ``run-python`` subprocess reads: for each page, its blocks to run, with their places."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for page, page_blocks in pages.items():
        jobs[page] = []
        for block in page_blocks:
            code = block.text
            for old, new in (replacements or {}).items():
                code = code.replace(old, new)
            jobs[page].append({"where": block.where, "code": code})
    return json.dumps(jobs)


def run_python(job: str) -> int:
    """Run each page's blocks in order in a namespace of the page's own, in one process (imports are paid once).

    Prints ``{page: null, or the failure}`` as JSON on the last line of stdout: a failure names the block
    and stops its page, not the others.
    """
    import ast
    import asyncio

    results: dict[str, str | None] = {}
    for page, items in json.loads(job).items():
        namespace: dict[str, object] = {"__name__": "__main__"}
        results[page] = None
        for item in items:
            try:
                code = compile(item["code"], item["where"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(code, namespace)  # noqa: S307  # the docs' own examples
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            except BaseException:
                results[page] = f"{item['where']}: this block failed:\n{traceback.format_exc()}"
                break
    sys.stdout.flush()
    print("\n" + json.dumps(results))
    return 0 if not any(results.values()) else 1


# -- servers for command blocks ----------------------------------------------------------------------


def serve(args: Sequence[str]) -> int:
    """``llmguard serve ARGS`` in the background on a free loopback port; 0 once ``/healthz`` answers.

    The process, its URL, its log, the secrets it was given and whether it came up go to
    ``$DOCS_STATE/servers`` (one JSON a line), for the test to talk to it, read its log and stop it.
    A server that exits at start-up makes this exit with its status, its log on stderr.
    """
    state = Path(os.environ["DOCS_STATE"])
    kept = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        elif not arg.startswith(("--host=", "--port=")):
            kept.append(arg)
    port = _free_port()
    log = state / f"server-{port}.log"
    command = [sys.executable, "-m", "llmguard", "serve", "--host", "127.0.0.1", "--port", str(port), *kept]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    up = _wait_for_health(process, url)
    record = {"pid": process.pid, "url": url, "log": str(log), "secrets": _secret_values(), "up": up}
    with (state / "servers").open("a", encoding="utf-8") as servers:
        servers.write(json.dumps(record) + "\n")
    if up:
        print(f"llmguard serve {' '.join(kept)}: up at {url}")
        return 0
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        sys.stderr.write("llmguard did not start within 30 s:\n")
    sys.stderr.write(log.read_text(errors="replace"))
    return process.returncode if process.poll() is not None and process.returncode else 1


def _wait_for_health(process: subprocess.Popen[bytes], url: str) -> bool:
    # urllib, not httpx: this helper runs once per server a page starts, and imports cost seconds on a busy machine.
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:  # noqa: S310  # loopback
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


def servers(state: Path) -> list[dict[str, object]]:
    path = state / "servers"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stop_servers(state: Path) -> None:
    """Stop every server the page's blocks started (each in its own process group), and wait for them."""
    for record in servers(state):
        pid = record["pid"]
        assert isinstance(pid, int)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def shell_prelude() -> str:
    """What every command block runs first: `llmguard serve` becomes `serve()` above; the rest is the real CLI."""
    python = shlex.quote(sys.executable)
    helper = shlex.quote(str(Path(__file__).resolve()))
    cli = shlex.quote(str(Path(sys.executable).with_name("llmguard")))
    return (
        "set -euo pipefail\n"
        f'llmguard() {{ if [ "${{1:-}}" = serve ]; then shift; {python} {helper} serve "$@"; else {cli} "$@"; fi; }}\n'
    )


def secret_names() -> str:
    """The variables whose values are secrets, for ``$DOCS_SECRET_NAMES`` (the helper does not import llmguard)."""
    from llmguard._settings import declarations

    return ",".join(variable for _, declared in declarations() if declared.secret for variable in declared.variables)


def _secret_values() -> list[str]:
    names = os.environ.get("DOCS_SECRET_NAMES", "").split(",")
    return [os.environ[name] for name in names if name and os.environ.get(name)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (the servers are not this process's children: the `serve` helper started them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited; its parent reaps it


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["run-python"]:
        return run_python(sys.stdin.read())
    print("usage: docs_blocks.py serve ARGS… | run-python < job.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
