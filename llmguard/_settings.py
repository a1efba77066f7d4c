"""Every setting of the bundled app, read and validated in this one place.

``Settings.from_env()`` reads the environment variables of the README's table;
``Settings(...)`` takes the same values as keyword arguments. Either way every
value is checked at construction, and a bad one raises ``SettingsError`` naming
the variable (or argument) and the value, so a misconfigured deploy fails at
start-up instead of on the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import limits

from llmguard._origin import normalize_origin
from llmguard._prices import DEFAULT_PRICES, Price, parse_prices, price_of
from llmguard._storage import redact_url
from llmguard._upstream import token_limit_param

DEFAULT_MODEL = "gpt-4.1-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MIN_SECRET_BYTES = 32

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-z]+)?\s*$")
_OFF = {"off", "none", "false", "no", "disabled"}


class SettingsError(ValueError):
    """A setting has a value llmguard cannot use."""

    def __init__(
        self, name: str, value: object, reason: str, *, secret: bool = False, shown: str | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        text = "" if secret else f" has value {shown if shown is not None else repr(value)}"
        super().__init__(f"Setting {name}{text}: {reason}")


# -- parsers: from an environment string to a typed value ----------------------------


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"1 minute"``, ``"15 minutes"``, ``"2h"``, ``"1 day"`` → seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match or not (match.group(1) or match.group(2)):
        raise ValueError("expected a duration such as '90', '30 seconds', '15 minutes' or '1 day'")
    number, unit = match.group(1), match.group(2)
    if unit is not None and unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; use seconds, minutes, hours or days")
    return float(number or 1) * _UNITS[unit or "s"]


def _parse_int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError("expected a whole number") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() in _OFF else parse(text)

    return parse_optional


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _env(
    name: str,
    parse: Callable[[str], Any] = str,
    *,
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    return {"env": name, "parse": parse, "secret": secret, "redact": redact}


def _shown(item: dataclasses.Field[Any], value: object) -> str:
    """How a setting's value may appear in a message or a log line."""
    redact = item.metadata.get("redact")
    if redact is not None and isinstance(value, str):
        return repr(redact(value))
    return repr(value)


