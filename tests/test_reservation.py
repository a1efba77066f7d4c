"""Reservation: holds placed before the provider call, each settled exactly once, never past a cap."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.lowlevel
from harness import call_outcomes
from hypothesis import given, settings
from hypothesis import strategies as st

from llmguard import TokenBudget
from llmguard._budget import ClientBudgets
from llmguard._charges import Kind, units
from llmguard._chat_service import DEFAULT_MODEL
from llmguard._errors import SpendCapReached, TokenCapReached
from llmguard._prices import DEFAULT_PRICES
from llmguard._state import RequestState, Usage
from llmguard._storage import Storage


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


requests = st.lists(
    st.tuples(st.integers(1, 400), st.integers(1, 600), call_outcomes, st.integers(0, 3)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(requests=requests, limit=st.integers(20, 3000), spend=st.booleans())
def test_concurrent_reservations_never_pass_the_cap_and_each_settles_once(
    requests: list[tuple[int, int, tuple[str, Any], int]], limit: int, spend: bool
) -> None:
    price = DEFAULT_PRICES[DEFAULT_MODEL]

    async def scenario() -> None:
        storage = Storage("memory://")
        owner = TokenBudget(
            _no_app,
            storage=storage,
            tokens_per_client=None,
            monthly_token_cap=None if spend else limit,
            monthly_spend_cap_usd=limit / 1e6 if spend else None,  # micro-dollars: the same numbers
            min_output_tokens=1,
        )
        budgets = ClientBudgets(owner, "ip:192.0.2.1", RequestState())
        kind: Kind = "month-spend" if spend else "month-tokens"
        key = f"budget:{kind}:{datetime.now(timezone.utc):%Y-%m}"
        charges: list[int] = []

        async def one(prompt: int, cap: int, outcome: tuple[str, Any], pauses: int) -> None:
            try:
                reservation = await budgets.reserve(model=DEFAULT_MODEL, prompt_tokens=prompt, max_output_tokens=cap)
            except (TokenCapReached, SpendCapReached):
                return
            assert 1 <= reservation.output_tokens <= cap
            assert await storage.get(key) <= limit, "the holds passed the cap"
            for _ in range(pauses):
                await anyio.lowlevel.checkpoint()  # let the others interleave
            kind_, detail = outcome
            if kind_ == "refused":
                reservation.refused()
            elif kind_ == "usage":
                # What a provider may bill: at most the prompt bound and the granted output cap.
                used = Usage(detail[0] % (prompt + 1), detail[1] % (reservation.output_tokens + 1))
                reservation.answered(used, 0, complete=True)
            elif kind_ == "text":
                reservation.answered(None, detail[0], complete=detail[1])
            charged = await reservation.settle()
            assert await reservation.settle() is charged  # twice, charged once
            charges.append(units(kind, price, charged.prompt_tokens, charged.completion_tokens))

        async with anyio.create_task_group() as tasks:
            for request in requests:
                tasks.start_soon(one, *request)
        await budgets.settle_all()  # the middleware's net: nothing more to do
        total = await storage.get(key)
        assert total == sum(charges)
        assert total <= limit

    anyio.run(scenario)
