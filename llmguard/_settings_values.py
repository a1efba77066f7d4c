"""The small functions settings are declared with: parsers (environment text → value) and checks.

A parser turns the text of an environment variable into a typed value and
raises ``ValueError`` saying what it expected. A check takes a typed value (from
a parser or from a keyword argument), returns it, normalized, and raises
``ValueError`` or ``TypeError`` with the reason only: ``Settings`` adds the
name of the setting and the value as the user wrote it.

Where a component already checks an argument, the setting uses that check
(``component(check_origins, "allow_origins")``) rather than a copy of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import limits

Parse = Callable[[str], Any]
Check = Callable[[Any], Any]

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-z]+)?\s*$")
_OFF = {"off", "none", "false", "no", "disabled"}
_RATE_EXAMPLE = "a rate such as '10/minute' or '100000 per day'"


# -- parsers: environment text → value ---------------------------------------------------


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"1 minute"``, ``"15 minutes"``, ``"2h"``, ``"1 day"`` → seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match or not (match.group(1) or match.group(2)):
        raise ValueError("expected a duration such as '90', '30 seconds', '15 minutes' or '1 day'")
    number, unit = match.group(1), match.group(2)
    if unit is not None and unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; use seconds, minutes, hours or days")
    return float(number or 1) * _UNITS[unit or "s"]


def parse_text(text: str) -> str:
    return text


def parse_int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError("expected a whole number") from None


def parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def parse_auto_bool(text: str) -> bool | None:
    """``true``/``false`` as ``parse_bool`` reads them, or ``auto`` → None (the component decides)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError("expected true, false or auto") from None


def parse_prefix(text: str) -> int:
    """A network prefix length, ``48`` or ``/48``."""
    return parse_int(text.strip().removeprefix("/"))


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def optional(parse: Parse) -> Parse:
    """``parse``, or ``None`` for ``off`` (and ``none``, ``false``, ``no``, ``disabled``)."""

    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() in _OFF else parse(text)

    return parse_optional


def parse_rate_window(text: str) -> tuple[int, float]:
    """``"60/minute"`` → ``(60, 60.0)``: the amount and the window in seconds, for ``RATE_LIMIT``."""
    try:
        item = limits.parse(text)
    except ValueError:
        raise ValueError(f"expected {_RATE_EXAMPLE}") from None
    return item.amount, float(item.get_expiry())


# -- checks: value → normalized value, or the reason it is refused ---------------------------


def component(check: Callable[..., Any], option: str) -> Check:
    """A component's own check of its argument ``option``, as a setting's check.

    The component's message names the option and the value; the setting names
    them its own way (the variable, the text the user wrote), so only the
    reason is kept.
    """

    def run(value: Any) -> Any:
        try:
            return check(value, option=option)
        except ValueError as exc:
            raise ValueError(_reason(str(exc), option, value)) from None

    return run


def _reason(message: str, option: str, value: object) -> str:
    for prefix in (f"{option} has value {value!r}: ", f"{option} has value ", f"{option}: ", f"{option} "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def keeps(check: Check) -> Check:
    """``check``, but the value is kept as it was (``check_secret`` would turn a str into bytes)."""

    def run(value: Any) -> Any:
        check(value)
        return value

    return run


def all_of(*checks: Check) -> Check:
    def run(value: Any) -> Any:
        for check in checks:
            value = check(value)
        return value

    return run


def or_none(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected a whole number")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def seconds(low: float, high: float) -> Check:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number of seconds")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return value

    return check


def whole_seconds(low: float = 1, high: float = math.inf) -> Check:
    inner = seconds(low, high)

    def check(value: object) -> float:
        number: float = inner(value)
        if number != int(number):
            raise ValueError("must be a whole number of seconds")
        return number

    return check


def choice(*choices: str) -> Check:
    def check(value: object) -> str:
        lowered = value.strip().lower() if isinstance(value, str) else value
        if lowered not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return lowered

    return check


def text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def non_empty(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def names(value: object) -> tuple[str, ...]:
    """A list of names (a single string is a list of one), stripped, without repeats."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in items):
        raise TypeError("expected a list of names")
    return tuple(dict.fromkeys(item.strip() for item in items))


def listed(value: object) -> Any:
    """A single string as a list of one (``Settings(trusted_proxies="10.0.0.1")``), anything else as given."""
    return (value,) if isinstance(value, str) else value


def as_strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value)


def decoded(value: bytes) -> str:
    return value.decode("latin-1")


def one_or_more(what: str) -> Check:
    def check(value: Any) -> Any:
        if not value:
            raise ValueError(f"expected at least one {what}")
        return value

    return check


def dollars(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected an amount in US dollars")
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive amount in US dollars")
    return float(value)


def api_key(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    if any(ch in value for ch in "\r\n\t "):
        raise ValueError("contains whitespace; check for a stray newline or space")
    return value


def url(value: object, *, example: str = "https://example.com/path") -> str:
    """An http(s) URL with a host, query allowed (a script's ``?render=explicit``)."""
    if not isinstance(value, str):
        raise TypeError("expected a URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"expected an http(s) URL such as {example}")
    return value.strip()


def base_url(value: object) -> str:
    """A provider's base URL: paths are appended to it, so no query or fragment, and no trailing slash."""
    text = url(value, example="https://api.openai.com/v1")
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return text.rstrip("/")


# -- checks that copy what a component checks again: to be replaced by the component's own ----
