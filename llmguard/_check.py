"""``llmguard check``: before a deploy, whether its settings hold and its storage and provider answer.

``llmguard serve`` only learns that the provider refuses its key, or that Redis
is out of reach, from the first browser that asks. ``check`` reads the same
settings the same way (a bad one: the message ``serve`` would print, exit 2),
asks the storage whether it answers and the provider for its model list with
the key (``GET {OPENAI_BASE_URL}/models``), and prints what the deployment
would run on. Exit 0 when everything answered, 1 when a check failed.

It never prints a secret: not the provider key (nor the provider's reply,
which may quote part of it), not a JWT secret (only its public key id), not a
password in the storage URL, not a webhook's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TextIO
from urllib.parse import urlsplit

import anyio
import httpx

from llmguard._jwt import key_id
from llmguard._prices import price_of
from llmguard._settings import Settings
from llmguard._storage import Storage, redact_url
from llmguard._version import __version__

#: Seconds the provider has to answer ``GET /models``.
PROVIDER_TIMEOUT = 10.0
Status = Literal["ok", "warning", "FAILED"]


@dataclass(frozen=True)
class Result:
    """What one check found: ``ok``, a ``warning`` (served anyway) or ``FAILED`` (exit 1), and why."""

    status: Status
    text: str

    @property
    def failed(self) -> bool:
        return self.status == "FAILED"


async def check_storage(settings: Settings) -> Result:
    """Whether the storage answers within ``STORAGE_TIMEOUT`` (``Storage.check()``, as ``/healthz`` asks)."""
    storage = Storage(**settings.arguments("Storage"))
    shown = redact_url(settings.storage_url)
    try:
        answers = await storage.check()
    finally:
        await storage.aclose()
    if not answers:
        wait = f"{settings.storage_timeout:g}"
        return Result("FAILED", f"{shown} does not answer (refused, or no reply within {wait} seconds)")
    return Result("ok", f"{shown} answers")


async def check_provider(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> Result:
    """Whether the provider takes the key: its model list, asked with the key, within ``PROVIDER_TIMEOUT`` seconds.

    Nothing the provider says is repeated (an error may quote part of the key):
    only its status code, and whether the model is in its list.
    """
    if settings.demo:
        return Result("ok", "offline demo: the built-in fake provider, no key used")
    url = f"{settings.openai_base_url}/models"
    shown = redact_url(url)
    headers = {"authorization": f"Bearer {settings.openai_api_key}", "user-agent": f"llmguard/{__version__}"}
    timeout = PROVIDER_TIMEOUT
    try:
        async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False) as client:
            # One deadline for the whole call: httpx's timeouts are per read, and a server may drip.
            with anyio.fail_after(timeout):
                response = await client.get(url, headers=headers, timeout=timeout)
    except TimeoutError:
        return Result("FAILED", f"{shown}: no answer within {timeout:g} seconds")
    except httpx.HTTPError as exc:
        return Result("FAILED", f"{shown}: cannot reach the provider ({type(exc).__name__})")
    status = response.status_code
    if status in (401, 403):
        return Result("FAILED", f"{shown}: the provider refused the key ({status}); check OPENAI_API_KEY")
    if status == 404:
        return Result("FAILED", f"{shown}: not found (404); check OPENAI_BASE_URL (it usually ends in /v1)")
    if status != 200:
        return Result("FAILED", f"{shown}: the provider answered {status}")
    try:
        listed = {str(entry.get("id")) for entry in response.json()["data"] if isinstance(entry, dict)}
    except (ValueError, KeyError, TypeError):
        return Result("FAILED", f"{shown}: answered 200 but not with a model list; check OPENAI_BASE_URL")
    missing = [model for model in (settings.openai_model, *settings.allowed_models) if model not in listed]
    if missing:
        names = ", ".join(missing)
        return Result("warning", f"{shown}: the key works; not in the provider's model list: {names}")
    return Result("ok", f"{shown}: the key works; {settings.openai_model} is listed")


def describe(settings: Settings) -> list[tuple[str, str]]:
    """What the deployment runs on, one ``(what, value)`` per row, without a secret in any of them."""
    caps = [f"{settings.monthly_token_cap:,} tokens"] if settings.monthly_token_cap is not None else []
    if settings.monthly_spend_cap_usd is not None:
        caps.append(f"${settings.monthly_spend_cap_usd:,.2f}")
    price = price_of(settings.openai_model, settings.prices)
    model = settings.openai_model + (
        f" (${price.input:.2f} in, ${price.output:.2f} out per million tokens)" if price else " (no price in the table)"
    )
    if settings.allowed_models:
        model += f"; clients may also name {', '.join(settings.allowed_models)}"
    challenge: str = settings.token_challenge
    if challenge.startswith("pow"):
        challenge += f" (ladder {settings.challenge_ladder})"
    if settings.jwt_secret is None:
        signing = "JWT_SECRET is not set: a random secret per process, so tokens die with it"
    else:
        signing = f"kid {key_id(settings.jwt_secret.encode())}"
    if settings.jwt_previous_secrets:
        kids = ", ".join(key_id(secret.encode()) for secret in settings.jwt_previous_secrets)
        signing += f"; previous secrets still verify: kid {kids}"
    proxies = ", ".join(settings.trusted_proxies) or "none"
    if settings.client_ip_header:
        proxies += f" (client IP from {settings.client_ip_header})"
    return [
        ("origins", ", ".join(settings.allowed_origins)),
        ("request rate", f"{settings.rate_limit_max} per {_duration(settings.rate_limit_window)} per client (chat)"),
        ("mint rate", f"{settings.token_rate_limit} per client (tokens minted)"),
        ("tokens per client", settings.tokens_per_ip or "off"),
        ("monthly caps", ", ".join(caps) or "off"),
        ("model", model),
        ("challenge", challenge),
        ("signing", signing),
        ("storage down", _FAILURE[settings.storage_failure]),
        ("metrics", _metrics(settings)),
        ("alerts", _alerts(settings)),
        ("trusted proxies", proxies),
    ]  # fmt: skip


_FAILURE = {"closed": "refuse with 503 StorageUnavailable", "open": "serve without limits, and warn"}


def _metrics(settings: Settings) -> str:
    # Declared by the metrics settings (METRICS); a build without them has none.
    return "on, at /metrics (bearer token)" if getattr(settings, "metrics", False) else "off"


def _alerts(settings: Settings) -> str:
    # The webhook's path is a credential: only where the alerts go.
    url = getattr(settings, "alert_webhook_url", None)
    if not isinstance(url, str) or not url:
        return "off"
    parts = urlsplit(url)
    return f"on, to {parts.scheme}://{parts.hostname}"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds:g} seconds"


async def run_checks(settings: Settings) -> tuple[Result, Result]:
    """The storage's and the provider's checks, side by side."""
    results: dict[str, Result] = {}

    async def storage() -> None:
        results["storage"] = await check_storage(settings)

    async def provider() -> None:
        results["provider"] = await check_provider(settings)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(storage)
        tasks.start_soon(provider)
    return results["storage"], results["provider"]


def report(settings: Settings, storage: Result, provider: Result, out: TextIO) -> int:
    """Print the checks and the settings as a table on ``out``; the exit status (0, or 1 when a check failed)."""
    checks = [("settings", Result("ok", "valid")), ("storage", storage), ("provider", provider)]
    width = max(len(name) for name, _ in describe(settings)) + 2
    print(f"llmguard {__version__} check", file=out)
    print(file=out)
    for name, result in checks:
        print(f"{name:<{width}}{result.status:<9}{result.text}", file=out)
    print(file=out)
    for name, value in describe(settings):
        print(f"{name:<{width}}{value}", file=out)
    failed = [name for name, result in checks if result.failed]
    print(file=out)
    if failed:
        print(f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}.", file=out)
        return 1
    print("All checks passed.", file=out)
    return 0


def check(settings: Settings, out: TextIO) -> int:
    """Run the checks and print the report; the exit status."""
    storage, provider = anyio.run(run_checks, settings)
    return report(settings, storage, provider, out)
