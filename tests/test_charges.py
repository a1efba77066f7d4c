"""The charge arithmetic of ``_charges``: what a call is charged, how much output fits, when to retry."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from harness import call_outcomes, token_counts
from hypothesis import assume, given
from hypothesis import strategies as st

from llmguard._charges import Counter, charge, client_wait, humane, next_month, output_room, refusal, units
from llmguard._prices import Price
from llmguard._state import Usage

# -- when to retry -------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2025, 12, 15, 8, 30, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)),
        (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)),
        (datetime(2024, 2, 29, 12, tzinfo=timezone.utc), datetime(2024, 3, 1, tzinfo=timezone.utc)),
    ],
)
def test_next_month_starts_on_the_first_at_midnight_utc(moment: datetime, expected: datetime) -> None:
    assert next_month(moment) == expected


def fits_after(wait: float, *, now: float, previous: int, current: int, needed: int, limit: int, length: int) -> bool:
    """Whether the sliding window has room for ``needed`` tokens ``wait`` seconds from ``now``."""
    later = now + wait
    start = now - now % length
    if later < start + length:
        used = previous * (1 - (later % length) / length) + current
    elif later < start + 2 * length:
        used = current * (1 - (later % length) / length)
    else:
        used = 0
    return used + needed <= limit + 1e-9


@pytest.mark.parametrize(
    ("into", "previous", "current", "needed"),
    [
        pytest.param(0, 50, 30, 40, id="the-last-period-fades"),
        pytest.param(1200, 120, 0, 40, id="the-last-period-fades-later-on"),
        pytest.param(1800, 0, 80, 40, id="this-period-fades-in-the-next"),
        pytest.param(3000, 60, 70, 40, id="both"),
        pytest.param(100, 100, 0, 3, id="almost-room"),
    ],
)
def test_the_client_retry_after_is_when_the_window_has_room_again(
    into: int, previous: int, current: int, needed: int
) -> None:
    length, limit = 3600, 100
    now = 1000 * length + into
    carried = previous * (1 - into / length)
    assert not fits_after(0, now=now, previous=previous, current=current, needed=needed, limit=limit, length=length)
    wait = client_wait(limit=limit, carried=carried, current=current, needed=needed, now=now, length=length)
    state: dict[str, Any] = {
        "now": now,
        "previous": previous,
        "current": current,
        "needed": needed,
        "limit": limit,
        "length": length,
    }
    assert wait >= 1
    assert fits_after(wait, **state)
    # And not much sooner: the estimate is whole seconds, rounded up.
    assert wait == 1 or not fits_after(wait - 1.5, **state)


@pytest.mark.parametrize(
    ("kind", "code"),
    [("month-tokens", "TokenCapReached"), ("month-spend", "SpendCapReached")],
)
def test_a_monthly_refusal_says_to_retry_at_the_start_of_next_month(kind: Any, code: str) -> None:
    now = datetime(2025, 12, 31, 23, 59, 30, tzinfo=timezone.utc).timestamp()
    counter = Counter(kind, f"budget:{kind}:2025-12", 1000, 86400)
    error = refusal(counter, 1000, now=now, needed=25)
    assert (error.code, error.status_code, error.retry_after) == (code, 503, 30)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (2, "2 seconds"), (89, "89 seconds"), (90, "2 minutes"), (600, "10 minutes"), (5400, "2 hours")],
)
def test_retry_times_read_naturally(seconds: int, text: str) -> None:
    assert humane(seconds) == text


def test_the_refusal_message_says_when_to_retry() -> None:
    counter = Counter("client", "budget:client:ip:192.0.2.1:1000", 100, 7200, period=3600)
    error = refusal(counter, 80, now=1000 * 3600 + 1800, needed=40)
    assert (error.code, error.status_code) == ("TokenBudgetExceeded", 429)
    assert error.retry_after is not None
    assert f"Try again in {humane(error.retry_after)}." in error.message


# -- properties (hypothesis) -------------------------------------------------------------

caps = st.integers(min_value=1, max_value=100_000)


@given(prompt=token_counts, cap=caps, outcome=call_outcomes, reasoning=st.booleans())
def test_a_charge_is_never_negative_and_never_below_what_was_seen(
    prompt: int, cap: int, outcome: tuple[str, Any], reasoning: bool
) -> None:
    kind, detail = outcome
    usage = Usage(*detail) if kind == "usage" else None
    text, complete = detail if kind == "text" else (None, False)
    charged = charge(
        prompt_tokens=prompt,
        output_cap=cap,
        refused=kind == "refused",
        usage=usage,
        output_text_tokens=text,
        complete=complete,
        reasoning=reasoning,
    )
    assert charged.prompt_tokens >= 0
    assert charged.completion_tokens >= 0
    if usage is not None:
        assert charged == usage  # the provider's word is final
    elif kind == "refused":
        assert charged.total_tokens == 0
    else:
        # Never more than the provider could bill (it got this output cap) ...
        assert charged.prompt_tokens == prompt
        assert charged.completion_tokens <= cap
        # ... never less than what came back, and the worst case whenever hidden tokens are possible.
        assert charged.completion_tokens >= min(cap, text or 0)
        if kind == "nothing" or reasoning:
            assert charged.completion_tokens == cap


prices = st.builds(Price, st.floats(0, 100), st.floats(0.01, 200))


@given(
    kind=st.sampled_from(["client", "month-tokens", "month-spend"]),
    price=prices,
    room=token_counts,
    prompt=token_counts,
)
def test_the_output_room_fits_in_the_room(kind: Any, price: Price, room: int, prompt: int) -> None:
    output = output_room(kind, price, room, prompt)
    if output >= 0:
        assert units(kind, price, prompt, output) <= room
        # And it is the largest that fits (one more token would not).
        assert units(kind, price, prompt, output + 1) > room or output >= 1 << 30


@given(
    length=st.sampled_from([60, 3600, 86400]),
    into=st.floats(0, 0.999),
    previous=st.integers(0, 1000),
    current=st.integers(0, 1000),
    needed=st.integers(1, 500),
    limit=st.integers(1, 1000),
)
def test_the_client_wait_is_when_there_is_room_again(
    length: int, into: float, previous: int, current: int, needed: int, limit: int
) -> None:
    now = 1000 * length + into * length
    state: dict[str, Any] = {
        "now": now,
        "previous": previous,
        "current": current,
        "needed": needed,
        "limit": limit,
        "length": length,
    }
    carried = previous * (1 - (now % length) / length)
    assume(needed <= limit and not fits_after(0, **state))
    wait = client_wait(limit=limit, carried=carried, current=current, needed=needed, now=now, length=length)
    assert wait >= 1
    assert fits_after(wait, **state)
