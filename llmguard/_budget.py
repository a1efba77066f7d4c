"""TokenBudget: where the spend cap is enforced — tokens and dollars per client and per month.

Request counts do not protect money (one request can cost 10k tokens), so this
layer counts tokens. Every provider call goes through a
:class:`~llmguard._reservation.Reservation`: its worst case is held on every
budget that applies before the provider is called, and settled to what it cost
afterwards (``_reservation``); what is charged when, and what fits a budget, is
plain arithmetic in ``_charges``.

Budgets, each optional:
- per client (the ``sub`` claim of the token, else the client IP): tokens in a
  sliding window, ``tokens_per_client="100000/day"``; a ``quota`` claim
  (an integer, from an ``authenticate`` hook) replaces the amount for that
  user (it needs the window on: it sets an amount, not a period);
- for the whole service: tokens and US dollars per calendar month (UTC).

With ``degrade`` steps (``_degrade``), past a fraction of the monthly caps the
endpoint serves a cheaper model and/or a lower output cap. How much of the
month is used is read at most once every ``READING_INTERVAL`` seconds per
process (one round trip for both caps), never on every request: the steps
are a soft limit, the caps the hard one. With ``alerts`` (``_alerts``), the
owner hears of it as the monthly caps fill up.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

import anyio
import limits
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmguard._charges import Counter, seconds_to_next_month
from llmguard._client_ip import client_key
from llmguard._degrade import Degradation, check_degrade, step_for
from llmguard._errors import LLMGuardError, PromptTooLarge, StorageUnavailable
from llmguard._prices import DEFAULT_PRICES, Price, price_of
from llmguard._rate_limit import parse_rate
from llmguard._reservation import Reservation
from llmguard._state import RequestState, request_state
from llmguard._storage import Storage

if TYPE_CHECKING:
    from llmguard._alerts import SpendAlerts

logger = logging.getLogger("llmguard.budget")

# Seconds a process goes on one reading of the monthly caps' use before reading them again.
READING_INTERVAL = 1.0
# The client window's name in the RateLimit fields of a reply, beside the request limit's ("chat").
WINDOW_POLICY = "tokens"


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """A client's token window as ``GET /api/usage`` reports it: tokens, and whole seconds."""

    limit: int
    remaining: int
    #: Seconds until the current period ends.
    reset: int
    window: int


@dataclass(frozen=True, slots=True)
class ClientUsage:
    """What :meth:`TokenBudget.client_usage` read: the client's window (None when off), the month's used fraction."""

    window: WindowUsage | None
    #: The more used of the monthly caps, as a fraction (holds included); None when no cap is on.
    month_used: float | None


