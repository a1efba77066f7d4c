"""Reservation: one provider call's hold on its budgets — reserve, record, settle.

1. **reserve** (:meth:`Reservation.hold`) — before the provider is called, the
   worst case (the prompt's upper-bound estimate plus the output cap) is added
   to every budget that applies, atomically in the shared storage, so N
   parallel requests can never together pass a limit. A request that finds too
   little room gets a lower output cap, or a refusal.
2. **record** — the endpoint says what it learnt: the provider refused
   (nothing billed), or answered, with or without its usage, completely or cut
   short.
3. **settle**, exactly once on every exit path (success, error, client gone,
   timeout, cancellation) — the hold is corrected to the charge, and the rest
   given back. What is charged when is in ``_charges``.

Every step of a hold (placed, lowered, settled) is marked in the storage by the
reservation's own key, so it is safe to repeat and to arrive late: a hold that
lands after its request gave up is given back by the settlement, a settlement
after Redis lost its data adds only the charge (see ``Storage.hold_step``).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import replace

import anyio

from llmguard._charges import Counter, charge, output_grant, refusal, units
from llmguard._errors import StorageUnavailable
from llmguard._prices import Price, is_reasoning_model
from llmguard._state import Usage
from llmguard._storage import Amounts, Storage

logger = logging.getLogger("llmguard.budget")

# A settlement the storage did not take is tried again, after 0.5 s and 1 s.
SETTLE_ATTEMPTS = 3
SETTLE_RETRY_DELAY = 0.5


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
        #: The client window, and everyone else's use of it (the previous period's share included) as the hold found it.
        self.window: tuple[Counter, float] | None = None
        self.reasoning = is_reasoning_model(model)
        self._refused = False
        self._usage: Usage | None = None
        self._output_text_tokens: int | None = None
        self._complete = False
        self.charged: Usage | None = None

    @classmethod
    def unbudgeted(cls, *, model: str, prompt_tokens: int, max_output_tokens: int) -> Reservation:
        return cls(model=model, prompt_tokens=prompt_tokens, output_tokens=max_output_tokens)

    # -- reserve --------------------------------------------------------------------------

    async def hold(self, counters: Sequence[Counter], *, now: float, min_output_tokens: int) -> None:
        """Hold the worst case on every budget, then lower the output cap to the room they have.

        Raises the budget's refusal (the hold given back first) when not even
        ``min_output_tokens`` fit, and ``StorageUnavailable`` when the storage
        did not answer (the hold may still land: settling gives it back).
        """
        storage = self.storage
        if storage is None:
            raise RuntimeError("an unbudgeted reservation has no storage to hold on")
        prompt, wanted = self.prompt_tokens, self.output_tokens
        self.holds = [(counter, units(counter.kind, self.price, prompt, wanted)) for counter in counters]
        self.lowered = list(self.holds)
        changes: list[tuple[str, Amounts, int]] = [
            (counter.key, (amount, 0, 0, 0), counter.expiry) for counter, amount in self.holds
        ]
        # A sliding window's previous period is read in the same step (an amount of 0 reads).
        changes += [(counter.previous, (0, 0, 0, 0), 0) for counter in counters if counter.previous]
        # Shielded, like every change to the counters: a hold is either recorded or given back.
        with anyio.CancelScope(shield=True):
            results = await storage.hold_step(self.marker, changes, ("held", "", "", ""))
        totals, previous = results[: len(counters)], iter(results[len(counters) :])
        budgets: list[tuple[Counter, int]] = []
        for (counter, amount), total in zip(self.holds, totals, strict=True):
            if counter.previous:
                fading = 1 - (now % counter.period) / counter.period
                counter = replace(counter, carried=next(previous) * fading)
            budgets.append((counter, total - amount))  # used and held by everyone else, this period
            if counter.kind == "client":
                self.window = counter, counter.carried + total - amount

        grant, binding = output_grant(budgets, self.price, prompt, wanted)
        floor = min(min_output_tokens, wanted)
        if grant < floor and binding is not None:
            self.refused()
            await self.settle(attempts=1)
            raise refusal(*binding, now=now, needed=prompt + floor)
        await self._lower(storage, grant)

    async def _lower(self, storage: Storage, grant: int) -> None:
        # If this fails, the larger hold stands until settled: the settlement knows from the
        # marker which one is in place.
        self.output_tokens = grant
        self.lowered = [
            (counter, units(counter.kind, self.price, self.prompt_tokens, grant)) for counter, _ in self.holds
        ]
        lowering: list[tuple[str, Amounts, int]] = [
            (counter.key, (0, after - before, 0, 0), counter.expiry)
            for (counter, before), (_, after) in zip(self.holds, self.lowered, strict=True)
        ]
        if any(amounts[1] for _, amounts, _ in lowering):
            with anyio.CancelScope(shield=True):
                await _step(storage, self.marker, lowering, ("", "lowered", "", ""), "lower")

    def window_left(self) -> int | None:
        """Tokens left in the client window after this hold (conservative: the whole hold counted), or None.

        None when there is no client window or the hold never read it.
        """
        if self.window is None:
            return None
        counter, others = self.window
        held = 0 if self._refused else units("client", None, self.prompt_tokens, self.output_tokens)
        return max(0, math.floor(counter.limit - others - held))

    # -- record ---------------------------------------------------------------------------

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

    # -- settle ---------------------------------------------------------------------------

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
