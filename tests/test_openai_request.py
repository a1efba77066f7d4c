"""The OpenAI-shaped request of /v1/chat/completions: what passes, and what is refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest
import strategies
from hypothesis import given, settings

from llmguard._chat_request import parse_json
from llmguard._errors import InvalidRequest
from llmguard._openai_request import parse_openai_request
from llmguard._tokens import estimate_text_tokens
from llmguard._upstream import UNBILLED_FIELDS, ProviderRequest

SERVER_MODEL = "gpt-4.1-mini"
MODELS = {SERVER_MODEL, "gpt-4.1-nano"}
USER = {"role": "user", "content": "Hello"}
ROLES = {"role", "content", "system", "user", "assistant"}  # structure, counted in the per-message overhead


def parse(**body: Any) -> Any:
    """The body as the route reads it: through parse_json (which refuses invalid Unicode) first."""
    data = parse_json(json.dumps({"messages": [USER], **body}).encode())
    return parse_openai_request(data, server_model=SERVER_MODEL, models=MODELS)


def test_a_minimal_request_uses_the_server_model() -> None:
    request = parse()
    assert request.model == SERVER_MODEL
    assert request.messages == [USER]
    assert request.stream is False
    assert request.max_tokens is None


def test_an_allowed_model_is_kept() -> None:
    assert parse(model="gpt-4.1-nano").model == "gpt-4.1-nano"


def test_system_and_developer_messages_reach_the_provider_as_system() -> None:
    request = parse(messages=[{"role": "developer", "content": "Be brief."}, USER])
    assert request.messages[0] == {"role": "system", "content": "Be brief."}


def test_text_parts_are_joined() -> None:
    content = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert parse(messages=[{"role": "user", "content": content}]).messages == [USER]


def test_the_output_cap_is_the_smallest_asked_for() -> None:
    assert parse(max_tokens=300, max_completion_tokens=200).max_tokens == 200


def test_stream_options_and_passed_through_parameters() -> None:
    request = parse(
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.2,
        top_p=1,
        stop=["\n\n"],
        seed=7,
        response_format={"type": "json_object"},
    )
    assert request.stream is True
    assert request.include_usage is True
    assert request.params == {
        "temperature": 0.2,
        "top_p": 1,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"model": "gpt-4o"}, "model", id="model-not-allowed"),
        pytest.param({"model": 4}, "model", id="model-not-a-string"),
        pytest.param({"messages": []}, "messages", id="no-messages"),
        pytest.param({"messages": "hi"}, "messages", id="messages-not-a-list"),
        pytest.param({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", id="tool-role"),
        pytest.param({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", id="content-number"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            id="image-part",
        ),
        pytest.param({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content", id="surrogate"),
        pytest.param({"n": 2}, "n", id="n-2"),
        pytest.param({"stream": "yes"}, "stream", id="stream-string"),
        pytest.param({"stream_options": "usage"}, "stream_options", id="stream-options-string"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
        pytest.param({"max_completion_tokens": True}, "max_completion_tokens", id="max-tokens-bool"),
        pytest.param({"temperature": 3}, "temperature", id="temperature-high"),
        pytest.param({"temperature": 10**400}, "temperature", id="temperature-huge-int"),
        pytest.param({"top_p": -1}, "top_p", id="top-p-negative"),
        pytest.param({"seed": 1.5}, "seed", id="seed-float"),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="five-stops"),
        pytest.param({"response_format": {"type": "xml"}}, "response_format", id="response-format"),
        pytest.param({"tools": []}, "tools", id="tools"),
        pytest.param({"service_tier": "priority"}, "service_tier", id="service-tier-costs-more"),
        pytest.param({"store": True}, "store", id="store"),
    ],
)
def test_refusals_are_400_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.message


@pytest.mark.parametrize("body", [[], "text", None, 3])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_openai_request(body, server_model=SERVER_MODEL, models=MODELS)
    assert caught.value.status_code == 400


# -- properties (hypothesis) ----------------------------------------------------------------


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (key, *strings_in(item))]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


@settings(max_examples=300)
@given(data=strategies.bodies)
def test_any_body_is_refused_with_a_400_or_sent_whole_within_its_bound(data: Any) -> None:
    def parse() -> Any:
        return parse_openai_request(parse_json(strategies.encoded(data)), server_model=SERVER_MODEL, models=MODELS)

    result = strategies.outcome(parse)
    if isinstance(result, InvalidRequest):
        assert result.status_code == 400  # as OpenAI answers: the SDKs raise BadRequestError
        json.dumps({"message": result.message, "param": result.param}, ensure_ascii=False).encode("utf-8")
        return
    request = ProviderRequest(
        model=result.model, messages=result.messages, max_output_tokens=100, stream=result.stream, params=result.params
    )
    body = json.loads(request.body(output_tokens=100, token_param="max_tokens"))  # always sendable
    assert body["model"] in MODELS
    # The bound is taken over exactly what is sent: no string the provider may bill escapes it.
    billable = {name: value for name, value in body.items() if name not in UNBILLED_FIELDS}
    bound = request.prompt_tokens()
    assert bound >= sum(estimate_text_tokens(text) for text in strings_in(billable["messages"]) if text not in ROLES)
    assert bound >= sum(estimate_text_tokens(text) for text in strings_in(billable) if text not in ROLES) // 2
    for text in strings_in(billable):
        assert bound >= estimate_text_tokens(text)
