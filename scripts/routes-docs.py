"""Write the routes table and the errors table of docs/reference/routes.md, from the spec and the errors.

    .venv/bin/python scripts/routes-docs.py          # rewrite the two tables in docs/reference/routes.md
    .venv/bin/python scripts/routes-docs.py --check  # exit 1 when they are out of date

Each table sits between its markers (``<!-- routes:start … -->`` … ``<!-- routes:end -->``, and the
same with ``errors``), as the settings table does in docs/reference/configuration.md; the text
around them is written by hand. What the tables say comes from the two places that are tested
against a real server:

- the routes, from docs/openapi.yaml (``tests/test_openapi.py`` fuzzes ``llmguard serve`` with it):
  each operation's summary and the statuses it answers with;
- the errors, from every ``LLMGuardError`` class of ``llmguard._errors`` (its code and the ``type``
  OpenAI's shape gives it on ``/v1``) and from the spec: the status and meaning in the ``ErrorCode``
  table, and the headers of the responses that carry the code.

``tests/test_docs.py`` fails when the committed tables differ from what this prints.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML, a dev dependency (mkdocs, schemathesis)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "openapi.yaml"
PAGE = ROOT / "docs" / "reference" / "routes.md"
COMMAND = ".venv/bin/python scripts/routes-docs.py"
METHODS = ("get", "post", "put", "patch", "delete", "options")
#: The headers of an error response worth a column (what a client acts on), as the table shows them.
NOTABLE_HEADERS = {
    "Retry-After": "`Retry-After`",
    "WWW-Authenticate": "`WWW-Authenticate`",
    "Allow": "`Allow`",
    "Connection": "`Connection: close`",
}

Spec = Mapping[str, Any]


def load_spec() -> Spec:
    spec: Spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start", f"<!-- {name}:end -->"


def resolve(spec: Spec, node: Any) -> Any:
    """``node`` with its ``$ref`` (and theirs) followed."""
    while isinstance(node, Mapping) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations(spec: Spec) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(METHOD, path, operation), in the spec's order."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def codes_in(spec: Spec, schema: Any) -> set[str]:
    """The error codes a response schema narrows ``error`` (or OpenAI's ``error.code``) to."""
    if isinstance(schema, Mapping) and schema.get("$ref", "").endswith("/ErrorCode"):
        return set()  # the base schema: any code, so none in particular
    schema = resolve(spec, schema)
    if not isinstance(schema, Mapping):
        return set()
    found: set[str] = set()
    for key in ("allOf", "oneOf", "anyOf"):
        for part in schema.get(key, ()):
            found |= codes_in(spec, part)
    error = schema.get("properties", {}).get("error")
    if isinstance(error, Mapping):
        for node in (error, error.get("properties", {}).get("code", {})):
            if "const" in node:
                found.add(node["const"])
            found.update(node.get("enum", ()))
    return found


def error_responses(spec: Spec) -> dict[str, list[Mapping[str, Any]]]:
    """Every response (resolved) that may carry each error code."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    for _, _, operation in operations(spec):
        for response in operation["responses"].values():
            response = resolve(spec, response)
            for media in response.get("content", {}).values():
                for code in codes_in(spec, media.get("schema")):
                    found.setdefault(code, []).append(response)
    return found


def code_table(spec: Spec) -> dict[str, tuple[str, str]]:
    """The ``ErrorCode`` schema's own table: code → (status, meaning)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in spec["components"]["schemas"]["ErrorCode"]["description"].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def routes_markdown(spec: Spec) -> str:
    lines = ["| route | what | answers with |", "| --- | --- | --- |"]
    preflights = []
    for method, path, operation in operations(spec):
        if method == "OPTIONS":
            preflights.append(f"`{path}`")
            continue
        statuses = ", ".join(sorted(operation["responses"]))
        lines.append(f"| `{method} {path}` | {_cell(operation.get('summary', ''))} | {statuses} |")
    text = "\n".join(lines) + "\n"
    if preflights:
        text += f"\nCORS preflights (`OPTIONS`, answered for allowed origins only): {', '.join(preflights)}.\n"
    return text


def errors_markdown(spec: Spec) -> str:
    from llmguard._errors import LLMGuardError  # the errors module alone, as scripts/error-codes.py does

    classes: dict[str, type[LLMGuardError]] = {}
    pending: list[type[LLMGuardError]] = [LLMGuardError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("llmguard."):
            classes.setdefault(cls.code, cls)
    order = list(spec["components"]["schemas"]["ErrorCode"]["enum"])
    described = code_table(spec)
    responses = error_responses(spec)
    lines = ["| code | status | when | headers | `type` on `/v1` |", "| --- | --- | --- | --- | --- |"]
    for code in sorted(classes, key=lambda code: (order.index(code) if code in order else len(order), code)):
        cls = classes[code]
        status, meaning = described.get(code, (str(cls.default_status), cls.default_message))
        headers = [
            shown
            for name, shown in NOTABLE_HEADERS.items()
            if any(name in response.get("headers", {}) for response in responses.get(code, ()))
        ]
        lines.append(f"| `{code}` | {status} | {_cell(meaning)} | {', '.join(headers)} | `{cls.openai_type}` |")
    return "\n".join(lines) + "\n"


def with_tables(text: str, spec: Spec) -> str:
    """``text`` (the page) with both generated tables between their markers."""
    for name, table in (("routes", routes_markdown(spec)), ("errors", errors_markdown(spec))):
        start, end = markers(name)
        begin = text.index(start)
        body = text.index("\n", begin) + 1
        text = text[:body] + table + text[text.index(end, body) :]
    return text


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: no pipe, no line break, no HTML (``<llmguard-chat>`` is a name)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str]) -> int:
    current = PAGE.read_text(encoding="utf-8")
    fresh = with_tables(current, load_spec())
    if argv[1:] == ["--check"]:
        if current == fresh:
            return 0
        print(f"{PAGE.relative_to(ROOT)}'s tables are out of date: run `{COMMAND}` and commit it.", file=sys.stderr)
        return 1
    if argv[1:]:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    PAGE.write_text(fresh, encoding="utf-8")
    print(f"{PAGE.relative_to(ROOT)}: {'tables updated' if fresh != current else 'tables already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
