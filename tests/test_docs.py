"""The docs (docs/, README.md, mkdocs.yml): every code block runs or says why not; the generated parts are current.

What runs without a server is here (the inner loop runs it); blocks that need a real
``llmguard serve`` are run by tests/test_docs_e2e.py. tests/docs_blocks.py says how each kind of
block is run. ``scripts/test`` also builds the site (``mkdocs build --strict``), which checks
every link, anchor and nav entry.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML among the dev dependencies
from docs_blocks import (
    DOCS,
    ROOT,
    Block,
    all_blocks,
    assigned_variables,
    blocks,
    pages,
    python_job,
    shown,
    stray_markers,
)
from harness import KEY, SECRET

from llmguard import Settings
from llmguard._settings import SHORTHANDS, declarations

if sys.version_info >= (3, 11):
    import tomllib

BLOCKS = all_blocks()
ROUTES_SCRIPT = ROOT / "scripts" / "routes-docs.py"
#: What a Python block finds in its environment (tests/docs_blocks.py).
PYTHON_ENV = {"OPENAI_API_KEY": KEY, "JWT_SECRET": SECRET}
#: Variables a settings block may set besides llmguard's own: where `llmguard serve` listens.
SERVER_VARIABLES = {"PORT", "HOST"}


def by_kind(*kinds: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind in kinds and block.not_run is None]


def ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


# -- every block runs, or says why not ---------------------------------------------------------------


def test_the_docs_have_blocks_of_every_runnable_kind() -> None:
    """The parser finds what the pages hold (a test that looks at nothing passes nothing)."""
    kinds = {block.kind for block in BLOCKS}
    assert {"python", "python-server", "settings", "commands", "data", "inert"} <= kinds
    assert len(BLOCKS) > 50


def test_every_block_runs_or_says_why_not() -> None:
    problems = []
    for block in BLOCKS:
        if not block.language:
            problems.append(f"{block.where}: a fence without a language (use `text` for output and diagrams)")
        elif block.not_run == "":
            problems.append(f"{block.where}: `<!-- not run -->` without a reason: write `<!-- not run: why -->`")
        elif block.not_run is None and block.kind == "unrunnable":
            problems.append(
                f"{block.where}: a `{block.language}` block the docs tests cannot run: make it runnable "
                "(tests/docs_blocks.py says what runs) or put `<!-- not run: why -->` on the line before it"
            )
    for page in pages():
        problems += [f"{where}: a `not run` marker with no fence on the next line" for where in stray_markers(page)]
    assert not problems, "\n".join(problems)


def test_an_unmarked_block_that_cannot_run_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```ts\nchat('hi')\n```\n\n<!-- not run -->\n```html\n<p>\n```\n\n"
        "<!-- not run: a browser page -->\n```html\n<p>\n```\n\n"
        "```sh\npip install llmguard\n```\n\n```sh\nllmguard serve --demo\n```\n\n```sh\nRATE_LIMIT=5/minute\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(block.kind, block.not_run) for block in found] == [
        ("unrunnable", None),
        ("unrunnable", ""),
        ("unrunnable", "a browser page"),
        ("unrunnable", None),
        ("commands", None),
        ("settings", None),
    ]


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ("TOKEN_CHALLENGE=off llmguard serve --demo", "commands"),
        ("export JWT_SECRET=\"$(python3 -c 'print(1)')\"\nllmguard serve --port 8000", "commands"),
        (
            "TOKEN=$(curl -s -X POST http://127.0.0.1:8000/api/token \\\n  | python3 -c 'x')\ncurl -s localhost",
            "commands",
        ),
        ('PRESETS=\'{"a": {"system": "b"}}\'\n# PRESETS=@file', "settings"),
        ("llmguard serve --demo\nnpm run dev", "unrunnable"),
        ("python3 -m venv .venv && .venv/bin/pip install .", "unrunnable"),
        ("./scripts/bench", "unrunnable"),
        ("JWT_SECRET=$(llmguard keygen)", "commands"),
    ],
)
def test_shell_blocks_are_sorted_by_what_runs_them(script: str, kind: str, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"```sh\n{script}\n```\n", encoding="utf-8")
    assert blocks(page)[0].kind == kind


# -- blocks that run here -----------------------------------------------------------------------------


@pytest.mark.parametrize("block", by_kind("data"), ids=ids(by_kind("data")))
def test_data_blocks_parse(block: Block) -> None:
    if block.language == "json":
        json.loads(block.text)
    elif block.language == "toml":
        if sys.version_info >= (3, 11):
            tomllib.loads(block.text)
        else:
            raise RuntimeError("reading TOML takes tomllib, in the standard library from Python 3.11")
    else:
        yaml.safe_load(block.text)


KNOWN_VARIABLES = (
    {variable for _, declared in declarations() for variable in declared.variables}
    | {shorthand.env for shorthand in SHORTHANDS}
    | SERVER_VARIABLES
)


@pytest.mark.parametrize("block", by_kind("settings"), ids=ids(by_kind("settings")))
def test_settings_blocks_are_settings_a_server_starts_with(block: Block, tmp_path: Path) -> None:
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    assigned = assigned_variables(block.text, environment)
    assert assigned, f"{block.where}: sets nothing"
    unknown = set(assigned) - KNOWN_VARIABLES
    assert not unknown, f"{block.where}: {sorted(unknown)} are not llmguard settings"
    Settings.from_env({"OPENAI_API_KEY": KEY, **assigned})  # raises SettingsError naming the variable


def python_pages() -> list[Path]:
    """Pages whose Python blocks run here: none of them needs a server (else they all run in the e2e test)."""
    found = []
    for page in pages():
        runnable = [block for block in blocks(page) if block.language in ("python", "py", "python3")]
        runnable = [block for block in runnable if block.not_run is None]
        if runnable and all(block.kind == "python" for block in runnable):
            found.append(page)
    return found


def run_python(pages: list[Path], cwd: Path) -> tuple[dict[str, str | None], subprocess.CompletedProcess[str]]:
    """The Python blocks of ``pages``, in one subprocess, a namespace per page: {page: None or its failure}."""
    job = python_job(
        {
            str(page): [block for block in blocks(page) if block.kind == "python" and block.not_run is None]
            for page in pages
        }
    )
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), **PYTHON_ENV}
    environment.update({name: value for name, value in os.environ.items() if name.startswith("COVERAGE_")})
    helper = Path(__file__).with_name("docs_blocks.py")
    result = subprocess.run(
        [sys.executable, str(helper), "run-python"],
        input=job,
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=300,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"the Python blocks' process printed nothing (exit {result.returncode}):\n{result.stderr[-4000:]}"
    failures: dict[str, str | None] = json.loads(lines[-1])
    return failures, result


@pytest.fixture(scope="module")
def python_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    failures, _ = run_python(python_pages(), tmp_path_factory.mktemp("python-blocks"))
    return failures


@pytest.mark.parametrize("page", python_pages(), ids=[shown(page) for page in python_pages()])
def test_python_blocks_run(page: Path, python_failures: dict[str, str | None]) -> None:
    assert python_failures[str(page)] is None, python_failures[str(page)]


def test_a_failing_python_block_is_named_and_stops_only_its_page(tmp_path: Path) -> None:
    failing = tmp_path / "failing.md"
    failing.write_text("```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'x is 1'\n```\n", encoding="utf-8")
    other = tmp_path / "other.md"
    other.write_text(
        "```python\nassert 'x' not in globals()  # a namespace per page\nprint('ran')\n```\n", encoding="utf-8"
    )
    failures, result = run_python([failing, other], tmp_path)
    assert result.returncode == 1
    failure = failures[str(failing)]
    assert failure is not None
    assert failure.startswith(f"{failing}:7: this block failed")
    assert "AssertionError: x is 1" in failure
    assert failures[str(other)] is None
    assert "ran\n" in result.stdout


def test_python_blocks_may_await_at_the_top(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nimport asyncio\n\nawait asyncio.sleep(0)\nprint('awaited')\n```\n", encoding="utf-8")
    failures, result = run_python([page], tmp_path)
    assert failures == {str(page): None}, result.stderr
    assert result.stdout.startswith("awaited\n")


# -- generated parts ----------------------------------------------------------------------------------


@functools.cache
def load_routes_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routes_docs_script", ROUTES_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vars(module)["load_spec"] = functools.cache(module.load_spec)  # 2,000 lines of YAML: read once
    return module


def test_the_routes_and_errors_tables_are_generated() -> None:
    script = load_routes_script()
    page = script.PAGE.read_text(encoding="utf-8")
    assert page == script.with_tables(page, script.load_spec()), (
        "docs/reference/routes.md's tables differ from docs/openapi.yaml and llmguard/_errors.py: "
        f"run `{script.COMMAND}`"
    )


def test_the_errors_table_has_every_error_class_and_its_status() -> None:
    import llmguard._errors as errors

    script = load_routes_script()
    table = script.errors_markdown(script.load_spec())
    classes = [
        value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, errors.LLMGuardError)
    ]
    for cls in classes:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{cls.code}` |"))
        assert str(cls.default_status) in row.split(" | ")[1], f"{cls.code}: the spec's status differs from the class's"
        assert f"`{cls.openai_type}`" in row


def test_the_routes_script_rewrites_only_between_its_markers() -> None:
    script = load_routes_script()
    spec = script.load_spec()
    page = (
        "# Title\n\n<!-- routes:start keep -->\n| stale |\n<!-- routes:end -->\n\n"
        "Middle.\n\n<!-- errors:start -->\n<!-- errors:end -->\nEnd.\n"
    )
    updated = script.with_tables(page, spec)
    assert updated.startswith("# Title\n\n<!-- routes:start keep -->\n| route | what | answers with |\n")
    assert "\n<!-- routes:end -->\n\nMiddle.\n\n<!-- errors:start -->\n| code | status |" in updated
    assert updated.endswith("<!-- errors:end -->\nEnd.\n")
    assert "| stale |" not in updated
    assert "`POST /api/chat`" in updated
    assert script.with_tables(updated, spec) == updated


def test_the_routes_table_lists_every_operation_of_the_spec() -> None:
    script = load_routes_script()
    spec = script.load_spec()
    table = script.routes_markdown(spec)
    for method, path, _ in script.operations(spec):
        assert (f"`{method} {path}`" if method != "OPTIONS" else f"`{path}`") in table


def test_the_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_routes_script()
    page = tmp_path / "routes.md"
    page.write_text("<!-- routes:start -->\n<!-- routes:end -->\n<!-- errors:start -->\n<!-- errors:end -->\n")
    monkeypatch.setattr(script, "PAGE", page)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    assert script.main(["routes-docs.py", "--check"]) == 1
    assert script.main(["routes-docs.py"]) == 0
    assert script.main(["routes-docs.py", "--check"]) == 0


# -- the site and the README ----------------------------------------------------------------------------


def nav_pages(items: list[object]) -> Iterator[str]:
    for item in items:
        assert isinstance(item, dict)
        for value in item.values():
            if isinstance(value, list):
                yield from nav_pages(value)
            else:
                yield str(value)


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = set(nav_pages(config["nav"]))
    written = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert not written - listed, f"pages missing from mkdocs.yml's nav: {sorted(written - listed)}"
    assert config["strict"] is True
    assert config["theme"]["font"] is False  # no Google Fonts


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_the_readme_links_into_the_docs() -> None:
    """README's relative links work on GitHub: each names a file of the repository (and a heading of it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [match["target"] for match in LINK.finditer(readme) if "://" not in match["target"]]
    assert sum(target.startswith("docs/") for target in targets) >= 10
    for target in targets:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            headings = [
                line.lstrip("#").strip()
                for line in file.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")
            ]
            slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-") for heading in headings}
            assert anchor in slugs, f"README links to {target}: no such heading"


