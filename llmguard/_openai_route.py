"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The official SDKs (``openai`` for Python and JavaScript) work against these with
the JWT from ``/api/token`` as their API key. Every guard still applies: the
same origin, rate and budget checks, the server's models and output cap, its
system-prompt policy and presets (``extra_body={"preset": "support"}``), ``n = 1``. Replies are the provider's own
``chat.completion`` objects and ``chat.completion.chunk`` events, passed
through; errors are in OpenAI's shape so the SDKs raise their own typed errors.
"""

from __future__ import annotations

import json

from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from llmguard._chat_endpoint import ChatEndpoint
from llmguard._chat_request import parse_json
from llmguard._errors import LLMGuardError, MethodNotAllowed, send_error
from llmguard._openai_request import parse_openai_request
from llmguard._state import request_state
from llmguard._wire import OpenAIWire


class OpenAIErrors:
    """Wrap the ``/v1`` stack in this, so that every layer's refusal is in OpenAI's error shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_state(scope).error_style = "openai"
        await self.app(scope, receive, send)


class OpenAICompatible(Router):
    """``/chat/completions`` and ``/models`` on ``chat``'s provider, model list and caps.

    Mount it at ``/v1``, behind the same guards as ``/api/chat`` and inside
    :class:`OpenAIErrors`.
    """

    def __init__(self, chat: ChatEndpoint) -> None:
        super().__init__(
            routes=[
                Route("/chat/completions", ChatCompletions(chat)),
                Route("/models", ModelList(chat.models)),
            ]
        )


class ChatCompletions:
    """``POST /chat/completions`` in OpenAI's shapes, answered by ``ChatEndpoint``'s chat service."""

    def __init__(self, chat: ChatEndpoint) -> None:
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_state(scope).error_style = "openai"
        service, policy = self.chat.service, self.chat.service.policy
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"allow": "POST"})
            body = await self.chat.read_body(scope, receive)
            request = parse_openai_request(parse_json(body), server_model=policy.model, models=policy.models)
            state = request_state(scope)
            provider_request, state.preset = policy.provider_request(
                model=request.model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                stream=request.stream,
                params=request.params,
                system_param="messages",
                preset=request.preset,
                allowed_presets=(state.claims or {}).get("presets"),
            )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        await service.answer(scope, receive, send, provider_request, OpenAIWire(include_usage=request.include_usage))


class ModelList:
    """``GET /models``: the models a client may name."""

    def __init__(self, models: tuple[str, ...]) -> None:
        data = [{"id": model, "object": "model", "created": 0, "owned_by": "llmguard"} for model in models]
        self.body = json.dumps({"object": "list", "data": data}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_state(scope).error_style = "openai"
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(scope, send, MethodNotAllowed(headers={"allow": "GET"}))
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body if scope["method"] == "GET" else b""})
