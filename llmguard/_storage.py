"""Where everything counted lives: one `limits` storage, memory or Redis, with a failure policy.

Request limits, token windows, the monthly caps and single-use token ids all go
through one ``Storage``, so with ``redis://`` every process and worker shares
them. A storage that errors or hangs turns into ``StorageUnavailable`` within
``timeout`` seconds; each guard then refuses (``failure="closed"``, 503) or lets
the request through with a warning (``failure="open"``) — never a 500. The
failure is logged where it happens (a warning when open, an error when closed,
then one line a minute while it lasts); the guard only reads ``fail_open``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
from limits.aio.storage import Storage as LimitsStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string

from llmguard._errors import StorageUnavailable

logger = logging.getLogger("llmguard.storage")
T = TypeVar("T")

KEY_PREFIX = "llmguard"
# How often a storage failure is logged (above DEBUG) while the storage stays down.
WARNING_INTERVAL = 60.0
# The states of a hold's marker: not placed (or lost with the storage's data), placed, lowered, done.
HOLD_STATES = ("none", "held", "lowered", "settled")
# How long a settled hold's marker outlives it, on Redis: a retried or late command finds it and
# changes nothing. (In memory nothing comes late; the marker goes at once.)
SETTLED_MARKER_TTL = 300
_READING_MARKER = "reading"

# What one step of a hold adds to a counter, by the state the hold's marker is in.
Amounts = tuple[int, int, int, int]
_PASSWORD_PARAMETER = re.compile(r"((?:^|[?&;])(?:password|pass|pwd)=)[^&;#]*", re.IGNORECASE)


class Storage:
    """A `limits` async storage chosen by URL, with timeouts and a failure policy."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        failure: Literal["closed", "open"] = "closed",
        timeout: float = 2.0,
        max_connections: int = 512,
    ) -> None:
        url = check_url(url, option="storage url")
        if failure not in ("closed", "open"):
            raise ValueError(f"failure has value {failure!r}: expected 'closed' or 'open'")
        if not timeout > 0:
            raise ValueError(f"timeout has value {timeout!r}: must be positive")
        if max_connections < 1:
            raise ValueError(f"max_connections has value {max_connections!r}: must be at least 1")
        self.url = url
        #: What a guard does when this storage fails (``StorageUnavailable``, already logged):
        #: serve the request anyway (True) or refuse it with the 503 (False). Callers read::
        #:
        #:     except StorageUnavailable as error:
        #:         if not storage.fail_open:
        #:             await send_error(scope, send, error)
        #:             return
        self.fail_open = failure == "open"
        self.timeout = timeout
        self._secrets = _credentials(url)
        try:
            self.backend = _backend(url, timeout, max_connections)
        except ValueError as exc:
            raise ValueError(self.scrub(str(exc))) from None
        # On Redis, a hold's counters change in one script; elsewhere, one operation at a time.
        bridge = getattr(self.backend, "bridge", None)
        client = getattr(bridge, "storage", None)
        # A cluster spreads keys over nodes, where one script cannot reach them all: one by one there.
        scripted = client is not None and "cluster" not in url.split("://", 1)[0]
        self._hold_script = client.register_script(_HOLD_SCRIPT) if scripted and client is not None else None
        self._markers: dict[str, str] = {}  # in process: the markers of holds not yet settled
        self._prefixed = getattr(bridge, "prefixed_key", str)
        # In-process counters cannot hang; a timer per operation would only cost time.
        self.in_process = url.split("://", 1)[0].lower() == "memory"
        self.limiter = SlidingWindowCounterRateLimiter(self.backend)
        self._warned_at = -WARNING_INTERVAL
        #: Called (no arguments, must not block or raise) on each failure: ``Metrics`` counts them, and
        #: when failing open (requests served without limits) ``SpendAlerts`` tells the owner.
        self.on_failure: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        scheme = self.url.split("://", 1)[0]
        return f"Storage({scheme}://…, failure={'open' if self.fail_open else 'closed'!r})"

    def scrub(self, text: str) -> str:
        """``text`` with this storage's credentials taken out: for messages and log lines."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def incr(self, key: str, *, expiry: int, amount: int = 1) -> int:
        """Add ``amount`` (negative to give back) and return the new total, atomically."""
        return await self.guarded(self.backend.incr(f"{KEY_PREFIX}:{key}", max(1, expiry), amount))

    async def get(self, key: str) -> int:
        return await self.guarded(self.backend.get(f"{KEY_PREFIX}:{key}"))

    async def read(self, keys: Sequence[str]) -> list[int]:
        """Several counters at once, in one round trip on Redis (0 for a counter that is not there)."""
        # A step of a hold that never exists, adding nothing: the hold script reads every key it is given.
        return await self.hold_step(_READING_MARKER, [(key, (0, 0, 0, 0), 1) for key in keys], ("", "", "", ""))

    async def guarded(self, operation: Awaitable[T]) -> T:
        """Await a storage operation; any error or a hang becomes ``StorageUnavailable``."""
        try:
            if self.in_process:
                return await operation
            with anyio.fail_after(self.timeout):
                return await operation
        except StorageUnavailable:
            raise
        except TimeoutError:
            raise self._failed("timed out") from None
        except Exception as exc:
            cause = getattr(exc, "storage_error", None) or exc
            raise self._failed(self.scrub(f"{type(exc).__name__}: {type(cause).__name__}: {cause}")[:300]) from None

    async def _add_in_order(self, changes: Sequence[tuple[str, int, int]]) -> list[int]:
        totals = []
        for key, amount, expiry in changes:
            name = f"{KEY_PREFIX}:{key}"
            total = await (self.backend.incr(name, max(1, expiry), amount) if amount else self.backend.get(name))
            if total < 0:  # a counter that expired under a long request: what it gave back was never there
                total = await self.backend.incr(name, max(1, expiry), -total)
            totals.append(total)
        return totals

    async def hold_step(
        self, marker: str, changes: Sequence[tuple[str, Amounts, int]], next_states: tuple[str, str, str, str]
    ) -> list[int]:
        """One step in the life of a hold: add to each counter by the state of the hold's marker.

        ``changes`` are ``(key, amounts, expiry)``, ``amounts`` being what to
        add when the marker is ``none``, ``held``, ``lowered`` or ``settled``
        (0 reads); the marker then moves to ``next_states[state]`` ("" keeps
        it). Returns each key's total. Atomic on Redis, like ``add``.

        The marker makes every step safe to repeat, and safe to arrive late or
        after the storage lost its data: a hold that landed after its request
        gave up is given back by the settlement that finds it; a settlement that
        finds no hold (Redis restarted) adds only the charge; a retried step
        finds the state it left.
        """
        if self._hold_script is None:
            return await self.guarded(self._hold_step_in_order(marker, changes, next_states))
        keys = [self._prefixed(f"{KEY_PREFIX}:{key}") for key in (marker, *(key for key, _, _ in changes))]
        arguments: list[str | int] = [SETTLED_MARKER_TTL, *next_states]
        for _, amounts, expiry in changes:
            arguments += [max(1, expiry), *amounts]
        totals = await self.guarded(self._hold_script(keys=keys, args=arguments))
        return [int(total) for total in totals]

    async def _hold_step_in_order(
        self, marker: str, changes: Sequence[tuple[str, Amounts, int]], next_states: tuple[str, str, str, str]
    ) -> list[int]:
        column = HOLD_STATES.index(self._markers.get(marker, "none"))
        totals = await self._add_in_order([(key, amounts[column], expiry) for key, amounts, expiry in changes])
        following = next_states[column]
        if following == "settled":
            self._markers.pop(marker, None)
        elif following:
            self._markers[marker] = following
        return totals

    async def check(self) -> bool:
        """Whether the storage answers, within the timeout."""
        try:
            with anyio.fail_after(self.timeout):
                return bool(await self.backend.check())
        except Exception:
            return False

    async def aclose(self) -> None:
        """Close the connections to a networked storage (the bundled app's lifespan does this)."""
        client = getattr(getattr(self.backend, "bridge", None), "storage", None)
        with contextlib.suppress(Exception):  # shutting down: nothing left to protect
            if client is not None:
                await client.aclose()
            # A pool handed to the client is not the client's to close.
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                await pool.disconnect()

    def _failed(self, reason: str) -> StorageUnavailable:
        for listener in self.on_failure:
            listener()
        # One line a minute while the storage stays down, not one per request and guard.
        now = time.monotonic()
        if now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            if self.fail_open:
                logger.warning("storage unavailable (%s): serving without limits (STORAGE_FAILURE=open)", reason)
            else:
                logger.error("storage unavailable (%s): refusing with 503 (STORAGE_FAILURE=closed)", reason)
        else:
            logger.debug("storage unavailable (%s)", reason)
        return StorageUnavailable(retry_after=5)


# KEYS[1]: a hold's marker; KEYS[2..]: counters. ARGV[1]: how long a settled marker stays; ARGV[2..5]:
# the marker's next state from each state (none, held, lowered, settled), '' to keep it; then, for
# each counter, its expiry and the amount to add in each state. An amount of 0 reads.
_HOLD_SCRIPT = """
local columns = {none = 1, held = 2, lowered = 3, settled = 4}
local column = columns[redis.call('get', KEYS[1]) or 'none'] or 4
local totals = {}
for index = 2, #KEYS do
  local base = 6 + (index - 2) * 5
  local amount = tonumber(ARGV[base + column])
  if amount == 0 then
    totals[index - 1] = tonumber(redis.call('get', KEYS[index]) or '0')
  else
    local total = redis.call('incrby', KEYS[index], amount)
    if total < 0 then
      -- A counter that expired under a long request: what it gave back was never there.
      redis.call('set', KEYS[index], 0, 'EX', tonumber(ARGV[base]))
      total = 0
    elseif total == amount then
      redis.call('expire', KEYS[index], tonumber(ARGV[base]))
    end
    totals[index - 1] = total
  end
end
local following = ARGV[1 + column]
if following == 'settled' then
  redis.call('set', KEYS[1], following, 'EX', tonumber(ARGV[1]))
elseif following ~= '' then
  redis.call('set', KEYS[1], following, 'EX', 86400)
end
return totals
"""


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (user info, and a ``password`` parameter)."""
    scheme, separator, rest = url.partition("://")
    if separator:
        authority, slash, path = rest.partition("/")
        _, at, host = authority.rpartition("@")
        if at:
            url = f"{scheme}://***@{host}{slash}{path}"
    return _PASSWORD_PARAMETER.sub(r"\1***", url)


def _credentials(url: str) -> list[str]:
    """The password and user name in a storage URL (longest first), to keep out of every message."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        found += [unquote(parts.password or ""), parts.password or "", unquote(parts.username or "")]
        found += [value for name, value in parse_qsl(parts.query) if name.lower() in ("password", "pass", "pwd")]
    except ValueError:
        pass
    # A very short secret would blank out ordinary words: redact_url covers the URL itself then.
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


def check_url(url: object, *, option: str = "url") -> str:
    """A storage URL as ``Storage`` will read it, redis-py's own reading of a ``redis://`` URL included.

    ``ValueError`` naming ``option`` otherwise; the message never repeats a password.
    """
    if not isinstance(url, str):
        raise ValueError(f"{option}: expected a storage URL")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return url
    if not scheme.startswith("redis"):
        raise ValueError(f"{option}: expected memory:// or a redis:// URL such as redis://localhost:6379/0")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{option}: the port is not a number") from None
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"{option}: expected a host, as in redis://localhost:6379/0")
        try:
            from redis.connection import parse_url
        except ImportError:
            raise ValueError(
                f"{option}: a redis:// storage needs the redis package: pip install 'llmguard[redis]'"
            ) from None
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading, else it fails on first use
        except ValueError as exc:
            raise ValueError(f"{option}: {redact_url(str(exc))}") from None
    return url