def test_the_sdk_reference_names_every_export_prop_and_css_variable() -> None:
    """js/src's public names, the widget's props and its CSS variables are all in the docs."""
    docs = "\n".join(page.read_text(encoding="utf-8") for page in DOCS.rglob("*.md"))
    reference = (DOCS / "reference" / "sdk.md").read_text(encoding="utf-8")
    index = (ROOT / "js" / "src" / "index.ts").read_text(encoding="utf-8")
    exported = {
        name.strip().split(" as ")[-1].strip()
        for group in re.findall(r"export \{([^}]*)\}", index)
        for name in group.split(",")
        if name.strip() and not name.strip().startswith("type ")
    }
    exported |= set(re.findall(r"^export (?:async )?(?:function|const|class) (\w+)", index, re.MULTILINE))
    assert {"chat", "streamChat", "configure", "createChatSession", "LLMGuardError"} <= exported
    for name in sorted(exported):
        assert f"`{name}" in docs, f"@llmguard/sdk exports {name}, which no docs page names"
    styles = (ROOT / "js" / "src" / "widget" / "styles.ts").read_text(encoding="utf-8")
    for variable in sorted(set(re.findall(r"--llmguard-[a-z-]+", styles))):
        assert f"`{variable}`" in reference, f"the widget reads {variable}, which docs/reference/sdk.md does not name"
    widget = (ROOT / "js" / "src" / "widget" / "react.ts").read_text(encoding="utf-8")
    props = widget[widget.index("export interface ChatWidgetProps") :]
    for prop in re.findall(r"^  (\w+)\?:", props[: props.index("\n}")], re.MULTILINE):
        assert f"`{prop}`" in reference, f"<ChatWidget {prop}> is not in docs/reference/sdk.md"
