"""What a request is charged and what fits a budget: plain arithmetic, no storage, no clock.

What is charged when (see :func:`charge`), never less than the provider could bill:

- the provider reported its usage: that usage;
- the provider refused, was never reached, or the deadline passed between two
  attempts: nothing;
- a reply without usage (a stream the client left, or that the provider cut,
  stalled or garbled; a provider that reports none): the prompt's bound plus a
  bound of the text that came back, plus the tokens that may have been in
  flight when the stream was cut; for a reasoning model, whose hidden tokens
  come before any text, the whole output cap;
- anything else (no usable answer after the request was sent: a timeout, a
  broken connection, a malformed body; a crash): the whole reservation. A
  reservation nobody recorded anything on is charged in full: the safe side for
  the bill.

A budget counts tokens, or micro-dollars for the monthly spend (:func:`units`);
:func:`output_grant` says the output cap that fits every budget of a request,
:func:`refusal` the error for one that does not, with when to come back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from llmguard._errors import LLMGuardError, SpendCapReached, TokenBudgetExceeded, TokenCapReached
from llmguard._prices import Price
from llmguard._state import Usage

Kind = Literal["client", "month-tokens", "month-spend"]

# Tokens a provider may have produced past the last delta relayed before a stream was cut
# (its generation continues while the cancellation travels back to it).
IN_FLIGHT_TOKENS = 32


@dataclass(frozen=True, slots=True)
class Counter:
    """One budget in the storage, counted in its own unit (tokens, or micro-dollars for spend)."""

    kind: Kind
    key: str
    limit: int
    expiry: int
    #: The client window's length in seconds (0 for the monthly budgets).
    period: int = 0
    #: The client window's previous period, whose use still partly counts (a sliding window).
    previous: str | None = None
    #: The previous period's use, already weighted by how much of it still counts.
    carried: float = 0.0


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


def output_grant(
    budgets: Sequence[tuple[Counter, int]], price: Price | None, prompt_tokens: int, wanted: int
) -> tuple[int, tuple[Counter, int] | None]:
    """The output cap every budget has room for (at most ``wanted``), and the budget that bound it.

    ``budgets`` pairs each counter with everyone else's use of it this period.
    The binding budget comes with that use, for :func:`refusal`; None when
    ``wanted`` fits them all.
    """
    grant, binding = wanted, None
    for counter, others in budgets:
        fits = output_room(counter.kind, price, counter.limit - counter.carried - others, prompt_tokens)
        if fits < grant:
            grant, binding = fits, (counter, others)
    return grant, binding


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
