"""Every error llmguard answers with, and the one place that turns them into responses.

    LLMGuardError                  500 InternalError
    ├── InvalidRequest             400 / 422
    ├── Unauthorized               401
    ├── ChallengeRequired          401
    ├── Forbidden                  403
    ├── ChallengeFailed            403
    ├── NotFound                   404
    ├── MethodNotAllowed           405
    ├── RequestTimeout             408
    ├── PayloadTooLarge            413
    ├── PromptTooLarge             413
    ├── RateLimitExceeded          429
    ├── TokenBudgetExceeded        429
    ├── UpstreamError              502 / 504
    ├── SpendCapReached            503
    ├── TokenCapReached            503
    ├── ServerBusy                 503
    ├── ChallengeUnavailable       503
    └── StorageUnavailable         503

An error's class name is its stable ``code``: the JSON body is
``{"error": "<code>", "message": "...", "request_id": "..."}`` plus any
keyword-only context the error carries (``param``, ``retry_after`` and the
``context`` mapping, such as ``upstream_status``). On OpenAI-compatible routes the same error is written in
OpenAI's shape, ``{"error": {"message", "type", "code", "param"}}``, so the
official SDKs raise their own typed errors.

Raise any of these from an ``authenticate`` hook to refuse a token with that
status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar, Literal

from starlette.responses import Response
from starlette.types import Scope, Send

from llmguard._state import request_state

ErrorStyle = Literal["llmguard", "openai"]
JSONScalar = str | int | float | bool | None
#: What an error's ``context`` may carry: scalars, or JSON objects such as a fresh challenge.
JSONValue = JSONScalar | Mapping[str, object]


class LLMGuardError(Exception):
    """Base class of every error llmguard turns into a JSON response."""

    code: ClassVar[str] = "InternalError"
    default_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Something went wrong on the server."
    openai_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        status_code: int | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
        context: Mapping[str, JSONValue] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.status_code = status_code or self.default_status
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.param = param
        self.context = dict(context or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code})"


class InvalidRequest(LLMGuardError):
    """The body is not JSON (400) or not the expected shape (422)."""

    code = "InvalidRequest"
    default_status = 422
    default_message = "The request is not valid."
    openai_type = "invalid_request_error"


class Unauthorized(LLMGuardError):
    """A bearer token is missing, malformed, expired or not ours."""

    code = "Unauthorized"
    default_status = 401
    default_message = "A valid bearer token is required. Get one from POST /api/token."
    openai_type = "authentication_error"


class ChallengeRequired(LLMGuardError):
    """``POST /api/token`` came without the solution of the challenge this server asks for.

    The body carries the challenge to solve (``"challenge"``: what ``GET /api/challenge`` answers).
    """

    code = "ChallengeRequired"
    default_status = 401
    default_message = "Solve the challenge first: this server asks for a moment of work before it hands out a token."
    openai_type = "authentication_error"


class Forbidden(LLMGuardError):
    """The request's Origin is not allowed."""

    code = "Forbidden"
    default_status = 403
    default_message = "This origin is not allowed to use this server."
    openai_type = "permission_error"


class NotFound(LLMGuardError):
    code = "NotFound"
    default_status = 404
    default_message = "There is nothing at this path."
    openai_type = "not_found_error"


class MethodNotAllowed(LLMGuardError):
    code = "MethodNotAllowed"
    default_status = 405
    default_message = "This method is not allowed here."
    openai_type = "invalid_request_error"


class RequestTimeout(LLMGuardError):
    """The request (its headers or its body) did not arrive in time: a slow or stalled client."""

    code = "RequestTimeout"
    default_status = 408
    default_message = "The request did not arrive in time."
    openai_type = "invalid_request_error"


class PayloadTooLarge(LLMGuardError):
    code = "PayloadTooLarge"
    default_status = 413
    default_message = "The request body is too large."
    openai_type = "invalid_request_error"


class RateLimitExceeded(LLMGuardError):
    code = "RateLimitExceeded"
    default_status = 429
    default_message = "You have exceeded the allowed number of requests."
    openai_type = "rate_limit_error"


class PromptTooLarge(LLMGuardError):
    """The prompt is over ``MAX_PROMPT_TOKENS``: waiting will not help, a shorter one will."""

    code = "PromptTooLarge"
    default_status = 413
    default_message = "The prompt is longer than this server accepts."
    openai_type = "invalid_request_error"


