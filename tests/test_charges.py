"""The charge arithmetic of ``_charges``: what a call is charged, how much output fits, when to retry."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Window:
    """A client's sliding window at ``now``: the last period's count, this one's, its limit and length."""

    now: float
    previous: int
    current: int
    limit: int
    length: int

    def fits_after(self, wait: float, needed: int) -> bool:
        """Whether the window has room for ``needed`` tokens ``wait`` seconds from now."""
        later = self.now + wait
        start = self.now - self.now % self.length
        if later < start + self.length:
            used = self.previous * (1 - (later % self.length) / self.length) + self.current
        elif later < start + 2 * self.length:
            used = self.current * (1 - (later % self.length) / self.length)
        else:
            used = 0
        return used + needed <= self.limit + 1e-9

    def client_wait(self, needed: int) -> int:
        """What llmguard tells a client asking for ``needed`` tokens to wait."""
        carried = self.previous * (1 - (self.now % self.length) / self.length)
        return client_wait(
            limit=self.limit, carried=carried, current=self.current, needed=needed, now=self.now, length=self.length
        )


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
    window = Window(now=1000 * 3600 + into, previous=previous, current=current, limit=100, length=3600)
    assert not window.fits_after(0, needed)
    wait = window.client_wait(needed)
    assert wait >= 1
    assert window.fits_after(wait, needed)
    # And not much sooner: the estimate is whole seconds, rounded up.
    assert wait == 1 or not window.fits_after(wait - 1.5, needed)


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
    window = Window(now=1000 * length + into * length, previous=previous, current=current, limit=limit, length=length)
    assume(needed <= limit and not window.fits_after(0, needed))
    wait = window.client_wait(needed)
    assert wait >= 1
    assert window.fits_after(wait, needed)