def _backend(url: str, timeout: float, max_connections: int) -> LimitsStorage:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        try:
            return _as_async(storage_from_string("async+" + url))
        except ConfigurationError:
            raise ValueError(
                f"storage url has value {redact_url(url)!r}: expected memory:// or redis://host:6379/0"
            ) from None
    if not scheme.startswith("redis"):
        raise ValueError(f"storage url has scheme {scheme!r}: expected memory:// or redis://")
    try:
        import redis.asyncio
    except ImportError:
        raise ValueError("a redis:// storage needs the redis package: pip install 'llmguard[redis]'") from None
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # After a Redis restart, every pooled connection is dead and fails its next command: try
        # once more on a fresh one. Only for connection errors (the command never ran), not
        # timeouts (it may have), and every budget step is safe to repeat anyway (its marker).
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    try:
        if scheme in ("redis", "rediss"):
            # redis-py's own pool refuses past 100 connections ("Too many connections"): a burst of
            # requests, each with its counters in flight at once, gets there. This one waits instead.
            options = {
                "connection_pool": redis.asyncio.BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=timeout, **options
                )
            }
        storage = storage_from_string("async+" + url, implementation="redispy", wrap_exceptions=True, **options)
    except (ConfigurationError, ValueError) as exc:
        raise ValueError(f"storage url {redact_url(url)!r} is not usable: {exc}") from None
    return _as_async(storage)


def _as_async(storage: object) -> LimitsStorage:
    if not isinstance(storage, LimitsStorage):
        raise TypeError("expected an async limits storage")
    return storage
