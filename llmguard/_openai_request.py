"""The body of ``POST /v1/chat/completions`` (OpenAI's shape), checked against the server's policy.

Only parameters that cannot raise the bill or reach past the chat are
forwarded; anything else (``tools``, ``service_tier``, ``store``, audio, ...) is
refused by name rather than silently passed to the provider or dropped.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from llmguard._chat_request import preset_name
from llmguard._errors import InvalidRequest

# Forwarded as the client sent them, once checked.
PASSED_THROUGH = frozenset(
    {"temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "seed", "response_format"}
)
# Read by llmguard itself.
HANDLED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options", "user", "preset"}
)
SYSTEM_ROLES = ("system", "developer")
CHAT_ROLES = ("user", "assistant")


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    max_tokens: int | None = None
    include_usage: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    #: The server preset named (llmguard's own field: ``extra_body={"preset": ...}`` in the SDKs).
    preset: str | None = None


def parse_openai_request(data: Any, *, server_model: str, models: Collection[str]) -> OpenAIRequest:
    """Validate an OpenAI chat completion request (as ``parse_json`` gave it: valid Unicode, sane
    nesting); every refusal is a 400 naming the parameter."""
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object.")
    unknown = sorted(set(data) - PASSED_THROUGH - HANDLED)
    if unknown:
        raise _bad(f"Unsupported parameter: {unknown[0]!r} is not available through this proxy.", unknown[0])

    model = data.get("model", server_model)
    if not isinstance(model, str) or model not in models:
        shown = model if isinstance(model, str) else type(model).__name__
        raise _bad(f"The model {shown[:80]!r} is not available here; GET /v1/models lists the models.", "model")

    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("'messages' must be a non-empty array.", "messages")
    messages = [_message(item, f"messages[{index}]") for index, item in enumerate(raw_messages)]

    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _bad("Only one choice per request is allowed ('n' must be 1).", "n")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object.", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))

    caps: list[int] = []
    for name in ("max_completion_tokens", "max_tokens"):
        cap = data.get(name)
        if cap is None:
            continue
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise _bad(f"'{name}' must be a whole number, 1 or more.", name)
        caps.append(cap)
    params = {name: data[name] for name in PASSED_THROUGH if name in data}
    _check_params(params)
    return OpenAIRequest(
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=min(caps) if caps else None,
        include_usage=include_usage,
        params=params,
        preset=preset_name(data.get("preset"), status_code=400),
    )


def _message(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object with 'role' and 'content'.", where)
    role = item.get("role")
    if role not in SYSTEM_ROLES + CHAT_ROLES:
        raise _bad(f"{where}.role must be 'system', 'developer', 'user' or 'assistant'.", f"{where}.role")
    content = item.get("content")
    if isinstance(content, list):
        content = _text_parts(content, f"{where}.content")
    elif not isinstance(content, str):
        raise _bad(f"{where}.content must be a string or an array of text parts.", f"{where}.content")
    # The provider gets "system" whichever the client used: llmguard decides if it may.
    return {"role": "system" if role in SYSTEM_ROLES else role, "content": content}


def _text_parts(parts: list[Any], where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _bad(f"{where}[{index}] must be a text part; images, audio and files are not accepted.", where)
        texts.append(part["text"])
    return "".join(texts)


def _check_params(params: dict[str, Any]) -> None:
    ranges = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
    for name, (low, high) in ranges.items():
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _bad(f"'{name}' must be a number from {low} to {high}.", name)
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(f"'{name}' must be a number from {low} to {high}.", name)
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("'seed' must be an integer.", "seed")
    stop = params.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("'stop' must be a string or up to 4 strings.", "stop")
    response_format = params.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") in ("text", "json_object", "json_schema")
    ):
        raise _bad("'response_format' must be an object with type text, json_object or json_schema.", "response_format")


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    # 400, as OpenAI answers: the official SDKs raise BadRequestError for it.
    return InvalidRequest(message, status_code=400, param=param)