# -- the settings ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration of the bundled app (``create_app``) and the ``llmguard serve`` CLI.

    Durations are seconds; rate strings use the ``limits`` notation
    (``"10/minute"``, ``"100000 per day"``); ``None`` switches an optional
    limit off.
    """

    openai_api_key: str | None = field(default=None, repr=False, metadata=_env("OPENAI_API_KEY", secret=True))
    jwt_secret: str | None = field(default=None, repr=False, metadata=_env("JWT_SECRET", secret=True))
    allowed_origins: tuple[str, ...] = field(
        default=("http://localhost:5173",), metadata=_env("ALLOWED_ORIGIN", _parse_list)
    )
    system_prompt: str = field(default="", metadata=_env("SYSTEM_PROMPT"))
    allow_client_system: bool = field(default=True, metadata=_env("ALLOW_CLIENT_SYSTEM", _parse_bool))
    rate_limit_max: int = field(default=60, metadata=_env("RATE_LIMIT_MAX", _parse_int))
    rate_limit_window: float = field(default=60, metadata=_env("RATE_LIMIT_WINDOW", parse_duration))
    token_rate_limit: str = field(default="10/minute", metadata=_env("TOKEN_RATE_LIMIT"))
    openai_base_url: str = field(default=DEFAULT_BASE_URL, metadata=_env("OPENAI_BASE_URL"))
    openai_model: str = field(default=DEFAULT_MODEL, metadata=_env("OPENAI_MODEL"))
    allowed_models: tuple[str, ...] = field(default=(), metadata=_env("ALLOWED_MODELS", _parse_list))
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = field(
        default="auto", metadata=_env("MAX_TOKENS_PARAM")
    )
    jwt_ttl: float = field(default=900, metadata=_env("JWT_TTL", parse_duration))
    jwt_issuer: str = field(default="llmguard", metadata=_env("JWT_ISSUER"))
    jwt_audience: str = field(default="llmguard", metadata=_env("JWT_AUDIENCE"))
    jwt_max_uses: int | None = field(default=None, metadata=_env("JWT_MAX_USES", _optional(_parse_int)))
    max_tokens: int = field(default=2000, metadata=_env("MAX_TOKENS", _parse_int))
    max_prompt_tokens: int = field(default=8000, metadata=_env("MAX_PROMPT_TOKENS", _parse_int))
    tokens_per_ip: str | None = field(default="100000/day", metadata=_env("TOKENS_PER_IP", _optional(str)))
    monthly_token_cap: int | None = field(default=None, metadata=_env("MONTHLY_TOKEN_CAP", _optional(_parse_int)))
    monthly_spend_cap_usd: float | None = field(
        default=None, metadata=_env("MONTHLY_SPEND_CAP_USD", _optional(_parse_float))
    )
    storage_url: str = field(default="memory://", repr=False, metadata=_env("STORAGE_URL", redact=redact_url))
    storage_failure: Literal["closed", "open"] = field(default="closed", metadata=_env("STORAGE_FAILURE"))
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_env("TRUSTED_PROXIES", _parse_list))
    client_ip_header: str | None = field(default=None, metadata=_env("CLIENT_IP_HEADER", _optional(str)))
    model_prices: Mapping[str, Price] = field(default_factory=dict, metadata=_env("MODEL_PRICES", parse_prices))
    storage_timeout: float = field(default=2.0, metadata=_env("STORAGE_TIMEOUT", parse_duration))
    log_format: Literal["text", "json"] = field(default="text", metadata=_env("LOG_FORMAT"))
    log_level: str = field(default="info", metadata=_env("LOG_LEVEL"))
    max_body_bytes: int = field(default=1_048_576, metadata=_env("MAX_BODY_BYTES", _parse_int))
    body_timeout: float = field(default=10, metadata=_env("BODY_TIMEOUT", parse_duration))
    header_timeout: float = field(default=10, metadata=_env("HEADER_TIMEOUT", parse_duration))
    keep_alive_timeout: float = field(default=5, metadata=_env("KEEP_ALIVE_TIMEOUT", parse_duration))
    max_connections: int = field(default=1000, metadata=_env("MAX_CONNECTIONS", _parse_int))
    request_timeout: float = field(default=120, metadata=_env("REQUEST_TIMEOUT", parse_duration))
    upstream_retries: int = field(default=2, metadata=_env("UPSTREAM_RETRIES", _parse_int))
    upstream_transport: Literal["auto", "httpx", "aiohttp"] = field(default="auto", metadata=_env("UPSTREAM_TRANSPORT"))
    demo: bool = field(default=False, metadata=_env("LLMGUARD_DEMO", _parse_bool))
    demo_page: bool | None = field(default=None, metadata=_env("DEMO_PAGE", _parse_bool))

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            try:
                normalized = check(value)
            except (ValueError, TypeError) as exc:
                item = _FIELDS[name]
                secret = bool(item.metadata.get("secret"))
                raise SettingsError(name, value, str(exc), secret=secret, shown=_shown(item, value)) from None
            if normalized is not value:
                object.__setattr__(self, name, normalized)
        unpriced = [
            model for model in (self.openai_model, *self.allowed_models) if price_of(model, self.prices) is None
        ]
        if self.monthly_spend_cap_usd is not None and unpriced:
            raise SettingsError(
                "model_prices",
                dict(self.model_prices),
                f"MONTHLY_SPEND_CAP_USD needs the price of {unpriced[0]!r}: add it, as "
                f"'{unpriced[0]}=<input>/<output>' in US dollars per million tokens",
            )
        if not self.demo and not self.openai_api_key:
            raise SettingsError(
                "openai_api_key",
                None,
                "the provider key is required (or run the offline demo)",
                secret=True,
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``).

        Empty variables count as unset. ``overrides`` win over the environment.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        texts: dict[str, str] = {}
        for item in dataclasses.fields(cls):
            text = environ.get(item.metadata["env"], "")
            if item.name in overrides or not text.strip():
                continue
            texts[item.name] = text
            try:
                values[item.name] = item.metadata["parse"](text)
            except ValueError as exc:
                env, secret = item.metadata["env"], item.metadata["secret"]
                raise SettingsError(env, text, str(exc), secret=secret, shown=_shown(item, text)) from None
        values.update(overrides)
        try:
            return cls(**values)
        except SettingsError as exc:
            item = _FIELDS[exc.name]
            # Show what the user wrote ('2 days'), not what it was parsed into (172800.0).
            default = item.default
            if default is dataclasses.MISSING and item.default_factory is not dataclasses.MISSING:
                default = item.default_factory()
            value = texts.get(exc.name, values.get(exc.name, default))
            env, secret = item.metadata["env"], item.metadata["secret"]
            raise SettingsError(env, value, exc.reason, secret=secret, shown=_shown(item, value)) from None

    def to_env(self) -> dict[str, str | None]:
        """Every setting as the environment variable that reads back to exactly this value.

        ``None`` means the variable must be unset. ``llmguard serve --workers``
        hands its settings to the workers this way, so each worker runs on
        exactly what a single process would (``--env-file``, ``--demo`` and
        the generated secret included).
        """
        environ: dict[str, str | None] = {}
        for item in dataclasses.fields(self):
            environ[item.metadata["env"]] = _to_text(getattr(self, item.name))
        return environ

    def describe(self) -> dict[str, str]:
        """Every setting by its variable, as it may be logged: secrets only say whether they are set."""
        described = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata["secret"]:
                text = "set" if value else "unset"
            else:
                text = _to_text(value) or ""
                if item.metadata.get("redact") is not None:
                    text = item.metadata["redact"](text)
            described[item.metadata["env"]] = text
        return described

    @property
    def prices(self) -> dict[str, Price]:
        """The built-in price table with ``model_prices`` laid over it."""
        return {**DEFAULT_PRICES, **self.model_prices}

    @property
    def rate_limit(self) -> str:
        """``rate_limit_max`` per ``rate_limit_window``, in the `limits` notation."""
        return f"{self.rate_limit_max} per {int(self.rate_limit_window)} seconds"

    @property
    def serves_demo_page(self) -> bool:
        return self.demo if self.demo_page is None else self.demo_page

    @property
    def token_limit_param(self) -> str:
        """The request field that carries the output cap for this provider."""
        return token_limit_param(self.openai_base_url, self.max_tokens_param)


def _to_text(value: object) -> str | None:
    """A setting's value as the environment text that parses back to it (``None``: leave unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    if isinstance(value, Mapping):
        return ",".join(f"{model}={price.input!r}/{price.output!r}" for model, price in value.items())
    return str(value)


