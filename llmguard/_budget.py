"""TokenBudget: caps what requests may cost in tokens and dollars, per client and per month.

Request counts do not protect money (one request can cost 10k tokens), so this
layer counts tokens. Before the provider is called, the endpoint asks the
request's ticket to *reserve* the worst case (the prompt estimate plus the
output cap) on every budget that applies; the reservation is added atomically
in the shared storage, so N parallel requests can never together pass a limit
(a request that finds too little room gets a lower output cap, or a refusal).
After the reply, however it ended (finished, failed, cut, or the client went
away), the ticket *settles*: it gives back what was reserved and not used, by
the provider's reported usage, or an estimate of what was streamed.

Budgets, each optional:
- per client (the ``sub`` claim of the token, else the client IP): tokens in a
  sliding window, ``tokens_per_client="100000/day"``; a ``quota`` claim
  (an integer, from an ``authenticate`` hook) replaces the amount for that
  user (it needs the window on: it sets an amount, not a period);
- for the whole service: tokens and US dollars per calendar month (UTC).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

import anyio
import limits
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._client_ip import ClientIP
from llmguard._errors import LLMGuardError, SpendCapReached, StorageUnavailable, TokenBudgetExceeded
from llmguard._prices import DEFAULT_PRICES, Price, price_of
from llmguard._state import RequestState, Usage, request_state
from llmguard._storage import Storage

logger = logging.getLogger("llmguard.budget")


@dataclass(frozen=True, slots=True)
class _Budget:
    """One counter in the storage, in its own unit (tokens or micro-dollars)."""

    kind: Literal["client", "month-tokens", "month-spend"]
    key: str
    limit: int
    expiry: int
    # The sliding window's previous period, already weighted by how much of it still counts.
    carried: float = 0.0


class TokenBudget:
    """Reserve each request's worst case on its budgets, settle to the real usage afterwards.

    Place it after ``JWTAuth`` (so budgets can follow the token's ``sub``) and
    before ``ChatEndpoint``, which reserves through ``scope["llmguard"].budget``.
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
        trusted_proxies: Sequence[str] = (),
        client_ip_header: str | None = None,
        client_ip: ClientIP | None = None,
    ) -> None:
        for name, value in (
            ("max_prompt_tokens", max_prompt_tokens),
            ("min_output_tokens", min_output_tokens),
            ("monthly_token_cap", monthly_token_cap),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} has value {value!r}: must be at least 1")
        if monthly_spend_cap_usd is not None and not monthly_spend_cap_usd > 0:
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
        self.client_ip = client_ip or ClientIP(trusted_proxies=trusted_proxies, header=client_ip_header)
        self.max_prompt_tokens = max_prompt_tokens
        self.monthly_token_cap = monthly_token_cap
        self.monthly_spend_micro = None if monthly_spend_cap_usd is None else round(monthly_spend_cap_usd * 1e6)
        self.prices = dict(prices)
        self.min_output_tokens = min_output_tokens
        self._unpriced_warned: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        ticket = BudgetTicket(self, self.client_key(scope, state), state)
        state.budget = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            # Shielded: a client that went away must still be charged for what it used.
            with anyio.CancelScope(shield=True):
                await ticket.settle()

    def client_key(self, scope: Scope, state: RequestState) -> str:
        subject = (state.claims or {}).get("sub")
        if isinstance(subject, str) and subject:
            if len(subject) > 64:
                subject = hashlib.sha256(subject.encode()).hexdigest()
            return f"user:{subject}"
        return f"ip:{self.client_ip(scope)}"

    def price(self, model: str) -> Price | None:
        price = price_of(model, self.prices)
        if price is None and self.monthly_spend_micro is not None:
            # Unknown model under a spend cap: count it at the dearest known price, and say so once.
            price = max(self.prices.values(), key=lambda p: p.input + p.output, default=Price(10.0, 40.0))
            if model not in self._unpriced_warned:
                self._unpriced_warned.add(model)
                logger.warning("no price for model %r: counting it at the highest known price; set MODEL_PRICES", model)
        return price


