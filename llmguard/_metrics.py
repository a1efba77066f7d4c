"""Metrics: what llmguard served, refused and spent, for Prometheus; ``GET /metrics``.

Each request is recorded once, when it ends, by ``AccessLog`` (which already
knows its status), from what the layers left in ``scope["llmguard"]``: the
error code, the model, the tokens and dollars the budget charged, the provider
call's timings. Only two things are counted as they happen: the streams open
now (``AccessLog`` again, when a stream starts and when it ends) and the
storage's failures (``Storage.on_failure``). How much of the monthly caps is
left is read from the storage when Prometheus scrapes, never kept.

prometheus_client is imported when a ``Metrics`` is made, not with llmguard: it
decides where values live when it is first imported, in memory or, when
``PROMETHEUS_MULTIPROC_DIR`` is set, in files that every worker process writes
and the scrape adds up. ``llmguard serve --workers N`` makes that directory
before its workers start (``worker_directory``).
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from llmguard._errors import LLMGuardError, MethodNotAllowed, StorageUnavailable, Unauthorized, send_error
from llmguard._state import request_state

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import Counter, Histogram, MetricWrapperBase
    from prometheus_client.metrics_core import Metric

    from llmguard._budget import TokenBudget
    from llmguard._storage import Storage

    Child = TypeVar("Child", bound=MetricWrapperBase)

#: Where prometheus_client's multiprocess mode keeps the workers' values.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: The bundled app's routes (``create_app``): the ``route`` label. Any other path is ``other``.
BUNDLED_ROUTES = frozenset(
    {
        "/",
        "/api/chat",
        "/api/challenge",
        "/api/token",
        "/api/usage",
        "/healthz",
        "/metrics",
        "/sdk-captcha.js",
        "/sdk-pow.js",
        "/sdk.js",
        "/v1/chat/completions",
        "/v1/models",
        "/widget.js",
    }
)
# A client can send any method: the label knows these, and calls the rest "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: The guard that refused a request, by the error code it answered with (``llmguard_refusals_total``).
#: ``request`` is what is wrong with the request itself; ``budget``, what is used up.
GUARDS: Mapping[str, str] = {
    "Forbidden": "origin",
    "RateLimitExceeded": "rate_limit",
    "Unauthorized": "auth",
    "ChallengeRequired": "challenge",
    "ChallengeFailed": "challenge",
    "ChallengeUnavailable": "challenge",
    "TokenBudgetExceeded": "budget",
    "TokenCapReached": "budget",
    "SpendCapReached": "budget",
    "InvalidRequest": "request",
    "PayloadTooLarge": "request",
    "PromptTooLarge": "request",
    "RequestTimeout": "request",
    "ServerBusy": "server",
    "StorageUnavailable": "server",
}
#: Error codes that are no guard's refusal: the provider failed, a bug, or no such route or method.
NOT_REFUSALS = frozenset({"InternalError", "UpstreamError", "NotFound", "MethodNotAllowed"})

# Seconds. A whole provider call: a short reply in under a second, a long stream for minutes.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
# Seconds until the first token: what a person waits before anything moves.
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")
# A live gauge's file in the multiprocess directory, by the process that writes it.
_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def check_token(token: object, option: str = "token") -> str:
    """The metrics token, or ``ValueError`` naming ``option`` and what is wrong (never the token itself)."""
    if not isinstance(token, str):
        raise ValueError(f"{option}: expected a string")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{option}: too short, at least {MIN_TOKEN_LENGTH} characters")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{option}: only printable ASCII characters, no spaces (it travels in an HTTP header)")
    return token


class Metrics:
    """The Prometheus metrics of one app: recorded by ``AccessLog(metrics=)``, served by ``MetricsEndpoint``.

    ``budget`` is read for the monthly caps' room at each scrape; ``storage``
    (default: the budget's) has its failures counted. ``registry`` receives the
    metrics (default: a registry of their own, so that several apps in one
    process never clash); with ``PROMETHEUS_MULTIPROC_DIR`` set, the values go
    to that directory's files instead, and the scrape adds up every process's.
    ``routes`` are the paths the ``route`` label names; others are ``other``.

    Metric names (all ``llmguard_``): ``requests_total{route,method,status,code}``,
    ``refusals_total{guard,code}``, ``tokens_total{model,type}``,
    ``spend_usd_total{model}``, ``provider_latency_seconds{model}``,
    ``time_to_first_token_seconds{model}``, ``open_streams``,
    ``storage_errors_total``, ``monthly_cap_remaining{cap}``.
    """

    def __init__(
        self,
        *,
        budget: TokenBudget | None = None,
        storage: Storage | None = None,
        registry: CollectorRegistry | None = None,
        routes: Iterable[str] = BUNDLED_ROUTES,
    ) -> None:
        # Here, not at the top: prometheus_client picks memory or files when first imported, from the
        # environment, and `llmguard serve --workers` sets that environment before its workers start.
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, values

        self.directory = os.environ.get(MULTIPROC_DIR) or None
        if self.directory is not None:
            if values.ValueClass is values.MutexValue:
                raise ValueError(
                    f"{MULTIPROC_DIR} was set after prometheus_client was imported, which then keeps values in "
                    "memory, where the scrape would not find them: set it in the environment the process starts with"
                )
            if not os.path.isdir(self.directory):
                raise ValueError(f"{MULTIPROC_DIR} has value {self.directory!r}: not a directory")
            if registry is not None:
                raise ValueError(
                    f"registry: with {MULTIPROC_DIR} set, the values live in its files and the scrape reads them "
                    "there (MultiProcessCollector), not in a registry"
                )
        elif registry is None:
            registry = CollectorRegistry()
        #: Where the metrics are registered: None in multiprocess mode (the files are read instead).
        self.registry = registry
        self.budget = budget
        self.routes = frozenset(routes)
        self.content_type = CONTENT_TYPE_LATEST
        if self.directory is not None:
            # One set per process: two sets would each keep a running total of the same file entries,
            # and each write over the other's.
            global _process_families
            _process_families = families = _process_families or _Families(None)
        else:
            families = _Families(registry)
        self.requests_total = families.requests_total
        self.refusals_total = families.refusals_total
        self.tokens_total = families.tokens_total
        self.spend_usd_total = families.spend_usd_total
        self.provider_latency_seconds = families.provider_latency_seconds
        self.time_to_first_token_seconds = families.time_to_first_token_seconds
        self.open_streams = families.open_streams
        self.storage_errors_total = families.storage_errors_total
        # Each label set's child, looked up once: the hot path is a dict lookup and an add.
        self._counters: dict[tuple[object, ...], Counter] = {}
        self._histograms: dict[tuple[object, ...], Histogram] = {}
        storage = storage if storage is not None else budget.storage if budget is not None else None
        if storage is not None:
            storage.on_failure.append(self.storage_errors_total.inc)

    # -- recording (AccessLog calls these) ---------------------------------------------------

    def request_ended(self, scope: Scope, route: str, status: int) -> None:
        """Record one request as it ends, from ``scope["llmguard"]``; ``route`` as ``route()`` read it on arrival."""
        state = request_state(scope)
        code = state.error_code or ""
        method = scope["method"] if scope["method"] in METHODS else "other"
        _child(self._counters, self.requests_total, route, method, status, code).inc()
        guard = GUARDS.get(code)
        if guard is not None:
            _child(self._counters, self.refusals_total, guard, code).inc()
        model = state.model
        if model is None:
            return
        usage = state.usage
        if usage is not None:
            if usage.prompt_tokens:
                _child(self._counters, self.tokens_total, model, "prompt").inc(usage.prompt_tokens)
            if usage.completion_tokens:
                _child(self._counters, self.tokens_total, model, "completion").inc(usage.completion_tokens)
        if state.cost_usd:
            _child(self._counters, self.spend_usd_total, model).inc(state.cost_usd)
        started = state.provider_started
        if started is None:
            return
        if state.provider_ended is not None:
            _child(self._histograms, self.provider_latency_seconds, model).observe(state.provider_ended - started)
        if state.first_token_at is not None:
            _child(self._histograms, self.time_to_first_token_seconds, model).observe(state.first_token_at - started)

    def route(self, scope: Scope) -> str:
        """The ``route`` label of a request, read on arrival (routing changes the scope).

        Its path under the app's root when that is one of ``routes``, else ``other``.
        """
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path if path in self.routes else "other"

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    # -- scraping ----------------------------------------------------------------------------

    async def exposition(self) -> bytes:
        """Every metric in Prometheus' text format, with the monthly caps' room read from the storage now."""
        left = await self.caps_remaining()
        # Off the event loop: adding up many series (and, for workers, reading their files) takes milliseconds.
        return await anyio.to_thread.run_sync(self._exposition, left)

    async def caps_remaining(self) -> dict[str, float]:
        """What is left of each monthly cap that is on (``tokens``, ``usd``), in one read; ``{}`` if unknown."""
        if self.budget is None:
            return {}
        try:
            usage = await self.budget.month_usage()
        except StorageUnavailable:
            return {}  # absent from this scrape; the failure is counted in llmguard_storage_errors_total
        left: dict[str, float] = {}
        if "tokens" in usage:
            used, cap = usage["tokens"]
            left["tokens"] = max(0, cap - used)
        if "spend" in usage:
            used, cap = usage["spend"]
            left["usd"] = max(0, cap - used) / 1e6
        return left

    def _exposition(self, left: Mapping[str, float]) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        scrape = CollectorRegistry(auto_describe=False)
        if self.directory is not None:
            forget_dead_workers(self.directory)
            MultiProcessCollector(scrape, path=self.directory)  # type: ignore[no-untyped-call]
        elif self.registry is not None:
            scrape.register(self.registry)  # a registry is a collector too: whatever it holds
        if left:
            scrape.register(_CapsRemaining(left))
        return generate_latest(scrape)

    def close(self) -> None:
        """In multiprocess mode, take this process's streams out of the sum (the bundled app does at shutdown)."""
        if self.directory is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.directory)  # type: ignore[no-untyped-call]


