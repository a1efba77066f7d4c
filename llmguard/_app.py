"""create_app: the whole stack as one Starlette app, to serve alone or mount under a prefix."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._access_log import AccessLog, Recorder
from llmguard._alerts import SpendAlerts
from llmguard._budget import TokenBudget
from llmguard._challenge import TokenChallenge
from llmguard._chat_endpoint import ChatEndpoint
from llmguard._client_ip import ClientIP
from llmguard._errors import LLMGuardError, MethodNotAllowed, NotFound, ServerBusy, error_response, send_error
from llmguard._fake_provider import FakeProvider
from llmguard._jwt_auth import JWTAuth
from llmguard._metrics import Metrics, MetricsEndpoint
from llmguard._openai_route import OpenAICompatible, OpenAIErrors
from llmguard._origin import OriginFilter
from llmguard._otel import GenAITelemetry
from llmguard._rate_limit import IPRateLimit
from llmguard._settings import Settings
from llmguard._state import request_state
from llmguard._static import Script, demo_page
from llmguard._storage import Storage
from llmguard._token_endpoint import Authenticate, TokenEndpoint
from llmguard._tokens import load as load_tokenizer
from llmguard._usage_endpoint import UsageEndpoint
from llmguard._version import __version__

logger = logging.getLogger("llmguard")

DEMO_BASE_URL = "http://offline-demo.invalid/v1"
DEMO_WORD_DELAY = 0.04


def create_app(
    settings: Settings | None = None,
    *,
    authenticate: Authenticate | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    captcha_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The bundled app: ``/api/token``, ``/api/chat``, ``/healthz`` and the demo page.

    ``/api/token``: OriginFilter ▶ IPRateLimit ▶ TokenEndpoint (▶ its TokenChallenge).
    ``/api/challenge``: OriginFilter ▶ IPRateLimit ▶ TokenChallenge.
    ``/api/chat``: OriginFilter ▶ IPRateLimit ▶ JWTAuth ▶ TokenBudget ▶ ChatEndpoint.
    ``/api/usage``: OriginFilter ▶ IPRateLimit ▶ JWTAuth (no use counted) ▶ UsageEndpoint.
    ``/v1/chat/completions`` and ``/v1/models``: the same, in OpenAI's shapes.
    ``/metrics`` (``METRICS=true``): MetricsEndpoint, for a scraper with ``METRICS_TOKEN``.
    ``OTEL=true``: ``GenAITelemetry`` records the provider calls to OpenTelemetry's global providers.
    All counting goes to one storage (``settings.storage_url``). With
    ``ALERT_WEBHOOK_URL``, a ``SpendAlerts`` posts as the monthly caps fill up
    (its background task runs in the app's lifespan).

    ``settings`` defaults to ``Settings.from_env()``. ``authenticate`` is
    passed to ``TokenEndpoint``; ``transport`` replaces the provider
    connection (tests use ``FakeProvider.transport()``), ``captcha_transport``
    the CAPTCHA verifier's.
    """
    settings = settings or Settings.from_env()
    secret = settings.jwt_secret or _ephemeral_secret()
    chat = _chat_endpoint(settings, transport)
    # Each component takes the settings its declarations say they feed (Settings.arguments).
    storage = Storage(**settings.arguments("Storage"))
    alerts = _spend_alerts(settings)

    def guarded(endpoint: ASGIApp) -> tuple[IPRateLimit, TokenBudget]:
        """IPRateLimit ▶ JWTAuth ▶ TokenBudget, as for /api/chat: one limit and one budget for both routes."""
        # MODEL_PRICES extends the built-in table rather than replacing it.
        budget_options = settings.arguments("TokenBudget") | {"prices": settings.prices}
        budget = TokenBudget(endpoint, storage=storage, alerts=alerts, **budget_options)
        auth = JWTAuth(budget, storage=storage, **settings.arguments("JWTAuth") | {"secret": secret})
        # Replies say what is left of the request limit (and, from the budget, of the token window).
        return IPRateLimit(auth, limit=settings.rate_limit, name="chat", storage=storage, remaining=True), budget

    chat_stack, budget = guarded(chat)
    challenge = TokenChallenge(
        **settings.arguments("TokenChallenge"),
        secret=secret,
        storage=storage,
        allow_origins=settings.allowed_origins,
        # The ladder climbs with what a client spent of its token window, as well as with its mints.
        spent=budget.client_share if budget.window is not None else None,
        transport=captcha_transport,
    )
    token = TokenEndpoint(
        **settings.arguments("TokenEndpoint") | {"secret": secret, "ttl": int(settings.jwt_ttl)},
        authenticate=authenticate,
        challenge=challenge,
    )
    token_stack = IPRateLimit(token, limit=settings.token_rate_limit, name="token", storage=storage)
    # Challenges are counted apart from mints: fetching one does not use up the client's mints.
    challenge_stack = IPRateLimit(challenge, limit=settings.token_rate_limit, name="challenge", storage=storage)
    # What a browser has left: the chat limit and budget read, never counted; its own limit, the chat rate
    # counted apart; a single-use token is not used up by it.
    usage = UsageEndpoint(requests=chat_stack, budget=budget)
    auth_options = settings.arguments("JWTAuth") | {"secret": secret, "max_uses": None}
    usage_stack = IPRateLimit(
        JWTAuth(usage, storage=storage, **auth_options), limit=settings.rate_limit, name="usage", storage=storage
    )
    api_routes = [
        Route("/token", token_stack),
        Route("/challenge", challenge_stack),
        Route("/chat", chat_stack),
        Route("/usage", usage_stack),
    ]
    api = ServerBusyGate(Router(routes=api_routes))

    async def healthz(request: Request) -> Response:
        storage_ok = await storage.check()
        body = {"status": "ok" if storage_ok else "degraded", "version": __version__, "storage": storage_ok}
        return JSONResponse(body, headers={"cache-control": "no-store"})

    origins = settings.arguments("OriginFilter")
    # Every route answers a request that came past MAX_CONNECTIONS (bundled server) with 503
    # ServerBusy, inside its own layers: CORS on /api, OpenAI's error shape on /v1.
    openai = ServerBusyGate(guarded(OpenAICompatible(chat))[0])
    routes: list[BaseRoute] = [
        _page("/healthz", healthz),
        Mount("/api", app=OriginFilter(api, **origins)),
        # The official OpenAI SDKs, with the JWT as their key; refusals in OpenAI's shape.
        Mount("/v1", app=OpenAIErrors(OriginFilter(openai, **origins))),
        _page("/sdk.js", Script("sdk.js").__call__),
        _page("/widget.js", Script("widget.js").__call__),
        # Loaded by both only when the token challenge asks: the proof-of-work solver, the CAPTCHA widget's loader.
        _page("/sdk-pow.js", Script("sdk-pow.js").__call__),
        _page("/sdk-captcha.js", Script("sdk-captcha.js").__call__),
    ]
    # METRICS=true: GET /metrics for a scraper with the token; every request is recorded by AccessLog.
    metrics = Metrics(budget=budget, storage=storage) if settings.metrics else None
    # OTEL=true: each provider call as a span and GenAI metrics, to whatever SDK the process set up.
    recorders: list[Recorder[Any]] = [metrics] if metrics is not None else []
    if settings.otel:
        recorders.append(GenAITelemetry())
    if metrics is not None:
        scrape = MetricsEndpoint(metrics, **settings.arguments("MetricsEndpoint"))
        routes.append(Route("/metrics", ServerBusyGate(scrape), methods=["GET"]))
    if settings.serves_demo_page:
        routes.append(_page("/", demo_page(challenge.captcha.script_url if challenge.captcha else None)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The token counter's vocabulary and the provider client, now rather than on the first
        # request (which would wait a second for them).
        load_tokenizer()
        chat.upstream.open()
        try:
            # The spend alerts' poster runs as long as the app; stopped before the storage closes.
            async with alerts if alerts is not None else contextlib.nullcontext():
                yield
        finally:
            await chat.aclose()
            await challenge.aclose()
            await storage.aclose()
            if metrics is not None:
                metrics.close()

    app = Starlette(
        routes=routes,
        # The client is resolved once, outermost, so refused requests log the real client too.
        middleware=[
            Middleware(ClientIP, **settings.arguments("ClientIP")),
            Middleware(AccessLog, metrics=recorders),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def _spend_alerts(settings: Settings) -> SpendAlerts | None:
    """Alerts to ``ALERT_WEBHOOK_URL``, naming this service by its origins; None when it is not set."""
    options = settings.arguments("SpendAlerts")
    if options["url"] is None:
        return None
    return SpendAlerts(**options, service=", ".join(settings.allowed_origins))


def _chat_endpoint(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> ChatEndpoint:
    """The provider side: the real provider, or in demo mode the fake one, offline."""
    options = settings.arguments("ChatEndpoint")
    if transport is not None:
        options["transport"] = transport
    if settings.demo:
        if transport is None:
            options["base_url"] = DEMO_BASE_URL
            options["transport"] = FakeProvider(model=settings.openai_model, delay=DEMO_WORD_DELAY).transport()
        options["api_key"] = settings.openai_api_key or "sk-offline-demo"
    if options["api_key"] is None:
        raise ValueError("openai_api_key is required outside the demo")
    return ChatEndpoint(**options)


class ServerBusyGate:
    """503 ``ServerBusy`` for a request the bundled server marked as past ``MAX_CONNECTIONS``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and request_state(scope).server_busy:
            await send_error(scope, send, ServerBusy(retry_after=1, headers={"connection": "close"}))
            return
        await self.app(scope, receive, send)


def _page(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A GET route to a request/response endpoint, behind the ServerBusyGate."""
    return Route(path, ServerBusyGate(request_response(endpoint)), methods=["GET"])


def _ephemeral_secret() -> str:
    logger.warning(
        "JWT_SECRET is not set, so this process signs tokens with a random secret: tokens stop "
        "working when it restarts, and other instances or workers reject them. Set JWT_SECRET "
        "to at least 32 random bytes to keep tokens valid across restarts and instances."
    )
    return secrets.token_urlsafe(32)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: LLMGuardError
    if exc.status_code == 404:
        error = NotFound()
    elif exc.status_code == 405:
        error = MethodNotAllowed(headers=dict(exc.headers or {}))
    else:
        error = LLMGuardError(exc.detail, status_code=exc.status_code)
    return error_response(request.scope, error)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this, so the server logs the traceback; the client gets no trace.
    return error_response(request.scope, LLMGuardError())