class TokenBudget:
    """Reserve each request's worst case on its budgets, settle to what it cost afterwards.

    Place it after ``JWTAuth`` (so budgets can follow the token's ``sub``) and
    before ``ChatEndpoint``, which reserves through ``scope["llmguard"].budget``.
    Whatever the endpoint does, every reservation is settled before this layer
    returns.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        storage: Storage | str = "memory://",
        failure: Literal["closed", "open"] = "closed",
        max_prompt_tokens: int = 8000,
        tokens_per_client: str | None = "100000/day",
        monthly_token_cap: int | None = None,
        monthly_spend_cap_usd: float | None = None,
        prices: Mapping[str, Price] = DEFAULT_PRICES,
        min_output_tokens: int = 16,
        degrade: Sequence[Degradation] = (),
        alerts: SpendAlerts | None = None,
    ) -> None:
        for name, value in (
            ("max_prompt_tokens", max_prompt_tokens),
            ("min_output_tokens", min_output_tokens),
            ("monthly_token_cap", monthly_token_cap),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} has value {value!r}: must be at least 1")
        if monthly_spend_cap_usd is not None and not (
            math.isfinite(monthly_spend_cap_usd) and monthly_spend_cap_usd > 0
        ):
            raise ValueError(f"monthly_spend_cap_usd has value {monthly_spend_cap_usd!r}: must be positive")
        self.window: limits.RateLimitItem | None = None
        if tokens_per_client is not None:
            self.window = parse_rate(tokens_per_client, option="tokens_per_client")
        self.app = app
        self.storage = storage if isinstance(storage, Storage) else Storage(storage, failure=failure)
        self.max_prompt_tokens = max_prompt_tokens
        self.monthly_token_cap = monthly_token_cap
        self.monthly_spend_micro = None if monthly_spend_cap_usd is None else round(monthly_spend_cap_usd * 1e6)
        self.prices = dict(prices)
        self.min_output_tokens = min_output_tokens
        self.degrade = check_degrade(degrade)
        if self.degrade and monthly_token_cap is None and monthly_spend_cap_usd is None:
            raise ValueError("degrade needs a monthly cap: monthly_token_cap or monthly_spend_cap_usd")
        for step in self.degrade:
            if step.model is not None and self.monthly_spend_micro is not None and price_of(step.model, prices) is None:
                raise ValueError(f"degrade names the model {step.model!r}, which has no price under the spend cap")
        # Per process, not per request: how much of the month was used, and when that was read.
        self._used: float = 0.0
        self._read_at = -math.inf
        self._reading = False
        #: Told after each request's reservations settle (``_alerts``): posts as the monthly caps fill up.
        self.alerts = alerts
        if alerts is not None:
            alerts.attach(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        budgets = ClientBudgets(self, self.client_key(scope, state), state)
        state.budget = budgets

        async def send_with_window(message: Message) -> None:
            if message["type"] == "http.response.start" and budgets.window is not None:
                # The token window as a member of the RateLimit fields, after any already there
                # (IPRateLimit, in front, puts its own first).
                limit, left, reset, length = budgets.window
                headers = MutableHeaders(scope=message)
                for name, value in (
                    ("ratelimit-policy", f'"{WINDOW_POLICY}";q={limit};w={length}'),
                    ("ratelimit", f'"{WINDOW_POLICY}";r={left};t={reset}'),
                ):
                    inner = headers.get(name)
                    headers[name] = f"{inner}, {value}" if inner else value
            await send(message)

        try:
            await self.app(scope, receive, send_with_window)
        finally:
            # The endpoint settles its reservations; this is the net under it (a crash, a
            # cancellation before its own `finally`). Shielded: a client that went away must
            # still be charged for what it used.
            with anyio.CancelScope(shield=True):
                await budgets.settle_all()
            if self.alerts is not None:  # never waits: it reads and posts in the background
                self.alerts.settled(self, reserved=bool(budgets.reservations), error_code=state.error_code)

    def client_key(self, scope: Scope, state: RequestState) -> str:
        subject = (state.claims or {}).get("sub")
        if isinstance(subject, str) and subject:
            if len(subject) > 64:
                subject = hashlib.sha256(subject.encode()).hexdigest()
            return f"user:{subject}"
        return f"ip:{client_key(scope)}"

    def price(self, model: str) -> Price | None:
        """The model's price; under a spend cap a model with no price is refused, never guessed."""
        price = price_of(model, self.prices)
        if price is None and self.monthly_spend_micro is not None:
            # Settings refuses to start this way; a hand-built stack finds out here, on every request.
            logger.error("no price for model %r under a spend cap: add it to the prices (MODEL_PRICES)", model[:80])
            raise LLMGuardError(
                "This server cannot price its model, so it cannot keep its spending cap.", status_code=503
            )
        return price

    async def degradation(self) -> Degradation | None:
        """The degradation step in force now, from a reading at most ``READING_INTERVAL`` old.

        The request that finds the reading stale reads again (one round trip);
        requests that arrive meanwhile use the last reading rather than wait.
        Any current reading of ``month_usage()`` counts (the spend alerts take
        one after requests), so both on read about once a second, not twice.
        A storage that does not answer leaves the last reading: the caps still
        hold, and the hold reports the outage.
        """
        if not self.degrade:
            return None
        now = time.monotonic()
        if now - self._read_at >= READING_INTERVAL and not self._reading:
            self._reading = True
            try:
                await self.month_usage()  # keeps the reading
            except StorageUnavailable:
                self._read_at = now  # tried: the next try is a reading interval away
            finally:
                self._reading = False
        return step_for(self.degrade, self._used)

    async def month_used(self, now: float | None = None) -> float:
        """The fraction of the monthly caps used (the more used of tokens and spend), holds included."""
        usage = await self.month_usage(now)
        return max(used / limit for used, limit in usage.values())

    async def month_usage(self, now: float | None = None) -> dict[str, tuple[int, int]]:
        """Each monthly cap's use this month, holds included, as ``(used, cap)``, in one round trip.

        ``"tokens"`` counts tokens, ``"spend"`` millionths of a US dollar; a cap that is off is absent
        (no caps: an empty dict, and no round trip).
        """
        caps = self.month_caps(time.time() if now is None else now)
        if not caps:
            return {}
        totals = await self.storage.read([key for _, key, _ in caps])  # both in one round trip
        usage = {name: (total, limit) for (name, _, limit), total in zip(caps, totals, strict=True)}
        if now is None:
            # A reading of now, whoever asked for it (the spend alerts, a scrape): degradation() need
            # not read again for a reading interval.
            self._used = max(used / limit for used, limit in usage.values())
            self._read_at = time.monotonic()
        return usage

    def month_caps(self, now: float) -> list[tuple[str, str, int]]:
        """Each monthly cap that is on, as ``(name, this month's key, cap)``."""
        month = f"{datetime.fromtimestamp(now, tz=timezone.utc):%Y-%m}"
        return [
            (name, f"budget:{kind}:{month}", limit)
            for name, kind, limit in (
                ("tokens", "month-tokens", self.monthly_token_cap),
                ("spend", "month-spend", self.monthly_spend_micro),
            )
            if limit is not None
        ]

    async def client_usage(self, client: str, claims: Mapping[str, object]) -> ClientUsage:
        """What ``client`` has left of its token window, and how much of the month is used: one round trip, or none.

        Holds in flight count as used. Counts nothing. Raises ``StorageUnavailable``.
        """
        now = time.time()
        keys = list(self.window_keys(client, now)) if self.window is not None else []
        caps = self.month_caps(now)
        keys += [key for _, key, _ in caps]
        totals = await self.storage.read(keys) if keys else []  # the window's two periods and the caps, at once
        window = None
        if self.window is not None:
            length = self.window.get_expiry()
            limit = self.window_limit(claims)
            current, previous, *_ = totals
            used = current + previous * (1 - (now % length) / length)
            reset = math.ceil(length - now % length)
            window = WindowUsage(limit, max(0, math.floor(limit - used)), reset, length)
        month = totals[len(totals) - len(caps) :]
        used_fraction = max((total / cap for (_, _, cap), total in zip(caps, month, strict=True)), default=None)
        return ClientUsage(window, used_fraction)

    def window_keys(self, client: str, now: float) -> tuple[str, str]:
        """The client window's keys: this period's, and the last one's (whose use still partly counts)."""
        assert self.window is not None
        period = int(now // self.window.get_expiry())
        return f"budget:client:{client}:{period}", f"budget:client:{client}:{period - 1}"

    async def client_share(self, address: str) -> float:
        """What share of its token window the client at ``address`` has used, 0 to 1 (the challenge ladder's).

        One round trip: both periods in one read-only step.
        """
        if self.window is None:
            return 0.0
        now = time.time()
        length = self.window.get_expiry()
        current, previous = await self.storage.read(self.window_keys(f"ip:{address}", now))
        fading = 1 - (now % length) / length
        return min(1.0, max(0.0, (current + previous * fading) / self.window.amount))

    def window_limit(self, claims: Mapping[str, object]) -> int:
        """The client window's amount for a token with these claims: its ``quota`` claim when it has one."""
        assert self.window is not None
        quota = claims.get("quota")
        if isinstance(quota, int) and not isinstance(quota, bool):
            return max(0, quota)
        return self.window.amount

    def counters(self, client: str, claims: Mapping[str, object], price: Price | None, now: float) -> list[Counter]:
        """The budgets one request counts against, the client window first."""
        counters: list[Counter] = []
        if self.window is not None:
            length = self.window.get_expiry()
            key, previous = self.window_keys(client, now)
            limit = self.window_limit(claims)
            counters.append(Counter("client", key, limit, expiry=2 * length, period=length, previous=previous))
        moment = datetime.fromtimestamp(now, tz=timezone.utc)
        month = f"{moment:%Y-%m}"
        expiry = seconds_to_next_month(now) + 7 * 86400
        if self.monthly_token_cap is not None:
            counters.append(Counter("month-tokens", f"budget:month-tokens:{month}", self.monthly_token_cap, expiry))
        if self.monthly_spend_micro is not None and price is not None:
            counters.append(Counter("month-spend", f"budget:month-spend:{month}", self.monthly_spend_micro, expiry))
        return counters


class ClientBudgets:
    """What ``TokenBudget`` offers the endpoint behind it: ``reserve()`` for one request's client."""

    def __init__(self, owner: TokenBudget, client: str, state: RequestState) -> None:
        self.owner = owner
        self.client = client
        self.state = state
        self.max_prompt_tokens = owner.max_prompt_tokens
        self.reservations: list[Reservation] = []
        #: The client window as the last hold left it, ``(limit, left, seconds to the period's end,
        #: period)``, for the RateLimit fields; None without a window, or when the hold did not read it.
        self.window: tuple[int, int, int, int] | None = None

    async def reserve(self, *, model: str, prompt_tokens: int, max_output_tokens: int) -> Reservation:
        """Hold the worst case on every budget; the reservation says the output cap to ask for.

        Raises ``PromptTooLarge``, ``TokenBudgetExceeded``, ``TokenCapReached``,
        ``SpendCapReached``, or ``StorageUnavailable`` (when failing closed).
        """
        owner = self.owner
        if prompt_tokens > owner.max_prompt_tokens:
            raise PromptTooLarge(
                f"This conversation is longer than this server accepts ({owner.max_prompt_tokens} tokens). "
                "Start a new conversation or shorten it.",
            )
        price = owner.price(model)
        now = time.time()
        counters = owner.counters(self.client, self.state.claims or {}, price, now)
        reservation = Reservation(
            model=model,
            prompt_tokens=prompt_tokens,
            output_tokens=max_output_tokens,
            price=price,
            storage=owner.storage,
        )
        if counters:
            try:
                await reservation.hold(counters, now=now, min_output_tokens=owner.min_output_tokens)
            except StorageUnavailable:
                if not owner.storage.fail_open:
                    # The hold may still land, late: giving it back now (or marking it given back, so a
                    # late one changes nothing) keeps a refused request from costing anything.
                    reservation.refused()
                    await reservation.settle(attempts=1)
                    raise
                # Failing open: served unbudgeted; the settlement counts the charge whether or not
                # the hold landed, once the storage answers again.
            finally:
                # Granted or refused, the reply says what is left of the window (read by the hold itself).
                left = reservation.window_left()
                if left is not None and reservation.window is not None:
                    length = reservation.window[0].period
                    self.window = reservation.window[0].limit, left, math.ceil(length - now % length), length
        self.reservations.append(reservation)
        return reservation

    async def degradation(self) -> Degradation | None:
        """The degradation step in force for this request (``TokenBudget.degradation``)."""
        return await self.owner.degradation()

    async def settle_all(self) -> None:
        for reservation in self.reservations:
            await reservation.settle()
