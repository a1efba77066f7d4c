"""The settings as documentation, made from their declarations: ``llmguard serve --help`` and the docs' table.

Regenerate the table of the configuration reference (between its
``settings:start`` and ``settings:end`` markers) after changing a declaration::

    python -m llmguard._settings_docs docs/reference/configuration.md

With no path, the table goes to stdout.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from llmguard._settings import SHORTHANDS, declarations

START, END = "<!-- settings:start", "<!-- settings:end -->"
PAGE = "docs/reference/configuration.md"
REGENERATE = f"python -m llmguard._settings_docs {PAGE}"


class Row(NamedTuple):
    variables: tuple[str, ...]
    default: str
    help: str
    feeds: str


def rows() -> Iterator[Row]:
    """One row per variable the settings read (aliases with theirs), in the order of the declarations."""
    pending = list(SHORTHANDS)
    for item, declared in declarations():
        for shorthand in [shorthand for shorthand in pending if item.name in shorthand.fields]:
            pending.remove(shorthand)
            yield Row((shorthand.env,), shorthand.default, shorthand.help, shorthand.feeds)
        yield Row(declared.variables, declared.default or _shown_default(item), declared.help, declared.feeds)


def markdown() -> str:
    """The settings table of the configuration reference."""
    lines = ["| variable | default | purpose | feeds |", "| --- | --- | --- | --- |"]
    for row in rows():
        variables = " or ".join(f"`{name}`" for name in row.variables)
        feeds = ", ".join(_code(part.strip()) for part in row.feeds.split(", "))
        lines.append(f"| {variables} | {row.default} | {row.help} | {feeds} |")
    return "\n".join(lines) + "\n"


def plain_text(width: int = 100) -> str:
    """Every variable with its default and help, for ``llmguard serve --help``."""
    lines = ["settings (environment variables; empty ones count as unset):"]
    for row in rows():
        lines.append("  " + " or ".join(row.variables) + f"  (default: {_plain(row.default)})")
        text = _plain(row.help)
        lines += textwrap.wrap(text, width=width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def update_page(path: Path) -> bool:
    """Write the table between the markers of ``path``; whether anything changed."""
    text = path.read_text(encoding="utf-8")
    updated = with_table(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


def with_table(text: str) -> str:
    """``text`` (a page) with the generated table between its markers."""
    start = text.index(START)
    body = text.index("\n", start) + 1
    end = text.index(END, body)
    return text[:body] + markdown() + text[end:]


def table_in(text: str) -> str:
    """What is between the markers of ``text`` now."""
    start = text.index(START)
    return text[text.index("\n", start) + 1 : text.index(END, start)]


def _shown_default(item: dataclasses.Field[object]) -> str:
    value = item.default
    if value is None:
        return "off"
    if value == "":
        return "empty"
    if value == ():
        return "none"
    if isinstance(value, tuple):
        return ", ".join(f"`{part}`" for part in value)
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _code(feeds: str) -> str:
    """``IPRateLimit(limit=) of /api/token`` → the call in code, the rest as words."""
    call, paren, rest = feeds.partition(")")
    return f"`{call})`{rest}" if paren and "(" in call else feeds


def _plain(text: str) -> str:
    return text.replace("`", "")


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        sys.stdout.write(markdown())
        return 0
    for path in paths:
        if START not in Path(path).read_text(encoding="utf-8"):
            # The table lived in README.md before the docs site; say where it is now.
            print(f"{path} has no settings table (no {START} marker): it is in {PAGE}; run `{REGENERATE}`")
            return 1
        changed = update_page(Path(path))
        print(f"{path}: {'settings table updated' if changed else 'settings table already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
