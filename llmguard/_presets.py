"""Locked prompts: named presets the server defines and a client picks by name (``"preset"``).

A preset is a system prompt and, optionally, the model, the output cap and the
temperature that go with it. The client names one; everything it sets wins
over what the client sent (a client may still ask for a lower output cap), so a
visitor can use the owner's prompts but not write their own. A token's
``presets`` claim (from an ``authenticate`` hook) narrows the presets it may
name; with such a claim, a request that names none gets the first listed.

``PRESETS`` is JSON, or ``@path`` to a JSON file::

    {"support": {"system": "You answer questions about Acme's products.", "model": "gpt-4.1-nano",
                 "max_tokens": 300, "temperature": 0.2}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from llmguard._errors import Forbidden, InvalidRequest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_KEYS = ("system", "model", "max_tokens", "temperature")


@dataclass(frozen=True, slots=True)
class Preset:
    """One locked prompt: its system prompt, and what else it sets (``None``: the server's)."""

    system: str
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    def as_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"system": self.system, "model": self.model, "max_tokens": self.max_tokens}
        values["temperature"] = self.temperature
        return {key: value for key, value in values.items() if value is not None}


class Presets(Mapping[str, Preset]):
    """The server's presets by name, in the order they were defined (read-only)."""

    def __init__(self, presets: Mapping[str, Preset] | None = None) -> None:
        self._presets = dict(presets or {})

    def __getitem__(self, name: str) -> Preset:
        return self._presets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self._presets.items()))

    def __repr__(self) -> str:
        return f"Presets({self._presets!r})"

    def to_json(self) -> str:
        """The JSON text ``PRESETS`` reads back to these presets."""
        return json.dumps({name: preset.as_dict() for name, preset in self.items()}, ensure_ascii=False)

    def choose(self, name: str | None, allowed: object = None) -> tuple[str, Preset] | None:
        """The preset a request gets: the one it names, within ``allowed`` (a token's ``presets`` claim).

        ``allowed`` is None when the token does not limit presets. Otherwise it
        is a list of names: another name is refused with 403, and a request
        naming none gets the first listed (none at all for an empty list).
        Raises ``InvalidRequest`` (422, ``param: "preset"``) for a name the
        server does not define.
        """
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(item, str) for item in allowed):
                # The authenticate hook's bug, not the client's: refuse rather than guess.
                raise Forbidden("This token's presets claim is not a list of preset names.", param="preset")
            if name is None:
                name = allowed[0] if allowed else None
        if name is None:
            return None
        preset = self._presets.get(name)
        if preset is None:
            raise InvalidRequest(f"There is no preset named {name[:64]!r} on this server.", param="preset")
        if allowed is not None and name not in allowed:
            raise Forbidden(f"This token may not use the preset {name!r}.", param="preset")
        return name, preset


def parse_presets(text: str) -> Presets:
    """``PRESETS``: JSON text, or ``@path`` to a JSON file; ``ValueError`` saying what is wrong."""
    source = text.strip()
    where = "the JSON"
    if source.startswith("@"):
        path = source[1:].strip()
        try:
            with open(path, encoding="utf-8") as file:
                source = file.read()
        except OSError as exc:
            raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
        where = f"the JSON in {path!r}"
    try:
        data = json.loads(source)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    return check_presets(data)


def check_presets(value: object, *, option: str = "presets") -> Presets:
    """Presets from a mapping of names to ``Preset`` objects or to dicts with ``system`` and the optional keys."""
    if isinstance(value, Presets):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f'{option}: expected an object of named presets, such as {{"support": {{"system": "..."}}}}')
    presets: dict[str, Preset] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{option}: the preset name {name!r} is not usable: letters, digits and _.:- only, at most 64"
            )
        presets[name] = item if isinstance(item, Preset) else _preset(name, item, option)
    return Presets(presets)


def _preset(name: str, item: object, option: str) -> Preset:
    where = f"{option}: preset {name!r}"
    if not isinstance(item, Mapping):
        raise ValueError(f'{where} must be an object such as {{"system": "..."}}')
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where} has an unknown key {unknown[0]!r}; expected {', '.join(_KEYS)}")
    system = item.get("system")
    if not isinstance(system, str) or not system.strip():
        raise ValueError(f"{where} needs a 'system' prompt (a non-empty string)")
    model = item.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"{where}: 'model' must be a model name")
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"{where}: 'max_tokens' must be a whole number, 1 or more")
    temperature = item.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or not 0 <= temperature <= 2
    ):
        raise ValueError(f"{where}: 'temperature' must be a number from 0 to 2")
    return Preset(
        system=system,
        model=model.strip() if model is not None else None,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
    )