class BudgetTicket:
    """One request's reservation; the endpoint calls ``reserve``, the middleware ``settle``."""

    def __init__(self, budget: TokenBudget, client: str, state: RequestState) -> None:
        self.owner = budget
        self.client = client
        self.state = state
        self.price: Price | None = None
        self.reserved: list[tuple[_Budget, int]] = []
        self.settled = False

    async def reserve(self, *, model: str, prompt_tokens: int, max_output_tokens: int) -> int:
        """Reserve the worst case and return the output cap to ask the provider for (maybe lowered)."""
        owner = self.owner
        if prompt_tokens > owner.max_prompt_tokens:
            raise TokenBudgetExceeded(
                f"This conversation is about {prompt_tokens} tokens; this server accepts up to "
                f"{owner.max_prompt_tokens}. Start a new conversation or shorten it.",
                status_code=413,
            )
        self.price = owner.price(model)
        try:
            return await self._reserve(prompt_tokens, max_output_tokens)
        except StorageUnavailable as error:
            owner.storage.unavailable(error)  # raises unless failing open
            return max_output_tokens

    async def _reserve(self, prompt_tokens: int, max_output_tokens: int) -> int:
        now = time.time()
        storage = self.owner.storage
        budgets, previous_key = self._budgets(now)
        wanted = [self._amount(budget, prompt_tokens, max_output_tokens) for budget in budgets]
        changes = [(budget.key, amount, budget.expiry) for budget, amount in zip(budgets, wanted, strict=True)]
        if previous_key is not None:
            changes.append((previous_key, 0, 0))  # read the window's last period
        # Shielded, like every change to the counters: a reservation is either recorded or given back.
        with anyio.CancelScope(shield=True):
            results = await storage.add(changes)
        totals = results[: len(budgets)]
        added = list(zip(budgets, wanted, strict=True))
        if previous_key is not None:
            window = self.owner.window
            assert window is not None
            weight = 1 - (now % window.get_expiry()) / window.get_expiry()
            budgets[0] = replace(budgets[0], carried=results[-1] * weight)  # the client window is first

        grant = max_output_tokens
        binding: tuple[_Budget, int] | None = None
        for budget, amount, total in zip(budgets, wanted, totals, strict=True):
            others = total - amount  # used and reserved by everyone else, this period
            fits = self._output_for(budget, budget.limit - budget.carried - others, prompt_tokens)
            if fits < grant:
                grant, binding = fits, (budget, others)
        floor_tokens = min(self.owner.min_output_tokens, max_output_tokens)
        with anyio.CancelScope(shield=True):
            if grant < floor_tokens and binding is not None:
                await self._correct([(budget, -amount) for budget, amount in added], "release")
                raise self._refusal(*binding, now=now, needed=prompt_tokens + floor_tokens)
            # Shrink each reservation to the granted output cap.
            final = [(budget, self._amount(budget, prompt_tokens, grant)) for budget, _ in added]
            deltas = [(budget, after - before) for (budget, before), (_, after) in zip(added, final, strict=True)]
            if not await self._correct(deltas, "lower"):
                final = added
        self.reserved = final
        return grant

    async def settle(self) -> None:
        """Give back what was reserved and not used (or everything, when the provider never ran)."""
        if self.settled:
            return
        self.settled = True
        usage = self.state.usage
        if usage is not None and self.price is None:
            self.price = self.owner.price(self.state.model or "")
        if usage is not None and self.price is not None:
            self.state.cost_usd = self.price.micro_usd(usage.prompt_tokens, usage.completion_tokens) / 1e6
        await self._correct(
            [(budget, self._used(budget, usage) - reserved) for budget, reserved in self.reserved], "settle"
        )

    async def _correct(self, deltas: list[tuple[_Budget, int]], what: str) -> bool:
        """Apply corrections to reservations in one storage call; False (and a log line) if it failed."""
        changes = [(budget.key, delta, budget.expiry) for budget, delta in deltas if delta]
        try:
            await self.owner.storage.add(changes)
        except StorageUnavailable:
            logger.error("could not %s a budget reservation: the storage is unavailable", what)
            return False
        return True

    # -- helpers ---------------------------------------------------------------------

    def _budgets(self, now: float) -> tuple[list[_Budget], str | None]:
        """The budgets this request counts against, and the key of the client window's last period."""
        owner = self.owner
        budgets: list[_Budget] = []
        previous_key = None
        if owner.window is not None:
            length = owner.window.get_expiry()
            limit = owner.window.amount
            quota = (self.state.claims or {}).get("quota")
            if isinstance(quota, int) and not isinstance(quota, bool):
                limit = max(0, quota)
            period = int(now // length)
            previous_key = f"budget:client:{self.client}:{period - 1}"
            budgets.append(_Budget("client", f"budget:client:{self.client}:{period}", limit, 2 * length))
        moment = datetime.fromtimestamp(now, tz=timezone.utc)
        month = f"{moment:%Y-%m}"
        expiry = int(_next_month(moment).timestamp() - now) + 7 * 86400
        if owner.monthly_token_cap is not None:
            budgets.append(_Budget("month-tokens", f"budget:month-tokens:{month}", owner.monthly_token_cap, expiry))
        if owner.monthly_spend_micro is not None and self.price is not None:
            budgets.append(_Budget("month-spend", f"budget:month-spend:{month}", owner.monthly_spend_micro, expiry))
        return budgets, previous_key

    def _amount(self, budget: _Budget, prompt_tokens: int, output_tokens: int) -> int:
        if budget.kind == "month-spend":
            assert self.price is not None
            return self.price.micro_usd(prompt_tokens, output_tokens)
        return prompt_tokens + output_tokens

    def _used(self, budget: _Budget, usage: Usage | None) -> int:
        if usage is None:
            return 0
        return self._amount(budget, usage.prompt_tokens, usage.completion_tokens)

    def _output_for(self, budget: _Budget, room: float, prompt_tokens: int) -> int:
        """The largest output cap that fits in ``room`` units of this budget."""
        if budget.kind == "month-spend":
            assert self.price is not None
            left = room - self.price.micro_usd(prompt_tokens, 0)
            return int(left // self.price.output) if self.price.output > 0 else 1 << 30
        return math.floor(room - prompt_tokens)

    def _refusal(self, budget: _Budget, current: int, *, now: float, needed: int) -> LLMGuardError:
        if budget.kind == "client" and needed > budget.limit:
            # Waiting will not help: the request is bigger than the whole allowance.
            return TokenBudgetExceeded(
                f"This request needs about {needed} tokens, more than your whole allowance of {budget.limit}. "
                "Shorten the conversation."
            )
        if budget.kind == "client":
            wait = self._client_wait(budget, current, now, needed)
            return TokenBudgetExceeded(
                f"You have used your token allowance for now. Try again in {_humane(wait)}.",
                retry_after=wait,
            )
        wait = max(1, math.ceil(_next_month(datetime.fromtimestamp(now, tz=timezone.utc)).timestamp() - now))
        return SpendCapReached(
            "This service has reached its usage cap for the month. It will be back next month.",
            retry_after=wait,
        )

    def _client_wait(self, budget: _Budget, current: int, now: float, needed: int) -> int:
        """Seconds until the sliding window has room for ``needed`` more tokens (an estimate)."""
        assert self.owner.window is not None
        length = self.owner.window.get_expiry()
        left_in_period = length - now % length
        excess = budget.carried + current + needed - budget.limit
        if excess <= budget.carried:
            # The previous period's share fades out linearly over what is left of this one.
            return max(1, math.ceil(excess / budget.carried * left_in_period))
        # Then this period's own use fades out over the next one.
        return max(1, math.ceil(left_in_period + (excess - budget.carried) / max(1, current) * length))


def _next_month(moment: datetime) -> datetime:
    if moment.month == 12:
        return datetime(moment.year + 1, 1, 1, tzinfo=timezone.utc)
    return datetime(moment.year, moment.month + 1, 1, tzinfo=timezone.utc)


def _humane(seconds: int) -> str:
    if seconds < 90:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"
