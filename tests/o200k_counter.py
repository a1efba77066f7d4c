"""The exact o200k_base token count of a text, from gpt-tokenizer under Node (js/scripts/count-tokens.mjs).

One Node process answers every count of a test session. Without Node or the package, the
tests that need it fail and say what to run: they never skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent.parent / "js"
SCRIPT = JS / "scripts" / "count-tokens.mjs"
PACKAGE = JS / "node_modules" / "gpt-tokenizer"


class CounterUnavailable(RuntimeError):
    pass


class ExactCounter:
    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise CounterUnavailable(
                "`node` is not on PATH: the exact o200k_base count runs gpt-tokenizer in Node 20+."
            )
        if not PACKAGE.is_dir():
            raise CounterUnavailable(f"{PACKAGE} is missing: run `npm ci` in js/ (scripts/test does).")
        self._process = subprocess.Popen(
            [node, str(SCRIPT)],
            cwd=JS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # read only once it has stopped
            text=True,
            encoding="utf-8",
        )
        self.count("The counter answers.")

    def count(self, text: str) -> int:
        """How many tokens o200k_base makes of ``text``, special-token text counted as ordinary text."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        try:
            self._process.stdin.write(json.dumps(text) + "\n")  # ASCII, lone surrogates escaped
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            _, stderr = self._process.communicate(timeout=10)
            raise CounterUnavailable(f"{SCRIPT} stopped (exit status {self._process.returncode}): {stderr}")
        answer = json.loads(line)
        if not isinstance(answer, int):
            raise RuntimeError(f"{SCRIPT} answered {line.strip()} for {text[:80]!r}")
        return answer

    def close(self) -> None:
        self._process.communicate(timeout=10)
