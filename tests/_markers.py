"""A pytest plugin (registered in pyproject.toml, so no test module needs editing) that

- marks the end-to-end modules `e2e`, so `scripts/check` runs the unit tests alone
  (`pytest -m "not e2e"`) and `scripts/test` runs everything;
- hands coverage's settings to the subprocesses the tests start (`llmguard serve`), which
  are given a fresh environment (`env={"PATH": ...}`) and so would otherwise not be measured.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

# The modules that start real servers (uvicorn, `llmguard serve`, Redis, Node) or are slow
# enough to break the inner loop's minute. A new slow module belongs here or in `*_e2e.py`.
E2E_MODULES = (
    "test_*_e2e.py",
    "test_e2e.py",
    "test_openapi.py",  # schemathesis against a served app
    "test_examples.py",  # builds and serves the examples
    "test_cli.py",  # `llmguard serve` as real processes
)

# Set by coverage itself (`[tool.coverage.run] patch = ["subprocess"]`) or by hand.
_COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: starts real servers or processes; scripts/check leaves it out")
    _pass_coverage_to_subprocesses()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `-m "not e2e"` (scripts/check) does not even import the e2e modules: their imports
    # (schemathesis, the examples) cost seconds of the inner loop's minute.
    if config.getoption("markexpr") == "not e2e" and _is_e2e(collection_path):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_e2e(item.path):
            item.add_marker(pytest.mark.e2e)


def _is_e2e(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in E2E_MODULES)


def _pass_coverage_to_subprocesses() -> None:
    inherited = {name: os.environ[name] for name in _COVERAGE_VARIABLES if name in os.environ}
    if not inherited:
        return  # not measuring: subprocess stays untouched
    original_init = subprocess.Popen.__init__

    def init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        env = kwargs.get("env")
        if env is not None:
            kwargs["env"] = {**inherited, **env}
        original_init(self, *args, **kwargs)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
