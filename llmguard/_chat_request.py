"""The body of ``POST /api/chat``, validated into what the provider may receive."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Receive, Scope

from llmguard._errors import InvalidRequest, PayloadTooLarge

CLIENT_ROLES = ("user", "assistant")
# No chat body needs more (an AI SDK message with metadata is about 6 deep, a strict JSON schema
# about 25); deeper values are refused before anything walks them recursively.
MAX_DEPTH = 64
# AI SDK parts that carry no text for the model and are safe to drop.
IGNORED_PART_TYPES = ("step-start", "reasoning", "source-url", "source-document")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    system: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    #: The model the client named, when it is one the server offers (else the server's).
    model: str | None = None
    #: The server preset the client named (``_presets``).
    preset: str | None = None


async def read_body(scope: Scope, receive: Receive, *, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``max_bytes``.

    Callers bound the time it may take (``ChatEndpoint.body_timeout``): a client
    dripping a byte at a time must not hold a connection for long.
    """
    declared = Headers(scope=scope).get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidRequest("The Content-Length header is not a number.", status_code=400) from None
        if length > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client went away while sending the body.", status_code=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")


def parse_json(body: bytes) -> Any:
    """The body as JSON, refused with 400 unless every string is valid Unicode and nesting stays sane.

    JSON may escape lone surrogates (``"\\ud800"``), which no UTF-8 encoder
    accepts: they are refused here, naming the field, before anything tries to
    log or forward them.
    """
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", status_code=400)
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.", status_code=400) from None
    check_tree(data)
    return data


def check_tree(data: Any) -> None:
    """Refuse (400, naming the field) a lone surrogate in any string or key, or nesting past ``MAX_DEPTH``."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            check_text(value, where or "body")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(
                    f"{where or 'The body'} is nested more than {MAX_DEPTH} levels deep.",
                    status_code=400,
                    param=where or None,
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    check_text(key, f"{where} (a key)" if where else "a key")
                    here = f"{where}.{key[:40]}" if where else key[:40]
                else:
                    here = f"{where}[{key}]"
                stack.append((item, here, depth + 1))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_chat_request(data: Any, *, server_model: str, models: Collection[str] = ()) -> ChatRequest:
    """Validate the ``/api/chat`` body (as ``parse_json`` gave it); plain ``content`` and AI SDK ``parts`` both work.

    ``model`` may be left out, or name the server's model or one of ``models``.
    """
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    messages = tuple(_message(item, f"messages[{index}]") for index, item in enumerate(raw_messages))

    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string.", param="system")

    # The AI SDK's useChat (DefaultChatTransport) sends {id, messages, trigger} and expects its
    # stream without asking for it: a body of that shape streams unless it says otherwise.
    stream = data.get("stream", "trigger" in data)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream")

    model = data.get("model")
    if model is not None and model != server_model and model not in models:
        raise InvalidRequest("The model is chosen by the server; leave 'model' out.", param="model")
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise InvalidRequest("Only one reply per request is allowed ('n' must be 1).", param="n")

    return ChatRequest(
        messages=messages,
        system=system or None,
        stream=stream,
        max_tokens=_optional_int(data.get("max_tokens"), "max_tokens"),
        temperature=_temperature(data.get("temperature")),
        model=model if model != server_model else None,
        preset=preset_name(data.get("preset")),
    )


def preset_name(value: Any, *, status_code: int = 422) -> str | None:
    """The ``preset`` field: a preset's name, or absent (null, or an empty string)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "'preset' must be the name of a preset (a string).", status_code=status_code, param="preset"
        )
    return value


def _message(item: Any, where: str) -> ChatMessage:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with 'role' and 'content'.", param=where)
    role = item.get("role")
    if role in ("system", "developer"):
        raise InvalidRequest(
            f"{where}.role {role!r} is not allowed; send instructions in the 'system' field.",
            param=f"{where}.role",
        )
    if role not in CLIENT_ROLES:
        raise InvalidRequest(f"{where}.role must be 'user' or 'assistant'.", param=f"{where}.role")
    if "content" in item and item["content"] is not None:
        content = item["content"]
        if not isinstance(content, str):
            raise InvalidRequest(f"{where}.content must be a string.", param=f"{where}.content")
    elif "parts" in item:
        content = _parts_text(item["parts"], f"{where}.parts")
    else:
        raise InvalidRequest(f"{where} needs 'content' (a string) or 'parts'.", param=where)
    return ChatMessage(role=role, content=content)


def _parts_text(parts: Any, where: str) -> str:
    if not isinstance(parts, list):
        raise InvalidRequest(f"{where} must be a list.", param=where)
    texts: list[str] = []
    for index, part in enumerate(parts):
        here = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise InvalidRequest(f"{here} must be an object with a 'type'.", param=here)
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{here}.text must be a string.", param=f"{here}.text")
            texts.append(text)
        elif kind not in IGNORED_PART_TYPES and not kind.startswith(("data-", "tool-")):
            raise InvalidRequest(f"{here} has type {kind[:40]!r}, which this server does not accept.", param=here)
    return "".join(texts)


def check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{where} contains invalid Unicode (a lone surrogate).", status_code=400, param=where
        ) from None


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a whole number, 1 or more.", param=name)
    return value


def _temperature(value: Any) -> float | None:
    if value is None:
        return None
    # Compared as given: a 400-digit integer is valid JSON but overflows float().
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise InvalidRequest("'temperature' must be a number between 0 and 2.", param="temperature")
    return float(value)
