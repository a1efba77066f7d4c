"""SpendAlerts: a message in a chat channel as the month's caps fill up, once per threshold across instances.

A monthly cap refuses requests once it is spent; the owner should hear of it
before, not from users. ``SpendAlerts`` posts a Slack-compatible JSON body
(``{"text": …, "llmguard": {…}}``) to a webhook:

- **thresholds** — when 50, 80, 95 and 100 % (``thresholds``) of a monthly cap
  (tokens, US dollars) is used. After a request's reservation settles,
  ``TokenBudget`` tells this component, which reads the month's use at most
  once every ``READING_INTERVAL`` seconds per process (one round trip for both
  caps, never one per request). A cap that refuses a request counts as 100 %
  used: what is left is too little for a request, so the cap is reached in
  effect even if the count never lands on it exactly. Each threshold of each cap
  fires once per calendar month (UTC) across every instance: the first to
  increment ``alert:{cap}:{YYYY-MM}:{threshold}`` in the shared storage to 1
  posts; the others stay quiet.
- **the storage failing open** — with ``failure="open"`` a storage that does not
  answer means requests are served without limits. The storage cannot count
  while it is down, so this one is not shared: at most one post every
  ``STORAGE_ALERT_INTERVAL`` seconds per process.

Posting never blocks or fails a request: alerts go into a bounded queue (full:
dropped with a warning), which a background task drains while the component
runs (``async with alerts:``, in the app's lifespan; ``create_app`` does it).
A post is retried with exponential backoff (``backoff`` times 1, 2, 4, 8 s, up to
``attempts`` tries) on connection errors, timeouts, 429 and 5xx.

The webhook's URL is a credential (its path is the key to the channel): log
lines show its scheme and host only.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from llmguard._charges import seconds_to_next_month
from llmguard._errors import SpendCapReached, StorageUnavailable, TokenCapReached

if TYPE_CHECKING:
    from llmguard._budget import TokenBudget

logger = logging.getLogger("llmguard.alerts")

#: Percent of each monthly cap at which an alert is posted (``ALERT_THRESHOLDS``).
THRESHOLDS = (50, 80, 95, 100)
#: Seconds a process goes on one reading of the month's use before it reads again.
READING_INTERVAL = 1.0
#: Seconds between two storage-failing-open alerts of one process.
STORAGE_ALERT_INTERVAL = 600.0
#: Seconds a shutting-down app gives queued alerts to go out before they are dropped.
SHUTDOWN_GRACE = 3.0
#: The longest wait a 429's Retry-After may ask of a retry.
MAX_RETRY_AFTER = 60.0

# Which cap a refusal says is spent, by its error code.
_CAP_OF_REFUSAL = {TokenCapReached.code: "tokens", SpendCapReached.code: "spend"}
_CAP_NAMES = {"tokens": "token cap", "spend": "spend cap"}


@dataclass(frozen=True)
class Alert:
    """One message: ``text`` for people (Slack's field), ``details`` for programs."""

    text: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return {"text": self.text, "llmguard": self.details}

    @property
    def what(self) -> str:
        """A short name for log lines."""
        if self.details.get("kind") == "threshold":
            return f"{self.details['threshold']}% of the monthly {_CAP_NAMES[self.details['cap']]}"
        return str(self.details.get("kind", "alert")).replace("_", " ")


def threshold_alert(cap: str, threshold: int, used: int, limit: int, month: str, service: str) -> Alert:
    """The alert for ``threshold`` % of ``cap`` (``"tokens"``, or ``"spend"`` in millionths of a dollar)."""
    if cap == "spend":
        # Cents, unless the cap is so small that cents would say nothing.
        decimals = 2 if limit >= 1_000_000 else 4
        shown_used, shown_limit = f"${used / 1e6:,.{decimals}f}", f"${limit / 1e6:,.{decimals}f}"
        amounts: tuple[float, float] = (round(used / 1e6, 6), round(limit / 1e6, 6))
    else:
        shown_used, shown_limit = f"{used:,}", f"{limit:,} tokens"
        amounts = (used, limit)
    text = (
        f"llmguard: {threshold}% of the monthly {_CAP_NAMES[cap]} is used ({shown_used} of {shown_limit}) for {month}."
    )
    if threshold >= 100:
        text += " New requests are refused until the month ends (UTC)."
    details = {
        "kind": "threshold",
        "cap": cap,
        "threshold": threshold,
        "used": amounts[0],
        "limit": amounts[1],
        "month": month,
        "service": service,
    }
    return Alert(text, details)


def storage_alert(since: float, service: str) -> Alert:
    """The alert for a storage that does not answer while ``failure="open"``."""
    moment = datetime.fromtimestamp(since, tz=timezone.utc)
    text = (
        "llmguard: the storage is not answering and STORAGE_FAILURE=open, so requests are served without limits "
        f"(no rate limits, token budgets or monthly caps) since {moment:%Y-%m-%d %H:%M:%S} UTC on {service}. "
        "Repeated at most every 10 minutes by each process while it lasts."
    )
    return Alert(text, {"kind": "storage_failing_open", "since": int(since), "service": service})


def shown_url(url: str) -> str:
    """A webhook URL as log lines and settings may show it: scheme and host only (the path is the secret)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}" + ("/…" if parts.path.strip("/") or parts.query else "")


def check_webhook_url(value: object, *, option: str = "url") -> str:
    """An http(s) URL with a host; the message never repeats it (its path is a credential)."""
    if not isinstance(value, str):
        raise ValueError(f"{option}: expected a webhook URL")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{option}: expected an http(s) URL such as https://hooks.slack.com/services/…") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option}: expected an http(s) URL such as https://hooks.slack.com/services/…")
    return value.strip()


def parse_thresholds(text: str) -> tuple[int, ...]:
    """``"50,80,95,100"`` (a ``%`` after each is allowed) → ``(50, 80, 95, 100)``."""
    try:
        return tuple(int(part.strip().removesuffix("%").strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected whole percents, comma-separated, such as '50,80,95,100'") from None


def check_thresholds(value: object, *, option: str = "thresholds") -> tuple[int, ...]:
    """Whole percents from 1 to 100, increasing, at least one."""
    items = (value,) if isinstance(value, int) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in items
    ):
        raise ValueError(f"{option}: expected whole percents such as 50, 80, 95, 100")
    if not items:
        raise ValueError(f"{option}: expected at least one percent")
    if not all(1 <= item <= 100 for item in items):
        raise ValueError(f"{option}: each must be between 1 and 100")
    if any(later <= earlier for earlier, later in itertools.pairwise(items)):
        raise ValueError(f"{option}: must be increasing")
    return tuple(items)


class SpendAlerts:
    """Post an alert to a webhook as each monthly cap passes each threshold, and when the storage fails open.

    Give it to ``TokenBudget(alerts=...)`` (every ``TokenBudget`` of the app may
    share one) and run it in the app's lifespan::

        alerts = SpendAlerts("https://hooks.slack.com/services/…")
        budget = TokenBudget(endpoint, storage=storage, monthly_spend_cap_usd=50, alerts=alerts)

        @asynccontextmanager
        async def lifespan(app):
            async with alerts:
                yield

    ``create_app`` does both when ``ALERT_WEBHOOK_URL`` is set. ``service`` names
    this deployment in each alert (``create_app``: its allowed origins; else the
    host name). ``backoff`` is the first retry's delay in seconds, doubled for
    each one after it; ``timeout`` the deadline of one try; ``transport``
    replaces the connection (tests use ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        *,
        thresholds: Sequence[int] = THRESHOLDS,
        service: str | None = None,
        timeout: float = 10.0,
        attempts: int = 5,
        backoff: float = 1.0,
        queue_size: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = check_webhook_url(url)
        self.thresholds = check_thresholds(tuple(thresholds))
        for name, number in (("timeout", timeout), ("backoff", backoff)):
            if not (math.isfinite(number) and number > 0):
                raise ValueError(f"{name} has value {number!r}: must be a positive number of seconds")
        for name, count in (("attempts", attempts), ("queue_size", queue_size)):
            if count < 1:
                raise ValueError(f"{name} has value {count!r}: must be at least 1")
        self.service = service or socket.gethostname()
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.queue_size = queue_size
        self.transport = transport
        self.budgets: list[TokenBudget] = []
        # Per process, not per request: what was noticed, read and decided.
        self._noticed: dict[tuple[int, int | None, int | None], TokenBudget] = {}
        self._wake = anyio.Event()
        self._read_at = -math.inf
        self._capped: set[tuple[str, str]] = set()  # (cap, month): a cap that refused a request
        self._decided: set[tuple[str, str, int]] = set()  # (cap, month, threshold): posted here or elsewhere
        self._storage_alert_at = -math.inf
        self._last_failure = -math.inf
        self._failing_since = 0.0
        self._warned_idle = False
        self._queue: MemoryObjectSendStream[Alert] | None = None
        self._tasks: TaskGroup | None = None
        self._drained = anyio.Event()
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"SpendAlerts({shown_url(self.url)!r}, thresholds={self.thresholds!r})"

    # -- what the rest of llmguard tells it ------------------------------------------------

    def attach(self, budget: TokenBudget) -> None:
        """Watch ``budget``'s monthly caps, and its storage for failing open (``TokenBudget`` calls this)."""
        self.budgets.append(budget)
        listeners = budget.storage.on_failure
        # Failing closed, an outage refuses requests (503s, /healthz): nothing is spent unseen.
        if budget.storage.fail_open and self.storage_failed not in listeners:
            listeners.append(self.storage_failed)

    def settled(self, budget: TokenBudget, *, reserved: bool, error_code: str | None = None) -> None:
        """A request through ``budget`` settled its reservations (or a cap refused it): check, soon.

        Never waits: the reading and any post happen in the background, at most one reading
        every ``READING_INTERVAL`` seconds.
        """
        capped = _CAP_OF_REFUSAL.get(error_code or "")
        if capped is not None:
            self._capped.add((capped, _month(time.time())))
        elif not reserved:
            return
        if budget.monthly_token_cap is None and budget.monthly_spend_micro is None:
            return
        key = (id(budget.storage), budget.monthly_token_cap, budget.monthly_spend_micro)
        self._noticed.setdefault(key, budget)
        self._wake.set()

    def storage_failed(self) -> None:
        """The storage failed while failing open (``Storage.on_failure``): requests go unlimited; alert now and then."""
        now, wall = time.monotonic(), time.time()
        if now - self._last_failure > 60:  # quiet for a minute: a new outage, as far as this process knows
            self._failing_since = wall
        self._last_failure = now
        if now - self._storage_alert_at < STORAGE_ALERT_INTERVAL:
            return
        self._storage_alert_at = now
        self.send(storage_alert(self._failing_since, self.service))

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for posting; never waits (a full queue drops it, with a warning)."""
        if self._queue is None:
            if not self._warned_idle:
                self._warned_idle = True
                logger.warning(
                    "spend alert not sent (%s): SpendAlerts is not running; enter `async with alerts:` in the "
                    "app's lifespan (create_app does)",
                    alert.what,
                )
            return
        try:
            self._queue.send_nowait(alert)
        except anyio.WouldBlock:
            logger.warning(
                "spend alert dropped (%s): the queue of alerts waiting to be posted is full (%d)",
                alert.what,
                self.queue_size,
            )
        except anyio.ClosedResourceError:
            logger.warning("spend alert dropped (%s): the app is shutting down", alert.what)

    # -- running ---------------------------------------------------------------------------

    async def __aenter__(self) -> SpendAlerts:
        if self._tasks is not None:
            raise RuntimeError("SpendAlerts is already running")
        self._warn_if_idle()
        logger.info(
            "spend alerts go to %s at %s%% of each monthly cap",
            shown_url(self.url),
            ", ".join(map(str, self.thresholds)),
        )
        self._client = httpx.AsyncClient(transport=self.transport, follow_redirects=False)
        send, receive = anyio.create_memory_object_stream[Alert](self.queue_size)
        self._drained = anyio.Event()
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        tasks.start_soon(self._post_all, receive)
        tasks.start_soon(self._check_all)
        self._tasks, self._queue = tasks, send
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        tasks, queue, client = self._tasks, self._queue, self._client
        if tasks is None or queue is None or client is None:
            return
        self._queue = None  # what is sent from now on is dropped, with a warning
        queue.close()  # the poster ends once it has posted what is queued
        with anyio.move_on_after(SHUTDOWN_GRACE):
            await self._drained.wait()
        if not self._drained.is_set():
            logger.warning("the app stopped before every spend alert was posted")
        tasks.cancel_scope.cancel()
        await tasks.__aexit__(None, None, None)
        self._tasks = self._client = None
        await client.aclose()

    def _warn_if_idle(self) -> None:
        if any(b.monthly_token_cap is not None or b.monthly_spend_micro is not None for b in self.budgets):
            return
        fails_open = any(budget.storage.fail_open for budget in self.budgets)
        logger.warning(
            "ALERT_WEBHOOK_URL is set but there is no monthly cap (MONTHLY_TOKEN_CAP or MONTHLY_SPEND_CAP_USD), so "
            "no spend alert can be sent%s",
            ": only the storage-failing-open alert" if fails_open else "",
        )

    async def _check_all(self) -> None:
        """Read the month's use when told to, at most once every ``READING_INTERVAL`` seconds."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # What is noticed while this waits is seen by this reading (none is lost, none is extra).
            await anyio.sleep(max(0.0, self._read_at + READING_INTERVAL - time.monotonic()))
            self._read_at = time.monotonic()
            noticed, self._noticed = self._noticed, {}
            for budget in noticed.values():
                try:
                    await self.check(budget)
                except StorageUnavailable:
                    pass  # already logged by the storage; the next reading tries again
                except Exception:
                    logger.exception("spend alerts: checking the monthly caps failed")

    async def check(self, budget: TokenBudget, now: float | None = None) -> None:
        """Read ``budget``'s monthly caps once; queue an alert for each threshold first crossed this month."""
        # A reading of now is kept by the budget, so its degradation need not read again so soon.
        usage = await budget.month_usage(now)
        now = time.time() if now is None else now
        month = _month(now)
        expiry = seconds_to_next_month(now) + 7 * 86400
        for cap, (used, limit) in usage.items():
            for threshold in self.thresholds:
                decided = (cap, month, threshold)
                crossed = used * 100 >= threshold * limit or (cap, month) in self._capped
                if decided in self._decided or not crossed:
                    continue
                # Every instance counts the threshold; the one that counts it first posts.
                count = await budget.storage.incr(f"alert:{cap}:{month}:{threshold}", expiry=expiry)
                self._decided.add(decided)
                if count == 1:
                    self.send(threshold_alert(cap, threshold, used, limit, month, self.service))
                else:
                    logger.info(
                        "spend alert for %d%% of the monthly %s: already sent by another instance",
                        threshold,
                        _CAP_NAMES[cap],
                    )
        # What is kept per month goes with it.
        self._decided = {item for item in self._decided if item[1] == month}
        self._capped = {item for item in self._capped if item[1] == month}

    async def _post_all(self, receive: MemoryObjectReceiveStream[Alert]) -> None:
        try:
            async with receive:
                async for alert in receive:
                    try:
                        await self.post(alert)
                    except Exception:
                        logger.exception("spend alerts: posting failed")
        finally:
            self._drained.set()

    async def post(self, alert: Alert) -> bool:
        """Post ``alert``, retrying with backoff; whether the webhook took it."""
        client = self._client
        if client is None:
            raise RuntimeError("SpendAlerts is not running")
        where = shown_url(self.url)
        for attempt in range(1, self.attempts + 1):
            retry_after = 0.0
            try:
                # One deadline for the whole call: httpx's timeouts are per read, and a receiver may drip.
                with anyio.fail_after(self.timeout):
                    response = await client.post(self.url, json=alert.body)
            except (httpx.HTTPError, TimeoutError) as exc:
                # Only the type: an error's text may carry the URL.
                problem = "timed out" if isinstance(exc, (TimeoutError, httpx.TimeoutException)) else type(exc).__name__
            else:
                if response.is_success:
                    logger.info("spend alert posted to %s: %s", where, alert.what)
                    return True
                problem = f"answered {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    logger.warning("spend alert not posted: %s %s (%s); not retried", where, problem, alert.what)
                    return False
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt == self.attempts:
                break
            delay = max(self.backoff * 2 ** (attempt - 1), retry_after)
            logger.warning("spend alert webhook %s %s; retrying in %g s (%s)", where, problem, delay, alert.what)
            await anyio.sleep(delay)
        logger.warning("spend alert not posted: %s %s, %d tries (%s)", where, problem, self.attempts, alert.what)
        return False


def _month(now: float) -> str:
    return f"{datetime.fromtimestamp(now, tz=timezone.utc):%Y-%m}"


def _retry_after(value: str | None) -> float:
    """A 429's Retry-After in seconds (the delay form), capped; 0 when absent or a date."""
    try:
        seconds = float(value or 0)
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0
