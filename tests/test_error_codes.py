"""js/src/error-codes.ts is generated from the Python errors: a stale copy fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "error-codes.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("error_codes_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_typescript_error_codes_match_the_python_errors() -> None:
    script = load_script()
    committed = script.OUTPUT.read_text(encoding="utf-8") if script.OUTPUT.exists() else ""
    assert committed == script.render(), f"js/src/error-codes.ts is out of date: run `{script.COMMAND}` and commit it."


def test_every_public_error_code_is_in_the_typescript_union() -> None:
    import llmguard  # here, not at the top: the file check above needs only llmguard._errors

    script = load_script()
    exported = {
        error.code
        for name in llmguard.__all__
        if isinstance(error := getattr(llmguard, name), type) and issubclass(error, llmguard.LLMGuardError)
    }
    generated = script.render()
    assert exported, "no LLMGuardError class is exported"
    for code in exported:
        assert f'| "{code}" //' in generated or f'| "{code}"; //' in generated
