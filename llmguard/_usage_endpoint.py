"""UsageEndpoint: ``GET /api/usage``, what the bearer token's client has left of its limits, and when."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llmguard._budget import ClientUsage, TokenBudget
from llmguard._client_ip import client_key
from llmguard._degrade import step_for
from llmguard._errors import MethodNotAllowed, StorageUnavailable, send_error
from llmguard._rate_limit import IPRateLimit
from llmguard._state import request_state

# From this fraction of a monthly cap on, the answer says the service is near its cap.
NEAR_CAP = 0.8


class UsageEndpoint:
    """``GET``: the client's request limit and token window as they stand, counting nothing.

    A browser shows "12 messages left today" from it. ``requests`` is the chat
    routes' ``IPRateLimit`` and ``budget`` their ``TokenBudget``: both are read,
    never hit (two storage round trips: the request limit, then the token window
    and the monthly caps in one read). Put it behind ``OriginFilter``, an
    ``IPRateLimit`` of its own and a ``JWTAuth`` without ``max_uses`` (reading
    what is left must not use up a single-use token): the token window is then
    the token's, by its ``sub`` and ``quota`` claims, as on the chat routes.

    The answer says how much is left and when it comes back, and whether the
    service is cheaper now (``degraded``) or near a monthly cap (``near_cap``):
    never an amount of money, never the size of a monthly cap, nothing about
    other clients.
    """

    def __init__(self, *, requests: IPRateLimit | None = None, budget: TokenBudget | None = None) -> None:
        self.requests = requests
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "GET":
            await send_error(scope, send, MethodNotAllowed(headers={"allow": "GET"}))
            return
        state = request_state(scope)
        requests = None
        usage = ClientUsage(None, None)
        try:
            if self.requests is not None:
                remaining, reset = await self.requests.window_stats(client_key(scope))
                limit, window = self.requests.item.amount, self.requests.window
                requests = {"limit": limit, "remaining": remaining, "reset": reset, "window": window}
            if self.budget is not None:
                usage = await self.budget.client_usage(self.budget.client_key(scope, state), state.claims or {})
        except StorageUnavailable as error:
            # Failing open or not: with the storage down there is nothing true to say.
            await send_error(scope, send, error)
            return
        tokens = usage.window
        used = usage.month_used
        degrade = self.budget.degrade if self.budget is not None else ()
        degraded = used is not None and step_for(degrade, used) is not None
        body = {
            "requests": requests,
            "tokens": None
            if tokens is None
            else {"limit": tokens.limit, "remaining": tokens.remaining, "reset": tokens.reset, "window": tokens.window},
            "degraded": degraded,
            "near_cap": degraded or (used is not None and used >= NEAR_CAP),
        }
        await JSONResponse(body, headers={"cache-control": "no-store"})(scope, receive, send)
