"""TokenBudget: caps what requests may cost in tokens and dollars, per client and per month.

Request counts do not protect money (one request can cost 10k tokens), so this
layer counts tokens. Every provider call goes through a :class:`Reservation`:

1. **reserve** — before the provider is called, the worst case (the prompt's
   upper-bound estimate plus the output cap) is added to every budget that
   applies, atomically in the shared storage, so N parallel requests can never
   together pass a limit. A request that finds too little room gets a lower
   output cap, or a refusal.
2. **record** — the endpoint says what it learnt: the provider refused
   (nothing billed), or answered, with or without its usage, completely or cut
   short.
3. **settle**, exactly once on every exit path (success, error, client gone,
   timeout, cancellation) — the reservation is corrected to the charge, and
   the rest given back. What is charged when (see :func:`charge`):

   - the provider reported its usage: that usage;
   - the provider refused, was never reached, or the deadline passed between
     two attempts: nothing;
   - a reply without usage (a stream the client left, or that the provider cut,
     stalled or garbled; a provider that reports none): the prompt's bound plus
     a bound of the text that came back, plus the tokens that may have been in
     flight when the stream was cut; for a reasoning model, whose hidden tokens
     come before any text, the whole output cap;
   - anything else (no usable answer after the request was sent: a timeout, a
     broken connection, a malformed body; a crash): the whole reservation. A
     reservation nobody recorded anything on is charged in full: the safe side
     for the bill.

Every step of a hold (placed, lowered, settled) is marked in the storage by the
reservation's own key, so it is safe to repeat and to arrive late: a hold that
lands after its request gave up is given back by the settlement, a settlement
after Redis lost its data adds only the charge (see ``Storage.hold_step``).

Budgets, each optional:
- per client (the ``sub`` claim of the token, else the client IP): tokens in a
  sliding window, ``tokens_per_client="100000/day"``; a ``quota`` claim
  (an integer, from an ``authenticate`` hook) replaces the amount for that
  user (it needs the window on: it sets an amount, not a period);
- for the whole service: tokens and US dollars per calendar month (UTC).

The arithmetic (the charge, the output cap that fits, the client's wait) is in
plain functions at the bottom of this module, with no storage and no clock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

import anyio
import limits
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._client_ip import client_key
from llmguard._errors import (
    LLMGuardError,
    PromptTooLarge,
    SpendCapReached,
    StorageUnavailable,
    TokenBudgetExceeded,
    TokenCapReached,
)
from llmguard._prices import DEFAULT_PRICES, Price, is_reasoning_model, price_of
from llmguard._state import RequestState, Usage, request_state
from llmguard._storage import Amounts, Storage

logger = logging.getLogger("llmguard.budget")

Kind = Literal["client", "month-tokens", "month-spend"]

# Tokens a provider may have produced past the last delta relayed before a stream was cut
# (its generation continues while the cancellation travels back to it).
IN_FLIGHT_TOKENS = 32
# A settlement the storage did not take is tried again, after 0.5 s and 1 s.
SETTLE_ATTEMPTS = 3
SETTLE_RETRY_DELAY = 0.5


@dataclass(frozen=True, slots=True)
class Counter:
    """One budget in the storage, counted in its own unit (tokens, or micro-dollars for spend)."""

    kind: Kind
    key: str
    limit: int
    expiry: int
    #: The client window's length in seconds (0 for the monthly budgets).
    period: int = 0
    #: The sliding window's previous period, already weighted by how much of it still counts.
    carried: float = 0.0


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
            try:
                self.window = limits.parse(tokens_per_client)
            except ValueError:
                raise ValueError(
                    f"tokens_per_client has value {tokens_per_client!r}: expected a rate such as '100000/day'"
                ) from None
        self.app = app
        self.storage = storage if isinstance(storage, Storage) else Storage(storage, failure=failure)
        self.max_prompt_tokens = max_prompt_tokens
        self.monthly_token_cap = monthly_token_cap
        self.monthly_spend_micro = None if monthly_spend_cap_usd is None else round(monthly_spend_cap_usd * 1e6)
        self.prices = dict(prices)
        self.min_output_tokens = min_output_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        budgets = ClientBudgets(self, self.client_key(scope, state), state)
        state.budget = budgets
        try:
            await self.app(scope, receive, send)
        finally:
            # The endpoint settles its reservations; this is the net under it (a crash, a
            # cancellation before its own `finally`). Shielded: a client that went away must
            # still be charged for what it used.
            with anyio.CancelScope(shield=True):
                await budgets.settle_all()

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

    def counters(self, client: str, claims: Mapping[str, object], price: Price | None, now: float) -> list[Counter]:
        """The budgets one request counts against, the client window first."""
        counters: list[Counter] = []
        if self.window is not None:
            length = self.window.get_expiry()
            limit = self.window.amount
            quota = claims.get("quota")
            if isinstance(quota, int) and not isinstance(quota, bool):
                limit = max(0, quota)
            key = f"budget:client:{client}:{int(now // length)}"
            counters.append(Counter("client", key, limit, expiry=2 * length, period=length))
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
                await self._hold(reservation, counters, now)
            except StorageUnavailable:
                if not owner.storage.fail_open:
                    # The hold may still land, late: giving it back now (or marking it given back, so a
                    # late one changes nothing) keeps a refused request from costing anything.
                    reservation.refused()
                    await reservation.settle(attempts=1)
                    raise
                # Failing open: served unbudgeted; the settlement counts the charge whether or not
                # the hold landed, once the storage answers again.
        self.reservations.append(reservation)
        return reservation

    async def _hold(self, reservation: Reservation, counters: list[Counter], now: float) -> None:
        storage = self.owner.storage
        prompt, wanted_output = reservation.prompt_tokens, reservation.output_tokens
        reservation.holds = [
            (counter, units(counter.kind, reservation.price, prompt, wanted_output)) for counter in counters
        ]
        reservation.lowered = list(reservation.holds)
        changes: list[tuple[str, Amounts, int]] = [
            (counter.key, (amount, 0, 0, 0), counter.expiry) for counter, amount in reservation.holds
        ]
        window = self.owner.window
        if window is not None:
            length = window.get_expiry()
            previous_key = f"budget:client:{self.client}:{int(now // length) - 1}"
            changes.append((previous_key, (0, 0, 0, 0), 0))  # read the window's last period
        # Shielded, like every change to the counters: a hold is either recorded or given back.
        with anyio.CancelScope(shield=True):
            results = await storage.hold_step(reservation.marker, changes, ("held", "", "", ""))
        totals = results[: len(counters)]
        if window is not None:
            length = window.get_expiry()
            counters[0] = replace(counters[0], carried=results[-1] * (1 - (now % length) / length))

        grant = wanted_output
        binding: tuple[Counter, int] | None = None
        for counter, (_, amount), total in zip(counters, reservation.holds, totals, strict=True):
            others = total - amount  # used and held by everyone else, this period
            fits = output_room(counter.kind, reservation.price, counter.limit - counter.carried - others, prompt)
            if fits < grant:
                grant, binding = fits, (counter, others)
        floor = min(self.owner.min_output_tokens, wanted_output)
        if grant < floor and binding is not None:
            reservation.refused()
            await reservation.settle(attempts=1)
            raise refusal(*binding, now=now, needed=prompt + floor)
        # Shrink the hold to the granted output cap (if this fails, the larger hold stands until
        # settled: the settlement knows from the marker which one is in place).
        reservation.output_tokens = grant
        reservation.lowered = [(counter, units(counter.kind, reservation.price, prompt, grant)) for counter in counters]
        lowering: list[tuple[str, Amounts, int]] = [
            (counter.key, (0, after - before, 0, 0), counter.expiry)
            for (counter, before), (_, after) in zip(reservation.holds, reservation.lowered, strict=True)
        ]
        if any(amounts[1] for _, amounts, _ in lowering):
            with anyio.CancelScope(shield=True):
                await _step(storage, reservation.marker, lowering, ("", "lowered", "", ""), "lower")

    async def settle_all(self) -> None:
        for reservation in self.reservations:
            await reservation.settle()


class Reservation:
    """One provider call's hold on its budgets: recorded as it goes, settled exactly once.

    Endpoints use it as::

        reservation = await budgets.reserve(model=..., prompt_tokens=..., max_output_tokens=...)
        try:
            ...  # call the provider with reservation.output_tokens as the output cap
            reservation.answered(usage, text, complete=True)  # or reservation.refused()
        finally:
            charged = await reservation.settle()

    Without a ``TokenBudget`` in front (``Reservation.unbudgeted``) the same
    object still works out the charge, for the access log.
    """

    def __init__(
        self,
        *,
        model: str,
        prompt_tokens: int,
        output_tokens: int,
        price: Price | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        #: The output cap to send the provider (maybe lowered to what the budgets have room for).
        self.output_tokens = output_tokens
        self.price = price
        self.storage = storage
        #: Where the storage keeps this hold's state: placed, lowered, settled.
        self.marker = f"budget:hold:{secrets.token_hex(12)}"
        #: What the hold added to each budget, and what it was lowered to.
        self.holds: list[tuple[Counter, int]] = []
        self.lowered: list[tuple[Counter, int]] = []
        self.reasoning = is_reasoning_model(model)
        self._refused = False
        self._usage: Usage | None = None
        self._output_text_tokens: int | None = None
        self._complete = False
        self.charged: Usage | None = None

    @classmethod
    def unbudgeted(cls, *, model: str, prompt_tokens: int, max_output_tokens: int) -> Reservation:
        return cls(model=model, prompt_tokens=prompt_tokens, output_tokens=max_output_tokens)

    def refused(self) -> None:
        """The provider refused the request or was never reached: it billed nothing."""
        self._refused = True

    def answered(self, usage: Usage | None, output_text_tokens: int, *, complete: bool) -> None:
        """The provider answered: its usage if it said, the tokens of the text relayed, and whether it finished."""
        self._usage = usage
        self._output_text_tokens = output_text_tokens
        self._complete = complete

    def saw_reasoning(self) -> None:
        """The reply carries hidden reasoning (whatever the model's name): charge like a reasoning model."""
        self.reasoning = True

    def due(self) -> Usage:
        """What the call is charged, by what has been recorded so far."""
        return charge(
            prompt_tokens=self.prompt_tokens,
            output_cap=self.output_tokens,
            refused=self._refused,
            usage=self._usage,
            output_text_tokens=self._output_text_tokens,
            complete=self._complete,
            reasoning=self.reasoning,
        )

    async def settle(self, *, attempts: int = SETTLE_ATTEMPTS) -> Usage:
        """Correct the hold to the charge and give back the rest; later calls return the same charge.

        Whichever state the hold is in (placed, lowered, lost with the storage's
        data, never landed), the budgets end up holding the charge, once. A
        refusal settles with one attempt, so that it answers at once; a charge
        is worth trying through a short outage.
        """
        if self.charged is not None:
            return self.charged
        self.charged = self.due()
        if self.storage is not None and self.holds:
            used = self.charged
            changes: list[tuple[str, Amounts, int]] = []
            for (counter, held), (_, lowered) in zip(self.holds, self.lowered, strict=True):
                cost = units(counter.kind, self.price, used.prompt_tokens, used.completion_tokens)
                changes.append((counter.key, (cost, cost - held, cost - lowered, 0), counter.expiry))
            with anyio.CancelScope(shield=True):
                settled = ("settled", "settled", "settled", "")
                await _step(self.storage, self.marker, changes, settled, "settle", attempts)
        return self.charged

    @property
    def cost_usd(self) -> float | None:
        if self.charged is None or self.price is None:
            return None
        return self.price.micro_usd(self.charged.prompt_tokens, self.charged.completion_tokens) / 1e6


async def _step(
    storage: Storage,
    marker: str,
    changes: Sequence[tuple[str, Amounts, int]],
    next_states: tuple[str, str, str, str],
    what: str,
    attempts: int = 1,
) -> bool:
    """One step of a hold in the storage, tried ``attempts`` times; False (and a log line) if it failed.

    Every step is safe to repeat (the hold's marker knows what was done), so a settlement is
    retried through a short outage rather than left to the window's end.
    """
    for attempt in range(attempts):
        try:
            await storage.hold_step(marker, changes, next_states)
        except StorageUnavailable:
            if attempt + 1 < attempts:
                await anyio.sleep(SETTLE_RETRY_DELAY * 2**attempt)
        else:
            return True
    logger.error(
        "could not %s a budget reservation (%d tries): the storage is unavailable; the step may still "
        "land late, else the hold stays counted until its budget's period ends",
        what,
        attempts,
    )
    return False


# -- the arithmetic: plain functions, no storage, no clock ------------------------------


def charge(
    *,
    prompt_tokens: int,
    output_cap: int,
    refused: bool = False,
    usage: Usage | None = None,
    output_text_tokens: int | None = None,
    complete: bool = False,
    reasoning: bool = False,
) -> Usage:
    """What one provider call is charged, never less than the provider could bill.

    ``prompt_tokens`` is the prompt's upper bound and ``output_cap`` the output
    cap the provider was given (it bills at most that many output tokens).
    """
    if usage is not None:
        return usage
    if refused:
        return Usage(0, 0, estimated=True)
    if output_text_tokens is None or reasoning:
        # Unknown (sent, then lost), or hidden reasoning tokens we cannot see: the worst case.
        return Usage(prompt_tokens, output_cap, estimated=True)
    in_flight = 0 if complete else IN_FLIGHT_TOKENS
    return Usage(prompt_tokens, min(output_cap, output_text_tokens + in_flight), estimated=True)


def units(kind: Kind, price: Price | None, prompt_tokens: int, output_tokens: int) -> int:
    """What a request of this size counts on a budget of this kind: tokens, or micro-dollars."""
    if kind == "month-spend":
        if price is None:
            raise ValueError("a spend budget needs a price")
        return price.micro_usd(prompt_tokens, output_tokens)
    return prompt_tokens + output_tokens


def output_room(kind: Kind, price: Price | None, room: float, prompt_tokens: int) -> int:
    """The largest output cap that fits in ``room`` units of a budget, after the prompt (may be negative)."""
    if kind == "month-spend":
        if price is None:
            raise ValueError("a spend budget needs a price")
        if price.output <= 0:
            return 1 << 30 if price.micro_usd(prompt_tokens, 0) <= room else -1
        output = math.floor((room - price.micro_usd(prompt_tokens, 0)) / price.output)
        # Float division can land a token either side of the answer: settle it on the cost itself.
        while output >= 0 and price.micro_usd(prompt_tokens, output) > room:
            output -= 1
        while price.micro_usd(prompt_tokens, output + 1) <= room:
            output += 1
        return output
    return math.floor(room - prompt_tokens)


def client_wait(*, limit: int, carried: float, current: int, needed: int, now: float, length: int) -> int:
    """Seconds until a sliding token window has room for ``needed`` more tokens (at least 1).

    ``carried`` is the previous period's use, already weighted; ``current`` is
    this period's use (everyone else's holds included).
    """
    left_in_period = length - now % length
    excess = carried + current + needed - limit
    if excess <= 0:
        return 1
    if excess <= carried:
        # The previous period's share fades out linearly over what is left of this one.
        return max(1, math.ceil(excess / carried * left_in_period))
    # Then this period's own use fades out over the next one.
    return max(1, math.ceil(left_in_period + (excess - carried) / max(1, current) * length))


def seconds_to_next_month(now: float) -> int:
    """Whole seconds from ``now`` to the first second of next month, UTC (at least 1)."""
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    return max(1, math.ceil(next_month(moment).timestamp() - now))


def next_month(moment: datetime) -> datetime:
    if moment.month == 12:
        return datetime(moment.year + 1, 1, 1, tzinfo=timezone.utc)
    return datetime(moment.year, moment.month + 1, 1, tzinfo=timezone.utc)


def refusal(counter: Counter, current: int, *, now: float, needed: int) -> LLMGuardError:
    """The error for a request that does not fit ``counter`` (``current``: everyone else's use)."""
    if counter.kind == "client":
        if needed > counter.limit:
            # Waiting will not help: the request is bigger than the whole allowance.
            return TokenBudgetExceeded(
                f"This request needs up to {needed} tokens, more than your whole allowance of {counter.limit}. "
                "Shorten the conversation."
            )
        wait = client_wait(
            limit=counter.limit, carried=counter.carried, current=current, needed=needed, now=now, length=counter.period
        )
        return TokenBudgetExceeded(
            f"You have used your token allowance for now. Try again in {humane(wait)}.", retry_after=wait
        )
    wait = seconds_to_next_month(now)
    if counter.kind == "month-tokens":
        return TokenCapReached(
            "This service has used its tokens for the month. It will be back next month.", retry_after=wait
        )
    return SpendCapReached(
        "This service has reached its spending cap for the month. It will be back next month.", retry_after=wait
    )


def humane(seconds: int) -> str:
    if seconds < 90:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"
