"""Hypothesis strategies for request bodies: anything JSON can carry, and chat-shaped bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

from llmguard import InvalidRequest

T = TypeVar("T")

# Text as JSON can carry it: any code point, lone surrogates included ("\ud800" is valid JSON).
any_text = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)

roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "", None])
parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "reasoning", "image_url", "file", "data-x"])}, optional={"text": json_values}
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles}, optional={"content": st.one_of(any_text, json_values, parts), "parts": parts}
    ),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages},
    optional={
        "system": json_values,
        "stream": json_values,
        "max_tokens": json_values,
        "max_completion_tokens": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "model": st.one_of(st.sampled_from(["gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o"]), json_values),
        "n": json_values,
        "stop": st.one_of(any_text, st.lists(any_text, max_size=5), json_values),
        "response_format": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
                optional={"json_schema": json_values},
            ),
            json_values,
        ),
        "seed": json_values,
        "stream_options": json_values,
        "user": json_values,
        "trigger": json_values,
        "id": json_values,
        "tools": json_values,
    },
)
bodies = st.one_of(chat_bodies, json_values)


def encoded(value: Any) -> bytes:
    """``value`` as a client would send it (lone surrogates escaped, as JSON allows)."""
    return json.dumps(value).encode()


def outcome(parse: Callable[[], T]) -> T | InvalidRequest:
    """What parsing gives: the result, or the refusal (so a property can check either)."""
    try:
        return parse()
    except InvalidRequest as error:
        return error