class _Families:
    """The metric families, registered in ``registry`` (None: in no registry, for multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests_total = Counter(
            "llmguard_requests",
            "Requests answered, by route, method, status (499: the client left before the response ended) "
            "and error code ('' when none).",
            ("route", "method", "status", "code"),
            registry=registry,
        )
        self.refusals_total = Counter(
            "llmguard_refusals",
            "Requests refused, by the guard that refused them and the error code.",
            ("guard", "code"),
            registry=registry,
        )
        self.tokens_total = Counter(
            "llmguard_tokens",
            "Tokens charged to the budgets, by model and type (prompt or completion).",
            ("model", "type"),
            registry=registry,
        )
        self.spend_usd_total = Counter(
            "llmguard_spend_usd",
            "US dollars charged to the budgets, by model, from the price table.",
            ("model",),
            registry=registry,
        )
        self.provider_latency_seconds = Histogram(
            "llmguard_provider_latency_seconds",
            "Seconds of each provider call, from sending it to the end of the reply (streams included).",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token_seconds = Histogram(
            "llmguard_time_to_first_token_seconds",
            "Seconds from sending a provider call to its first token (a whole JSON reply: its arrival).",
            ("model",),
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.open_streams = Gauge(
            "llmguard_open_streams",
            "Streamed replies open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.storage_errors_total = Counter(
            "llmguard_storage_errors",
            "Storage calls that failed or timed out (each answered by STORAGE_FAILURE).",
            registry=registry,
        )


# In multiprocess mode, the one set of families of this process (see Metrics).
_process_families: _Families | None = None


class _CapsRemaining:
    """``llmguard_monthly_cap_remaining``, as read for one scrape."""

    def __init__(self, left: Mapping[str, float]) -> None:
        self.left = left

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "llmguard_monthly_cap_remaining",
            "What is left of each monthly cap this calendar month (UTC), holds included: tokens, or US dollars.",
            labels=("cap",),
        )
        for cap, value in self.left.items():
            family.add_metric((cap,), value)
        yield family


def _child(cache: MutableMapping[tuple[object, ...], Child], metric: Child, *labels: str | int) -> Child:
    """``metric.labels(*labels)``, made once per label set."""
    key = (metric, *labels)
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*map(str, labels))
    return child


def forget_dead_workers(directory: str) -> None:
    """Take the live gauges (open streams) of worker processes that died out of the sum.

    A worker that exits cleanly does it itself (``Metrics.close``); one that was
    killed cannot, so every scrape looks for files of processes that are gone.
    Their counters stay: what they served was served.
    """
    from prometheus_client import multiprocess

    for name in os.listdir(directory):
        match = _LIVE_FILE.fullmatch(name)
        if match is not None and not _alive(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and someone else's
    return True


def worker_directory() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers of ``llmguard serve --workers``, set in ``os.environ`` for them.

    The user's own if the environment has one; else a fresh temporary directory,
    removed when this process exits: a directory left from an earlier run would
    add its counts to this one's. Called before the workers start, since each
    reads it when it first imports prometheus_client.
    """
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        return given
    directory = os.environ[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="llmguard-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


class MetricsEndpoint:
    """``GET /metrics``: ``metrics`` in Prometheus' text format, for a scraper that sends ``token``.

    The token comes as ``Authorization: Bearer <token>`` (Prometheus'
    ``authorization`` block, Grafana Agent and Fly's scraper send it that way)
    and is compared in constant time. Anything else gets 401 ``Unauthorized``
    with ``WWW-Authenticate: Bearer realm="metrics"``.
    """

    def __init__(self, metrics: Metrics, *, token: str) -> None:
        self.metrics = metrics
        self._digest = _digest(check_token(token))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed(headers={"allow": "GET, HEAD"})
            if not self.authorized(scope):
                raise Unauthorized(
                    "The metrics need their token: send Authorization: Bearer <METRICS_TOKEN>.",
                    headers={"www-authenticate": 'Bearer realm="metrics"'},
                )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        body = await self.metrics.exposition()
        headers = [
            (b"content-type", self.metrics.content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        start: Message = {"type": "http.response.start", "status": 200, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})

    def authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
        # Digests of equal length, compared in constant time: neither the token nor its length leaks.
        matches = hmac.compare_digest(_digest(credentials.strip()), self._digest)
        return matches and scheme.lower() == "bearer"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