class TokenBudgetExceeded(LLMGuardError):
    """The client's token window (``TOKENS_PER_IP``, or the token's ``quota``) is used up for now."""

    code = "TokenBudgetExceeded"
    default_status = 429
    default_message = "This request would exceed the token budget."
    openai_type = "rate_limit_error"


class UpstreamError(LLMGuardError):
    """The AI provider failed, refused or timed out (its own text is never relayed)."""

    code = "UpstreamError"
    default_status = 502
    default_message = "The AI provider could not answer this request."
    openai_type = "server_error"


class SpendCapReached(LLMGuardError):
    """The service's monthly dollar cap (``MONTHLY_SPEND_CAP_USD``) is reached, for everyone."""

    code = "SpendCapReached"
    default_status = 503
    default_message = "This server has reached its spending cap for the month."
    openai_type = "insufficient_quota"


class TokenCapReached(LLMGuardError):
    """The service's monthly token cap (``MONTHLY_TOKEN_CAP``) is reached, for everyone."""

    code = "TokenCapReached"
    default_status = 503
    default_message = "This server has reached its token cap for the month."
    openai_type = "insufficient_quota"


class ChallengeFailed(LLMGuardError):
    """The solution sent to ``POST /api/token`` is wrong, forged, reused, expired, or another client's.

    The body carries a fresh challenge (``"challenge"``) to try again with.
    """

    code = "ChallengeFailed"
    default_status = 403
    default_message = "The challenge was not solved. Try again with the new one."
    openai_type = "permission_error"


class ChallengeUnavailable(LLMGuardError):
    """The CAPTCHA provider's verifier did not answer (in time), so no token can be minted now."""

    code = "ChallengeUnavailable"
    default_status = 503
    default_message = "The server cannot check the CAPTCHA right now. Try again shortly."
    openai_type = "server_error"


class ServerBusy(LLMGuardError):
    """The bundled server has ``MAX_CONNECTIONS`` connections open already."""

    code = "ServerBusy"
    default_status = 503
    default_message = "The server is handling too many connections. Try again shortly."
    openai_type = "server_error"


class StorageUnavailable(LLMGuardError):
    code = "StorageUnavailable"
    default_status = 503
    default_message = "The server cannot check its limits right now. Try again shortly."
    openai_type = "server_error"


def error_body(error: LLMGuardError, *, style: ErrorStyle, request_id: str | None) -> bytes:
    if style == "openai":
        inner: dict[str, JSONScalar] = {
            "message": error.message,
            "type": error.openai_type,
            "code": error.code,
            "param": error.param,
        }
        return _dumps({"error": inner})
    body: dict[str, JSONValue] = {"error": error.code, "message": error.message}
    if error.param is not None:
        body["param"] = error.param
    if error.retry_after is not None:
        body["retry_after"] = error.retry_after
    body.update(error.context)
    if request_id is not None:
        body["request_id"] = request_id
    return _dumps(body)


def error_headers(error: LLMGuardError, body_length: int) -> list[tuple[bytes, bytes]]:
    headers = {
        "content-type": "application/json",
        "content-length": str(body_length),
        "cache-control": "no-store",
    }
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
        # The official OpenAI SDKs read this one first.
        headers["retry-after-ms"] = str(error.retry_after * 1000)
    if error.status_code == 401:
        headers["www-authenticate"] = 'Bearer error="invalid_token"'
    headers.update({name.lower(): value for name, value in error.headers.items()})
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


async def send_error(scope: Scope, send: Send, error: LLMGuardError) -> None:
    """Answer the request with ``error``, in the shape its route speaks."""
    response = error_response(scope, error)
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    await send(start)
    await send({"type": "http.response.body", "body": response.body})


def error_response(scope: Scope, error: LLMGuardError) -> Response:
    """The JSON response for ``error``; its shape follows the route (llmguard's or OpenAI's)."""
    state = request_state(scope)
    state.error_code = error.code
    body = error_body(error, style=state.error_style, request_id=state.request_id)
    status = error.status_code
    if state.error_style == "openai" and status == 422:
        status = 400  # what OpenAI answers a request it cannot use, and what its SDKs expect
    response = Response(body, status_code=status)
    response.raw_headers = error_headers(error, len(body))
    return response


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
