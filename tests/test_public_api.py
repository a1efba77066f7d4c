import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from harness import KEY, SECRET, CountingApp

import llmguard

# What each exported name is. A middleware wraps an app (given its required options); an
# endpoint is an ASGI app built from options alone.
MIDDLEWARES: dict[str, dict[str, Any]] = {
    # One log line per request as it ends; with metrics=, records it in Metrics too.
    "AccessLog": {},
    "ClientIP": {},
    "IPRateLimit": {},
    "JWTAuth": {"secret": SECRET},
    "OpenAIErrors": {},
    "OriginFilter": {},
    "TokenBudget": {},
}
ENDPOINTS: dict[str, Callable[[], Any]] = {
    "ChatEndpoint": lambda: llmguard.ChatEndpoint(api_key=KEY),
    "OpenAICompatible": lambda: llmguard.OpenAICompatible(llmguard.ChatEndpoint(api_key=KEY)),
    "TokenEndpoint": lambda: llmguard.TokenEndpoint(secret=SECRET),
    # GET /api/challenge; TokenEndpoint(challenge=) checks its solutions.
    "TokenChallenge": lambda: llmguard.TokenChallenge(secret=SECRET),
    # GET /api/usage: what a client has left of the chat routes' limit and budget, read, not counted.
    "UsageEndpoint": lambda: llmguard.UsageEndpoint(),
    # GET /metrics, for a scraper with the token.
    "MetricsEndpoint": lambda: llmguard.MetricsEndpoint(llmguard.Metrics(), token="metrics-token-0123456789"),
}
# Puts one app under a path prefix of another, and runs both lifespans (tests/test_mount.py).
MOUNTS = ["PrefixMount"]
ERRORS = [
    "ChallengeFailed",
    "ChallengeRequired",
    "ChallengeUnavailable",
    "Forbidden",
    "InvalidRequest",
    "LLMGuardError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PromptTooLarge",
    "RateLimitExceeded",
    "RequestTimeout",
    "ServerBusy",
    "SpendCapReached",
    "StorageUnavailable",
    "TokenBudgetExceeded",
    "TokenCapReached",
    "Unauthorized",
    "UpstreamError",
]
VALUES = ["GenAITelemetry", "Metrics", "Price", "Settings", "SettingsError", "SpendAlerts", "Storage"]


def test_all_is_pinned_and_sorted() -> None:
    assert llmguard.__all__ == [
        "AccessLog",
        "ChallengeFailed",
        "ChallengeRequired",
        "ChallengeUnavailable",
        "ChatEndpoint",
        "ClientIP",
        "Forbidden",
        "GenAITelemetry",
        "IPRateLimit",
        "InvalidRequest",
        "JWTAuth",
        "LLMGuardError",
        "MethodNotAllowed",
        "Metrics",
        "MetricsEndpoint",
        "NotFound",
        "OpenAICompatible",
        "OpenAIErrors",
        "OriginFilter",
        "PayloadTooLarge",
        "PrefixMount",
        "Price",
        "PromptTooLarge",
        "RateLimitExceeded",
        "RequestTimeout",
        "ServerBusy",
        "Settings",
        "SettingsError",
        "SpendAlerts",
        "SpendCapReached",
        "Storage",
        "StorageUnavailable",
        "TokenBudget",
        "TokenBudgetExceeded",
        "TokenCapReached",
        "TokenChallenge",
        "TokenEndpoint",
        "Unauthorized",
        "UpstreamError",
        "UsageEndpoint",
        "__version__",
        "create_app",
    ]
    assert sorted(llmguard.__all__) == llmguard.__all__


def test_every_exported_name_has_a_known_kind() -> None:
    kinds = [*MIDDLEWARES, *ENDPOINTS, *MOUNTS, *ERRORS, *VALUES, "__version__", "create_app"]
    assert sorted(kinds) == llmguard.__all__
    for name in [*MIDDLEWARES, *ENDPOINTS, *MOUNTS, *ERRORS, *VALUES]:
        exported = getattr(llmguard, name)
        assert inspect.isclass(exported), name
        assert (exported.__name__, exported.__module__.split(".")[0]) == (name, "llmguard"), exported
    for name in [*MIDDLEWARES, *ENDPOINTS, *MOUNTS, *(value for value in VALUES if value != "SettingsError")]:
        assert not issubclass(getattr(llmguard, name), BaseException), name
    assert inspect.isfunction(llmguard.create_app)
    assert llmguard.create_app.__name__ == "create_app"
    assert next(iter(inspect.signature(llmguard.create_app).parameters)) == "settings"
    assert isinstance(llmguard.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", llmguard.__version__), llmguard.__version__
    assert issubclass(llmguard.SettingsError, ValueError)
    assert not issubclass(llmguard.SettingsError, llmguard.LLMGuardError)  # a start-up failure, not a reply
    assert llmguard.Price(1.0, 2.0) == llmguard.Price(input=1.0, output=2.0)


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_is_an_llmguard_error_whose_code_is_its_name(name: str) -> None:
    error = getattr(llmguard, name)
    assert issubclass(error, llmguard.LLMGuardError)
    assert 400 <= error().status_code <= 599
    if error is not llmguard.LLMGuardError:
        assert error.code == error.__name__


@pytest.mark.parametrize(("name", "options"), MIDDLEWARES.items(), ids=list(MIDDLEWARES))
async def test_each_middleware_wraps_an_app_and_passes_other_scopes_to_it(name: str, options: dict[str, Any]) -> None:
    inner = CountingApp()
    middleware = getattr(llmguard, name)(inner, **options)
    assert inspect.iscoroutinefunction(middleware.__call__)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"{name} answered a lifespan scope itself: {message}")

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert inner.scope_types == ["lifespan"]


@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_each_endpoint_is_built_from_options_and_is_an_asgi_app(name: str) -> None:
    endpoint = ENDPOINTS[name]()
    assert isinstance(endpoint, getattr(llmguard, name))
    assert inspect.iscoroutinefunction(endpoint.__call__)


def test_importing_llmguard_configures_no_logging() -> None:
    assert logging.getLogger("llmguard").handlers == []