# -- checks: typed value → normalized value, or ValueError -----------------------------


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected a whole number")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _optional_check(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _seconds(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number of seconds")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return value

    return check


def _whole_seconds(low: int, high: int) -> Callable[[object], float]:
    inner = _seconds(low, high)

    def check(value: object) -> float:
        seconds = inner(value)
        if seconds != int(seconds):
            raise ValueError("must be a whole number of seconds")
        return seconds

    return check


def _secret(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"is {len(value.encode())} bytes; an HS256 secret must be at least "
            f"{MIN_SECRET_BYTES} bytes (try: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return value


def _api_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    if any(ch in value for ch in "\r\n\t "):
        raise ValueError("contains whitespace; check for a stray newline or space")
    return value


def _origins(value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise TypeError("expected a list of origins")
    if not items:
        raise ValueError("expected at least one origin such as https://app.example.com")
    return tuple(dict.fromkeys(normalize_origin(item) for item in items))


def _rate(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a rate such as '10/minute'")
    try:
        item = limits.parse(value)
    except ValueError:
        raise ValueError("expected a rate such as '10/minute' or '100000 per day'") from None
    if item.amount < 1:
        raise ValueError("the amount must be at least 1")
    return value.strip()


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http(s) URL such as https://api.openai.com/v1")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.strip().rstrip("/")


def _non_empty(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        lowered = value.strip().lower() if isinstance(value, str) else value
        if lowered not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return lowered

    return check


def _storage_url(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a storage URL")
    url = value.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return url
    if not scheme.startswith("redis"):
        raise ValueError("expected memory:// or a redis:// URL such as redis://localhost:6379/0")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("the port is not a number") from None
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("expected a host, as in redis://localhost:6379/0")
        try:
            from redis.connection import parse_url
        except ImportError:
            raise ValueError("a redis:// storage needs the redis package: pip install 'llmguard[redis]'") from None
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading of it, which would otherwise fail at the first request
        except ValueError as exc:
            raise ValueError(redact_url(str(exc))) from None
    return url


def _proxies(value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError("expected a list of IP addresses or CIDR networks")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _models(value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in items):
        raise TypeError("expected a list of model names")
    return tuple(dict.fromkeys(item.strip() for item in items))


def _header_name(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value.strip()):
        raise ValueError("expected a header name such as Fly-Client-IP or CF-Connecting-IP")
    if value.strip().lower() == "x-forwarded-for":
        raise ValueError("X-Forwarded-For is always read from trusted proxies; name a platform header here")
    return value.strip().lower()


def _prices(value: object) -> Mapping[str, Price]:
    if not isinstance(value, Mapping) or not all(
        isinstance(model, str) and isinstance(price, Price) for model, price in value.items()
    ):
        raise TypeError("expected a mapping of model names to Price")
    return value


def _spend(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected an amount in US dollars")
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive amount in US dollars")
    return float(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _optional_bool(value: object) -> bool | None:
    return None if value is None else _bool(value)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "openai_api_key": _api_key,
    "jwt_secret": _secret,
    "allowed_origins": _origins,
    "system_prompt": _text,
    "allow_client_system": _bool,
    "rate_limit_max": _positive_int,
    "rate_limit_window": _whole_seconds(1, 366 * 86400),
    "token_rate_limit": _rate,
    "openai_base_url": _base_url,
    "openai_model": _non_empty,
    "allowed_models": _models,
    "max_tokens_param": _choice("auto", "max_tokens", "max_completion_tokens"),
    "jwt_ttl": _whole_seconds(10, 86400),
    "jwt_issuer": _non_empty,
    "jwt_audience": _non_empty,
    "jwt_max_uses": _optional_check(_positive_int),
    "max_tokens": _positive_int,
    "max_prompt_tokens": _positive_int,
    "tokens_per_ip": _optional_check(_rate),
    "monthly_token_cap": _optional_check(_positive_int),
    "monthly_spend_cap_usd": _optional_check(_spend),
    "storage_url": _storage_url,
    "storage_failure": _choice("closed", "open"),
    "trusted_proxies": _proxies,
    "client_ip_header": _optional_check(_header_name),
    "model_prices": _prices,
    "storage_timeout": _seconds(0.05, 60),
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "max_body_bytes": _positive_int,
    "body_timeout": _seconds(0.1, 600),
    "header_timeout": _seconds(0.1, 600),
    "keep_alive_timeout": _whole_seconds(1, 3600),
    "max_connections": _positive_int,
    "request_timeout": _seconds(1, 3600),
    "upstream_retries": _non_negative_int,
    "upstream_transport": _choice("auto", "httpx", "aiohttp"),
    "demo": _bool,
    "demo_page": _optional_bool,
}
_FIELDS = {item.name: item for item in dataclasses.fields(Settings)}
