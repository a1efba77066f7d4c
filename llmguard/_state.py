"""What one request carries through the layers, kept in ``scope["llmguard"]``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.types import Scope

if TYPE_CHECKING:
    from llmguard._degrade import Degradation
    from llmguard._reservation import Reservation

SCOPE_KEY = "llmguard"


@dataclass(slots=True)
class Usage:
    """Tokens one provider call consumed; ``estimated`` when the provider did not say."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class Budget(Protocol):
    """What TokenBudget offers the endpoint behind it."""

    #: Prompts over this many tokens are refused: counting may stop past it.
    max_prompt_tokens: int

    async def reserve(self, *, model: str, prompt_tokens: int, max_output_tokens: int) -> Reservation:
        """Hold the worst case; the reservation says the output cap to use (maybe lowered), or raise a refusal."""
        ...

    async def degradation(self) -> Degradation | None:
        """The degradation step in force (a cheaper model, a lower cap), or None."""
        ...


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


@dataclass(slots=True)
class RequestState:
    """Per-request data shared by the middlewares and the endpoints.

    Layers write what they learn (the verified ``claims``, the ``usage`` the
    request was charged) and read what earlier layers decided. Nothing about a
    request is ever stored on a middleware instance.
    """

    request_id: str = field(default_factory=new_request_id)
    error_style: Literal["llmguard", "openai"] = "llmguard"
    client_ip: str | None = None
    claims: dict[str, Any] | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    budget: Budget | None = None
    error_code: str | None = None
    #: The preset the request was served with, and the degradation step it got (chat routes).
    preset: str | None = None
    degraded: Degradation | None = None
    #: Set by the bundled server when this request came past ``MAX_CONNECTIONS``.
    server_busy: bool = False
    #: The provider call, as ``time.perf_counter()`` readings (the chat service takes them, metrics read
    #: them): when it started, when the first token of the reply came (a stream's first text, or a whole
    #: reply), when it ended.
    provider_started: float | None = None
    first_token_at: float | None = None
    provider_ended: float | None = None


def request_state(scope: Scope) -> RequestState:
    """The request's state, created by whichever layer asks first."""
    state = scope.get(SCOPE_KEY)
    if state is None:
        state = scope[SCOPE_KEY] = RequestState()
    return state
