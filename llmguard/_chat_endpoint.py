"""ChatEndpoint: ``POST /api/chat``, parsed here and answered by the chat service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from llmguard._chat_request import parse_chat_request, parse_json, read_body
from llmguard._chat_service import DEFAULT_BASE_URL, DEFAULT_MODEL, ChatPolicy, ChatService
from llmguard._errors import LLMGuardError, MethodNotAllowed, RequestTimeout, send_error
from llmguard._presets import Preset, check_presets
from llmguard._state import request_state
from llmguard._tokens import load as load_tokenizer
from llmguard._upstream import TokenParam, TransportName, Upstream, check_choice, token_limit_param
from llmguard._wire import UIMessageWire


class ChatEndpoint:
    """``POST`` a chat, get the assistant's reply as JSON or as an AI SDK UI message stream.

    ``transport`` carries the provider calls: ``"auto"`` uses aiohttp's
    connection pool through httpx-aiohttp when it is installed (``pip install
    'llmguard[speed]'``: much faster under concurrency), else httpx's own; an
    httpx transport object replaces both (tests use ``FakeProvider.transport()``).

    The server decides what the provider sees: its model (or one of
    ``models`` the client names), its output cap, its system prompt when the
    client sends none, ``n = 1``; or, for a request naming one of ``presets``,
    the preset's system prompt, model, output cap and temperature.
    ``allow_client_system`` says whether a client may send its own system
    prompt: ``None`` ("auto") allows it only when the server has neither a
    ``system_prompt`` nor ``presets``. The caller's headers
    (``Authorization`` included) are never forwarded. The usage the provider
    reports (or an estimate when it reports none, or the client went away) is
    left in ``scope["llmguard"].usage`` for the layers around this endpoint.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        system_prompt: str = "",
        allow_client_system: bool | None = None,
        max_tokens: int = 2000,
        presets: Mapping[str, Preset | Mapping[str, object]] | None = None,
        max_tokens_param: str = "auto",
        max_body_bytes: int = 1_048_576,
        body_timeout: float = 10,
        request_timeout: float = 120,
        retries: int = 2,
        models: Sequence[str] = (),
        transport: httpx.AsyncBaseTransport | TransportName = "auto",
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes has value {max_body_bytes!r}: must be at least 1")
        if not body_timeout > 0:
            raise ValueError(f"body_timeout has value {body_timeout!r}: must be positive")
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        policy = ChatPolicy(
            model=model,
            models=models,
            system_prompt=system_prompt,
            allow_client_system=allow_client_system,
            max_tokens=max_tokens,
            presets=check_presets(presets or {}),
        )
        upstream = Upstream(
            base_url=base_url, api_key=api_key, retries=retries, read_timeout=request_timeout, transport=transport
        )
        check_choice("max_tokens_param", max_tokens_param, TokenParam)
        token_param = token_limit_param(base_url, max_tokens_param)
        self.service = ChatService(policy, upstream, token_param=token_param, request_timeout=request_timeout)

    @property
    def model(self) -> str:
        return self.service.policy.model

    @property
    def models(self) -> tuple[str, ...]:
        """The models clients may ask for: the server's first."""
        return tuple(self.service.policy.models)

    @property
    def upstream(self) -> Upstream:
        """The pooled provider client."""
        return self.service.upstream

    async def aclose(self) -> None:
        """Close the pooled provider connections (the bundled app's lifespan does this)."""
        await self.service.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        service, policy = self.service, self.service.policy
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"allow": "POST"})
            body = await self.read_body(scope, receive)
            request = parse_chat_request(parse_json(body), server_model=policy.model, models=policy.models)
            messages = [{"role": message.role, "content": message.content} for message in request.messages]
            if request.system is not None:
                messages.insert(0, {"role": "system", "content": request.system})
            state = request_state(scope)
            provider_request, state.preset = policy.provider_request(
                model=request.model,
                messages=messages,
                max_tokens=request.max_tokens,
                stream=request.stream,
                params={} if request.temperature is None else {"temperature": request.temperature},
                system_param="system",
                preset=request.preset,
                allowed_presets=(state.claims or {}).get("presets"),
            )
        except LLMGuardError as error:
            await send_error(scope, send, error)
            return
        await service.answer(scope, receive, send, provider_request, UIMessageWire())

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, within ``max_body_bytes`` and ``body_timeout`` (413 / 408 otherwise)."""
        try:
            with anyio.fail_after(self.body_timeout):
                return await read_body(scope, receive, max_bytes=self.max_body_bytes)
        except TimeoutError:
            # The rest of the body may still come: the connection cannot carry another request.
            message = f"The request body did not arrive within {self.body_timeout:g} seconds."
            raise RequestTimeout(message, headers={"connection": "close"}) from None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Served on its own (uvicorn llmguard...:endpoint), the endpoint owns its lifespan.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                load_tokenizer()
                self.service.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
