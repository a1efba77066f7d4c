"""docs/openapi.yaml: a valid description of every route, and true of a real ``llmguard serve``.

Three layers:

- the spec is valid OpenAPI 3.1, its examples match their schemas, and it covers
  every route ``create_app()`` serves and every error code in ``_errors.py``, so
  it cannot drift silently;
- schemathesis fuzzes a real ``llmguard serve`` process in front of the fake
  provider over real HTTP: at least ``FUZZ_TARGET`` generated requests across
  every route (positive and negative data, examples, coverage probes), every
  response checked against the spec (status, content type, headers, body, and
  the JSON inside each Server-Sent Event), and no 5xx at all; and a second
  one that asks for proof-of-work (``TOKEN_CHALLENGE=pow``), for the body of
  ``POST /api/token`` and the challenge answers;
- explicit cases for the answers fuzzing cannot reach (rate limits, budgets,
  monthly caps, provider failures, a stalled body, a storage that is down,
  solved challenges and the top of the challenge ladder, a CAPTCHA verifier
  that is down),
  each checked against the spec the same way.

Generation is seeded (``SEED``), so a run is reproducible; schemathesis derives
each operation's own seed from it, so operations get different data.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import jsonschema_rs
import jwt
import pytest
import requests
import schemathesis
import yaml  # type: ignore[import-untyped]  # no types-PyYAML among the dev dependencies
from harness import DONE, HELLO, KEY, ORIGIN, SECRET, sse_events
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import negated_parameters
from servers import LLMGuardProcess, closed_port_url, free_port, read_head
from starlette.routing import BaseRoute, Mount, Route, Router

import llmguard._errors as errors
from llmguard import Settings, create_app
from llmguard.testing import FakeProvider, FakeReply, solve_challenge_payload

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
SEED = 20261201
# The floor for one run: generated requests over all routes.
FUZZ_TARGET = 10_000
ALLOWED_MODEL = "gpt-4.1-nano"
METRICS_TOKEN = "openapi-metrics-token-0123456789"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# A generated case for any operation, as schemathesis types its own checks.
Case: TypeAlias = schemathesis.Case[Any]


# -- the spec itself ------------------------------------------------------------------------


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator for a schema of the spec; its ``#/components/...`` references resolve in the spec."""
    return jsonschema_rs.validator_for({**schema, "components": SPEC["components"]}, validate_formats=True)


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def test_spec_is_valid_openapi_31() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_path(SPEC_PATH)
    schema.validate()
    loaded = list(schema.get_all_operations())
    broken = [str(result.err()) for result in loaded if not hasattr(result, "ok")]
    assert not broken, broken
    assert len(loaded) == len(list(_operations()))
    # schemathesis checks the document's shape; JSON Schema 2020-12 checks the schemas inside it.
    for name, component in SPEC["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), name
    for reference in set(_references(SPEC)):
        assert reference.startswith("#/components/"), reference
        assert _resolve({"$ref": reference}) is not None, reference


def test_spec_examples_match_their_schemas() -> None:
    checked = 0
    for path, method, operation in _operations():
        bodies = [_resolve(operation.get("requestBody", {}))]
        bodies += [_resolve(response) for response in operation["responses"].values()]
        for body in bodies:
            for media_type, content in body.get("content", {}).items():
                if media_type != "application/json" or "schema" not in content:
                    continue
                examples = [content["example"]] if "example" in content else []
                examples += [example["value"] for example in content.get("examples", {}).values()]
                validator = _validator(content["schema"])
                for example in examples:
                    errors_found = [error.message for error in validator.iter_errors(example)]
                    assert not errors_found, f"{method.upper()} {path} {media_type}: {errors_found}"
                    checked += 1
    assert checked >= 15


def _served_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, frozenset[str] | None]]:
    """(path, methods) for every endpoint of an app, mounts included; None: the endpoint takes any method."""
    for route in routes:
        if isinstance(route, Mount):
            inner = route.app
            # The guards wrap the /api and /v1 routers: find the router inside.
            while not isinstance(inner, Router) and hasattr(inner, "app"):
                inner = inner.app
            assert isinstance(inner, Router), f"{prefix}{route.path}: no router found under {route.app!r}"
            yield from _served_routes(inner.routes, prefix + route.path)
        elif isinstance(route, Route):
            methods = None if route.methods is None else frozenset(m.lower() for m in route.methods) - {"head"}
            yield prefix + route.path, methods
        else:
            raise AssertionError(f"a route this test does not know how to walk: {route!r}")


def test_spec_covers_every_route_of_the_bundled_app() -> None:
    # Demo mode serves every route there is (the demo page too); /metrics with METRICS=true.
    app = create_app(Settings(demo=True, jwt_secret=SECRET, metrics=True, metrics_token=METRICS_TOKEN))
    served = dict(_served_routes(app.routes))
    documented: dict[str, set[str]] = collections.defaultdict(set)
    for path, method, _ in _operations():
        documented[path].add(method)
    assert set(served) == set(documented), "paths served and paths documented differ"
    for path, methods in served.items():
        # An endpoint that takes every method refuses the wrong ones itself (405): its own methods are
        # documented, plus OPTIONS for the CORS preflight on the guarded routes.
        wanted = methods if methods is not None else documented[path] - {"options"}
        assert wanted, path
        assert wanted <= documented[path], f"{path}: {sorted(wanted - documented[path])} undocumented"
        if path.startswith(("/api/", "/v1/")):
            assert "options" in documented[path], f"{path}: the CORS preflight is undocumented"


def _error_classes() -> list[type[errors.LLMGuardError]]:
    found = [errors.LLMGuardError]
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.LLMGuardError) and value is not errors.LLMGuardError:
            found.append(value)
    return found


def _documented_codes(schema: Any) -> set[str]:
    """The error codes a response schema allows (its ``error`` or ``error.code`` const or enum)."""
    schema = _resolve(schema)
    codes: set[str] = set()
    if not isinstance(schema, dict):
        return codes
    for part in schema.get("allOf", []) + schema.get("anyOf", []):
        codes |= _documented_codes(part)
    error = schema.get("properties", {}).get("error", {})
    for node in (error, error.get("properties", {}).get("code", {})):
        if "const" in node:
            codes.add(node["const"])
        codes.update(node.get("enum", []))
    return codes


def test_every_error_code_is_documented_with_its_status() -> None:
    enum = set(SPEC["components"]["schemas"]["ErrorCode"]["enum"])
    classes = _error_classes()
    assert {cls.code for cls in classes} == enum, "the ErrorCode enum and _errors.py differ"
    table = SPEC["components"]["schemas"]["ErrorCode"]["description"]
    by_status: dict[int, set[str]] = collections.defaultdict(set)
    for _, _, operation in _operations():
        for status, response in operation["responses"].items():
            content = _resolve(response).get("content", {}).get("application/json", {})
            by_status[int(status)] |= _documented_codes(content.get("schema"))
    for cls in classes:
        assert f"| `{cls.code}` |" in table, f"{cls.code} is missing from the ErrorCode table"
        if cls is errors.LLMGuardError:
            continue  # InternalError: a bug, never a documented answer
        assert cls.code in by_status[cls.default_status], f"no {cls.default_status} response documents {cls.code}"


# -- fuzzing a real server --------------------------------------------------------------------


def _config(operations: dict[str, dict[str, Any]], **generation: Any) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["all"],
            # Read streams to the end (the default stops after 20 events).
            "max-stream-events": 100_000,
            "generation": {"mode": "all", "database": "none", **generation},
            # Nothing to chain: no operation creates a resource another reads, and the one thing that
            # flows between them (the token) travels in Authorization, which links cannot set.
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                # Valid data is refused for reasons the schema cannot say: a model the server does not
                # offer, a prompt over MAX_PROMPT_TOKENS, a lone surrogate. Refusals are checked below.
                "positive_data_acceptance": {"enabled": False},
                # It would send every successful request again without its token, and with a made-up one.
                # One positive case in twenty carries a bad token here (BAD_AUTHORIZATIONS), and the
                # negative cases drop or spoil the credentials: enforcement is tested that way.
                "ignored_auth": {"enabled": False},
                # 405: an OPTIONS without Access-Control-Request-Method is not a preflight (documented).
                "missing_required_header": {"expected-statuses": [400, 401, 403, 405, 406, 415, 422]},
                # 413: a negative body can be too large, or too long a prompt.
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
                },
            },
            "operations": [{"include-operation-id": name, **options} for name, options in operations.items()],
        }
    )


def _fuzzing(cases: int, *, negative: bool = True, **options: Any) -> dict[str, Any]:
    # Without a body, the only invalid data is a missing header: the coverage phase (all modes) sends
    # each of those; generating more of them here is spent on duplicates.
    mode = "all" if negative else "positive"
    return {"phases": {"fuzzing": {"generation": {"max-examples": cases, "mode": mode}}}, **options}


# The fuzzed server asks for no challenge (TOKEN_CHALLENGE=off), so it does not read POST /api/token's
# body: a body the spec refuses is accepted there, rightly. The challenge server below fuzzes that body.
BODY_NOT_READ = {"checks": {"negative_data_rejection": {"enabled": False}}}


# The fuzzing phase's examples per operation; the examples and coverage phases add their own cases.
SCHEMA = schemathesis.openapi.from_path(
    SPEC_PATH,
    config=_config(
        {
            "createToken": _fuzzing(1000, negative=False, **BODY_NOT_READ),
            "preflightToken": _fuzzing(800, negative=False),
            # {"kind": "off"} here; the challenges themselves on the challenge server below.
            "getChallenge": _fuzzing(400, negative=False),
            "postChallenge": _fuzzing(400, negative=False),
            "preflightChallenge": _fuzzing(800, negative=False),
            "preflightChat": _fuzzing(800, negative=False),
            "preflightChatCompletions": _fuzzing(800, negative=False),
            "preflightModels": _fuzzing(800, negative=False),
            "listModels": _fuzzing(1100, negative=False),
            # Chat bodies as documented, unknown fields included (they are ignored): slow to generate,
            # so the bulk of the chat fuzzing is CHAT_FIELDS below.
            "chat": _fuzzing(250),
            "createChatCompletion": _fuzzing(250),
            "getUsage": _fuzzing(320, negative=False),
            "preflightUsage": _fuzzing(320, negative=False),
            "health": _fuzzing(20, negative=False),
            "getMetrics": _fuzzing(20, negative=False),
            "demoPage": _fuzzing(20, negative=False),
            "sdkScript": _fuzzing(900, negative=False),
            "widgetScript": _fuzzing(900, negative=False),
            "sdkPowScript": _fuzzing(320, negative=False),
            "sdkCaptchaScript": _fuzzing(320, negative=False),
        }
    ),
)


def _documented_fields_only(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the chat routes' request objects closed to the fields they document.

    The server ignores unknown fields in a chat body and its messages; generating
    them costs more than half of each case. SCHEMA fuzzes them; this copy spends
    its cases on the fields that mean something. What the server ignores stays
    valid here too (any ``id`` or ``parts`` beside a string ``content``; ``text``
    on a dropped part), so no valid body turns invalid; and with
    allow-extra-parameters off, an unknown field is never sent as invalid data.
    """
    closed = copy.deepcopy(spec)
    schemas = closed["components"]["schemas"]
    schemas["TextMessage"]["properties"].update({"id": {}, "parts": {}})
    dropped_part = schemas["UIMessagePart"]["anyOf"][1]
    assert dropped_part["title"] == "Dropped part"
    dropped_part["properties"]["text"] = {}
    text_parts = schemas["ChatCompletionMessage"]["properties"]["content"]["anyOf"][1]["items"]
    for schema in (
        schemas["ChatRequest"],
        schemas["TextMessage"],
        schemas["UIMessage"],
        *schemas["UIMessagePart"]["anyOf"],
        schemas["ChatCompletionMessage"],
        text_parts,
    ):
        assert schema["type"] == "object", schema
        assert "additionalProperties" not in schema, schema
        schema["additionalProperties"] = False
    return closed


CHAT_FIELDS = schemathesis.openapi.from_dict(
    _documented_fields_only(SPEC),
    config=_config(
        {"chat": _fuzzing(1000), "createChatCompletion": _fuzzing(900)},
        **{"allow-extra-parameters": False},
    ),
).exclude(
    # Not include(): with per-operation settings in the config, schemathesis ORs an include with "all".
    operation_id=[
        operation["operationId"]
        for _, _, operation in _operations()
        if operation["operationId"] not in ("chat", "createChatCompletion")
    ]
)


def _event_data_validators() -> dict[str, jsonschema_rs.Validator]:
    """For each streaming route, a validator of the JSON in its events' ``data`` (the spec's contentSchema)."""
    validators = {}
    for path, _, operation in _operations():
        content = _resolve(operation["responses"].get("200", {})).get("content", {})
        if "text/event-stream" not in content:
            continue
        event = _resolve(content["text/event-stream"]["schema"])
        [json_data] = [option for option in event["properties"]["data"]["anyOf"] if "contentSchema" in option]
        assert json_data["contentMediaType"] == "application/json"
        validators[path] = _validator(json_data["contentSchema"])
    return validators


EVENT_DATA = _event_data_validators()


def stream_events_conform(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> bool | None:
    """Each event of a stream is ``data: <JSON>`` as the spec's contentSchema says, and ``[DONE]`` ends it."""
    content_type = response.headers.get("content-type", [""])[0]
    if not content_type.startswith("text/event-stream"):
        return None
    events = sse_events(response.content)
    if events[-1] == DONE:
        events.pop()
    else:
        # /api/chat ends with [DONE] even after an error chunk; OpenAI's streams end at the error instead.
        last = events[-1]
        failed = case.operation.path.startswith("/v1/") and isinstance(last, dict) and "error" in last
        assert failed, f"the stream ends with {json.dumps(last)[:200]}, not [DONE]"
    validator = EVENT_DATA[case.operation.path]
    for event in events:
        problems = [error.message for error in validator.iter_errors(event)]
        assert not problems, f"event {json.dumps(event)[:300]} does not match the spec: {problems}"
    return True


def request_id_matches(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> bool | None:
    """An llmguard error body's ``request_id`` is the one in ``X-Request-ID``."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code < 400 or not content_type.startswith("application/json"):
        return None
    body = response.json()
    if isinstance(body, dict) and "request_id" in body:
        assert body["request_id"] == response.headers.get("x-request-id", [None])[0], "request_id and X-Request-ID"
    return True


EXTRA_CHECKS: list[schemathesis.CheckFunction] = [stream_events_conform, request_id_matches]


def _token(secret: str = SECRET, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": "llmguard", "aud": "llmguard", "iat": now, "nbf": now, "exp": now + 600, "jti": "fuzz"}
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


def _unsigned(token: str) -> str:
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{'A' * 43}"


# What a positive case carries instead of a good origin or token, one case in twenty each: so that
# the 401 and 403 answers are fuzzed too. None leaves the header out.
BAD_ORIGINS: list[str | None] = [
    None,
    "null",
    "https://evil.example",
    "https://app.example.com.evil.example",
    ORIGIN.upper(),
    f"{ORIGIN}:8443",
    f"{ORIGIN}, https://evil.example",
]
BAD_AUTHORIZATIONS: list[str | None] = [
    None,
    "Bearer",
    "Basic dXNlcjpwYXNzd29yZA==",
    "Bearer not-a-jwt",
    f"Bearer {_token(exp=int(time.time()) - 3600)}",  # expired
    f"Bearer {_token(secret='another-secret-0123456789abcdefghijklmnop')}",  # not ours
    f"Bearer {_token(aud='someone-else')}",
    f"Bearer {_token(jti=None)}",  # no jti
    f"Bearer {_unsigned(_token())}",
    "Bearer " + "eyJhbGciOiJub25lIn0." + _token().split(".")[1] + ".",  # alg: none
    f"Bearer {'A' * 5000}",
]


@dataclass
class Fuzzing:
    """The fuzzed server, its HTTP session and tokens, and what every generated request got."""

    server: LLMGuardProcess
    session: requests.Session = field(default_factory=requests.Session)
    token: str = ""
    minted_at: float = 0.0
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    findings: dict[str, str] = field(default_factory=dict)

    def bearer(self) -> str:
        """A token from the server's own POST /api/token, renewed every minute."""
        if time.monotonic() - self.minted_at > 60:
            response = self.session.post(f"{self.server.url}/api/token", headers={"origin": ORIGIN}, timeout=30)
            assert response.status_code == 200, response.text
            self.token, self.minted_at = response.json()["token"], time.monotonic()
        return f"Bearer {self.token}"

    def send(self, case: Case) -> None:
        explicit = self.prepare(case)
        label = case.operation.label
        try:
            response = case.call_and_validate(
                base_url=self.server.url,
                session=self.session,
                headers=explicit,
                additional_checks=EXTRA_CHECKS,
                timeout=30,
            )
        except schemathesis.errors.FailureGroup as failures:
            # Recorded, not raised: the run goes on to its full count and reports every distinct finding.
            key = f"{label}: " + ", ".join(sorted({failure.title for failure in failures.exceptions}))
            self.findings.setdefault(key, str(failures))
            self.sent[label] += 1
            return
        self.sent[label] += 1
        self.statuses[(label, response.status_code)] += 1

    def prepare(self, case: Case) -> dict[str, str]:
        """Put an allowed Origin and a valid token on the case, unless it is about them.

        Negative cases and probes get both, so that what they test is the one thing that is wrong.
        Positive cases get a bad origin or a bad token one time in twenty each. The returned
        headers are sent as explicit ones (schemathesis then knows the token was meant).
        """
        negated = {name.lower() for name, where in negated_parameters(case.meta) if where == ParameterLocation.HEADER}
        plain = case.meta is not None and case.meta.generation.mode.is_positive
        plain = plain and case.method.upper() == case.operation.method.upper()
        # The case's place in its operation's run picks: as reproducible as the generation, and exact shares.
        index = self.sent[case.operation.label]
        slot, pick = index % 20, index // 20
        if any(parameter.name == "Origin" for parameter in case.operation.headers) and "origin" not in negated:
            origin = BAD_ORIGINS[pick % len(BAD_ORIGINS)] if plain and slot == 0 else ORIGIN
            if origin is None:
                case.headers.pop("Origin", None)
            else:
                case.headers["Origin"] = origin
        explicit = {}
        secured = bool(case.operation.definition.raw.get("security"))
        if secured and "authorization" not in negated and not case.operation.schema.is_security_param_negated(case):
            if plain and slot == 1:
                authorization = BAD_AUTHORIZATIONS[pick % len(BAD_AUTHORIZATIONS)]
                case.headers.pop("Authorization", None)
                if authorization is not None:
                    case.headers["Authorization"] = authorization
            elif case.operation.path == "/metrics":
                explicit["Authorization"] = f"Bearer {METRICS_TOKEN}"  # the scraper's token, not a minted one
            else:
                explicit["Authorization"] = self.bearer()
        return explicit


FUZZ_ENV = {
    "OPENAI_API_KEY": KEY,
    "JWT_SECRET": SECRET,
    "ALLOWED_ORIGIN": ORIGIN,
    "ALLOWED_MODELS": ALLOWED_MODEL,
    "SYSTEM_PROMPT": "You are the fuzzing assistant.",
    "MAX_TOKENS": "64",
    # Low enough that generated requests reach them: the 413s are fuzzed too.
    "MAX_BODY_BYTES": "8192",
    "MAX_PROMPT_TOKENS": "300",
    "REQUEST_TIMEOUT": "10",
    "UPSTREAM_RETRIES": "0",
    # Every limit and budget on, and out of reach of the whole run: a 429 or 503 here is a finding.
    "RATE_LIMIT_MAX": "10000000",
    "TOKEN_RATE_LIMIT": "10000000/minute",
    "TOKENS_PER_IP": "10000000000/day",
    "MONTHLY_TOKEN_CAP": "10000000000",
    "MONTHLY_SPEND_CAP_USD": "1000000",
    "DEMO_PAGE": "true",
    "LOG_FORMAT": "json",
    # The fuzzer mints its own tokens with POST /api/token; challenges are fuzzed on their own server.
    "TOKEN_CHALLENGE": "off",
    "METRICS": "true",
    "METRICS_TOKEN": METRICS_TOKEN,
}


@pytest.fixture(scope="module")
def upstream(fake_upstream: tuple[FakeProvider, str]) -> Iterator[tuple[FakeProvider, str]]:
    fake_upstream[0].reset()
    yield fake_upstream
    fake_upstream[0].reset()


@pytest.fixture(scope="module")
def fuzzing(upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    env = {**FUZZ_ENV, "OPENAI_BASE_URL": f"{upstream[1]}/v1"}
    with LLMGuardProcess(env, tmp_path_factory.mktemp("fuzz") / "server.log") as server:
        state = Fuzzing(server)
        with state.session:
            yield state


@pytest.mark.timeout(900)
@SCHEMA.parametrize()
def test_fuzz(case: Case, fuzzing: Fuzzing) -> None:
    fuzzing.send(case)


@pytest.mark.timeout(900)
@CHAT_FIELDS.parametrize()
def test_fuzz_chat_fields(case: Case, fuzzing: Fuzzing) -> None:
    fuzzing.send(case)


def _access_lines(logs: str) -> list[dict[str, Any]]:
    lines = []
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("logger") == "llmguard.access":
                lines.append(record)
    return lines


def test_fuzz_totals(fuzzing: Fuzzing, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the fuzz tests: enough requests on every route, no 5xx, no finding."""
    total = sum(fuzzing.sent.values())
    documented = {f"{method.upper()} {path}" for path, method, _ in _operations()}
    table = "\n".join(
        f"  {label:32} {fuzzing.sent[label]:6}  "
        + " ".join(f"{status}:{n}" for (name, status), n in sorted(fuzzing.statuses.items()) if name == label)
        for label in sorted(documented)
    )
    with capsys.disabled():
        print(f"\nschemathesis sent {total} generated requests (seed {SEED}):\n{table}")
    assert total >= FUZZ_TARGET, f"only {total} generated requests; the floor is {FUZZ_TARGET}:\n{table}"
    for label in documented:
        # The routes without any input have one request to send, and its method probes.
        floor = 1 if label in ("GET /healthz", "GET /", "GET /metrics") else 300
        assert fuzzing.sent[label] >= floor, f"{label}: only {fuzzing.sent[label]} requests"
    limited = {key: n for key, n in fuzzing.statuses.items() if key[1] >= 500 or key[1] == 429}
    assert not limited, f"5xx or 429 answers: {limited}"

    lines = _access_lines(fuzzing.server.logs())
    assert len(lines) >= total, "the server logged fewer requests than were sent"
    server_errors = [line for line in lines if line["status"] >= 500]
    assert not server_errors, f"the server answered 5xx: {server_errors[:5]}"
    assert "Traceback" not in fuzzing.server.logs()

    report = "\n\n".join(f"### {key}\n{message}" for key, message in fuzzing.findings.items())
    assert not fuzzing.findings, f"{len(fuzzing.findings)} distinct findings:\n\n{report}"


# -- fuzzing a server that asks for a challenge -----------------------------------------------

CHALLENGE_OPERATIONS = ("createToken", "getChallenge", "postChallenge")
# Negative data too: with a challenge the token endpoint reads its body.
CHALLENGES = schemathesis.openapi.from_path(
    SPEC_PATH,
    config=_config(
        {
            "createToken": _fuzzing(600),
            "getChallenge": _fuzzing(60, negative=False),
            "postChallenge": _fuzzing(60, negative=False),
        }
    ),
).exclude(
    operation_id=[
        operation["operationId"]
        for _, _, operation in _operations()
        if operation["operationId"] not in CHALLENGE_OPERATIONS
    ]
)


@pytest.fixture(scope="module")
def challenge_fuzzing(
    upstream: tuple[FakeProvider, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzing]:
    """The fuzzed server's settings with proof-of-work: no generated solution solves it, so no mint is counted."""
    env = {**FUZZ_ENV, "OPENAI_BASE_URL": f"{upstream[1]}/v1", "TOKEN_CHALLENGE": "pow"}
    with LLMGuardProcess(env, tmp_path_factory.mktemp("fuzz-challenge") / "server.log") as server:
        state = Fuzzing(server)
        with state.session:
            yield state


@pytest.mark.timeout(900)
@CHALLENGES.parametrize()
def test_fuzz_challenges(case: Case, challenge_fuzzing: Fuzzing) -> None:
    challenge_fuzzing.send(case)


def test_fuzz_challenges_totals(challenge_fuzzing: Fuzzing, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after test_fuzz_challenges: the challenge answers were all reached, no 5xx, no finding."""
    statuses = {f"{label} {status}": n for (label, status), n in sorted(challenge_fuzzing.statuses.items())}
    with capsys.disabled():
        print(f"\nschemathesis sent {sum(challenge_fuzzing.sent.values())} requests to a pow server: {statuses}")
    assert challenge_fuzzing.sent["POST /api/token"] >= 300, statuses
    for status in (401, 403, 400, 422):
        assert challenge_fuzzing.statuses[("POST /api/token", status)], f"no {status} from POST /api/token: {statuses}"
    for label in ("GET /api/challenge", "POST /api/challenge"):
        assert challenge_fuzzing.statuses[(label, 200)], f"no 200 from {label}: {statuses}"
    limited = {key: n for key, n in challenge_fuzzing.statuses.items() if key[1] >= 500 or key[1] == 429}
    assert not limited, f"5xx or 429 answers: {limited}"
    assert "Traceback" not in challenge_fuzzing.server.logs()
    report = "\n\n".join(f"### {key}\n{message}" for key, message in challenge_fuzzing.findings.items())
    assert not challenge_fuzzing.findings, f"{len(challenge_fuzzing.findings)} distinct findings:\n\n{report}"


# -- the answers fuzzing cannot reach ---------------------------------------------------------

# A server for one explicit test: limits out of the way unless the test sets them.
EXPLICIT_ENV = {
    "OPENAI_API_KEY": KEY,
    "JWT_SECRET": SECRET,
    "ALLOWED_ORIGIN": ORIGIN,
    "UPSTREAM_RETRIES": "0",
    "RATE_LIMIT_MAX": "100000",
    "TOKEN_RATE_LIMIT": "100000/minute",
    "TOKENS_PER_IP": "off",
}
CHAT_ROUTES = ("/api/chat", "/v1/chat/completions")
MINT = "a token minted by the server"


@pytest.fixture
def serve(
    upstream: tuple[FakeProvider, str], tmp_path: Path
) -> Iterator[Callable[..., contextlib.AbstractContextManager[Explicit]]]:
    """Start ``llmguard serve`` with settings on top of EXPLICIT_ENV; its log must hold no traceback."""
    started: list[LLMGuardProcess] = []

    @contextlib.contextmanager
    def start(**settings: str) -> Iterator[Explicit]:
        upstream[0].reset()
        env = {**EXPLICIT_ENV, "OPENAI_BASE_URL": f"{upstream[1]}/v1", **settings}
        with LLMGuardProcess(env, tmp_path / f"server-{len(started)}.log") as server:
            started.append(server)
            with requests.Session() as session:
                yield Explicit(server, session)

    yield start
    upstream[0].reset()
    for server in started:
        assert "Traceback" not in server.logs()


@dataclass
class Explicit:
    """Hand-written requests to a server, each checked against the spec as schemathesis checks generated ones."""

    server: LLMGuardProcess
    session: requests.Session

    def mint(self) -> str:
        response = self.call("POST", "/api/token", token=None, status=200)
        token: str = response.json()["token"]
        return token

    def case(
        self, method: str, path: str, *, body: Any = None, origin: str | None = ORIGIN, token: str | None = MINT
    ) -> Case:
        """A request to ``path`` from ``origin`` with ``token`` (by default a new one from the server)."""
        headers = {} if origin is None else {"Origin": origin}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.mint() if token is MINT else token}"
        operation = SCHEMA[path][method]
        if body is None:
            return operation.Case(headers=headers)
        return operation.Case(headers=headers, body=body, media_type="application/json")

    def call(
        self, method: str, path: str, *, status: int, code: str | None = None, **kwargs: Any
    ) -> schemathesis.Response:
        case = self.case(method, path, **kwargs)
        response = case.call_and_validate(
            base_url=self.server.url,
            session=self.session,
            additional_checks=EXTRA_CHECKS,
            # A 5xx is what these cases are about; the spec says which, and how they look.
            excluded_checks=[not_a_server_error] if status >= 500 else [],
            timeout=30,
        )
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text[:500]}"
        if code is not None:
            assert error_code(response) == code, f"{method} {path}: {response.text[:500]}"
        return response


def error_code(response: schemathesis.Response) -> str:
    body = response.json()
    code = body["error"]["code"] if isinstance(body["error"], dict) else body["error"]
    assert isinstance(code, str)
    return code


def validate_raw(case: Case, url: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """Check a response read off a raw connection against the spec, as call_and_validate would."""
    request = httpx.Request(case.method, url, headers=dict(case.headers))
    response = httpx.Response(status, headers=headers, content=body, request=request)
    response.elapsed = datetime.timedelta(0)
    case.validate_response(response, additional_checks=EXTRA_CHECKS)


def test_refused_bodies_conform(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    settings = {"MAX_BODY_BYTES": "2048", "MAX_PROMPT_TOKENS": "60", "BODY_TIMEOUT": "1", "JWT_MAX_USES": "1"}
    with serve(**settings) as client:
        for path in CHAT_ROUTES:
            client.call("POST", path, body=b"", status=400, code="InvalidRequest")
            client.call("POST", path, body=b"{not json", status=400, code="InvalidRequest")
            client.call("POST", path, body=b'{"messages": NaN}', status=400, code="InvalidRequest")
            lone_surrogate = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'
            client.call("POST", path, body=lone_surrogate, status=400, code="InvalidRequest")
            deep = b'{"messages": [{"role": "user", "content": "Hi"}], "stop": ' + b"[" * 70 + b"]" * 70 + b"}"
            client.call("POST", path, body=deep, status=400, code="InvalidRequest")
            large = {"messages": [{"role": "user", "content": "x" * 3000}]}
            client.call("POST", path, body=large, status=413, code="PayloadTooLarge")
            long_prompt = {"messages": [{"role": "user", "content": "word " * 100}]}
            client.call("POST", path, body=long_prompt, status=413, code="PromptTooLarge")
            client.call("POST", path, body={"messages": []}, status=422 if path == "/api/chat" else 400)

            # JWT_MAX_USES=1: the token's second use is refused.
            token = client.mint()
            client.call("POST", path, body=HELLO, token=token, status=200)
            client.call("POST", path, body=HELLO, token=token, status=401, code="Unauthorized")

            # BODY_TIMEOUT=1: a body that stops halfway gets 408 (read off the connection: nothing else waits).
            case = client.case("POST", path, body=HELLO)
            connection = socket.create_connection(("127.0.0.1", client.server.port), timeout=10)
            with connection:
                head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
                head += [f"{name}: {value}" for name, value in case.headers.items()]
                head += ["Content-Length: 100", "", ""]
                connection.sendall("\r\n".join(head).encode() + b'{"messages": [')
                status, headers, body = _read_response(connection)
            assert status == 408, body
            validate_raw(case, f"{client.server.url}{path}", status, headers, body)
        # No demo page outside the demo.
        client.call("GET", "/", token=None, origin=None, status=404, code="NotFound")


def _read_response(connection: socket.socket) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a socket."""
    read = read_head(connection)
    assert read is not None, "the server closed the connection without an answer"
    head, body = read
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])]
    length = int(dict((name.lower(), value) for name, value in headers).get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def test_provider_failures_conform(
    serve: Callable[..., contextlib.AbstractContextManager[Explicit]], upstream: tuple[FakeProvider, str]
) -> None:
    provider = upstream[0]
    with serve(REQUEST_TIMEOUT="1") as client:
        for path in CHAT_ROUTES:
            provider.enqueue(FakeReply.failure(429, code="rate_limit_exceeded", retry_after=2))
            response = client.call("POST", path, body=HELLO, status=502, code="UpstreamError")
            assert response.headers["retry-after"] == ["2"]
            if path == "/api/chat":
                assert response.json()["upstream_status"] == 429
                assert response.json()["upstream_code"] == "rate_limit_exceeded"
            provider.enqueue(FakeReply.failure(500, type="server_error"))
            client.call("POST", path, body=HELLO, status=502, code="UpstreamError")
            provider.enqueue(FakeReply.failure(401, code="invalid_api_key"))
            response = client.call("POST", path, body=HELLO, status=502, code="UpstreamError")
            assert KEY[-6:] not in response.text
            provider.enqueue(FakeReply(first_byte_delay=2.5))
            client.call("POST", path, body=HELLO, status=504, code="UpstreamError")
            # Cut after two deltas: the stream has started, so the failure is its last event.
            provider.enqueue(FakeReply(cut_after=2))
            response = client.call("POST", path, body={**HELLO, "stream": True}, status=200)
            events = [block.removeprefix("data: ") for block in response.text.split("\n\n") if block]
            last = json.loads(events[-2] if path == "/api/chat" else events[-1])
            assert (last["code"] if path == "/api/chat" else last["error"]["code"]) == "UpstreamError"


def test_rate_limits_conform(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    with serve(TOKEN_RATE_LIMIT="2/minute", RATE_LIMIT_MAX="3", RATE_LIMIT_WINDOW="1 minute") as client:
        tokens = [client.mint(), client.mint()]
        client.call("POST", "/api/token", token=None, status=429, code="RateLimitExceeded")
        # GET /api/usage has a limit of its own (the chat rate): using it up leaves the chats alone.
        for _ in range(3):
            client.call("GET", "/api/usage", token=tokens[0], status=200)
        refused = client.call("GET", "/api/usage", token=tokens[0], status=429, code="RateLimitExceeded")
        assert refused.headers["ratelimit-policy"] == ['"usage";q=3;w=60']
        # One "chat" limit for the chat routes and /v1/models.
        client.call("POST", "/api/chat", body=HELLO, token=tokens[0], status=200)
        client.call("POST", "/v1/chat/completions", body=HELLO, token=tokens[0], status=200)
        client.call("GET", "/v1/models", token=tokens[1], status=200)
        for method, path in (("POST", "/api/chat"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            body = HELLO if method == "POST" else None
            response = client.call(method, path, body=body, token=tokens[1], status=429, code="RateLimitExceeded")
            assert response.headers["ratelimit-policy"] == ['"chat";q=3;w=60']


def test_token_budget_conforms(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    with serve(TOKENS_PER_IP="400/hour", MAX_TOKENS="100") as client:
        for path in CHAT_ROUTES:
            # More than the whole allowance at once: refused at once, and waiting would not help.
            huge = {"messages": [{"role": "user", "content": "word " * 400}]}
            response = client.call("POST", path, body=huge, status=429, code="TokenBudgetExceeded")
            assert "retry-after" not in response.headers
        for _ in range(20):
            response = client.case("POST", "/api/chat", body=HELLO).call(base_url=client.server.url)
            if response.status_code == 429:
                break
        for path in CHAT_ROUTES:
            response = client.call("POST", path, body=HELLO, status=429, code="TokenBudgetExceeded")
            assert int(response.headers["retry-after"][0]) >= 1
            # The refusal says what is left of the window, after the request limit.
            assert response.headers["ratelimit-policy"] == ['"chat";q=100000;w=60, "tokens";q=400;w=3600']
        tokens = client.call("GET", "/api/usage", status=200).json()["tokens"]
        assert (tokens["limit"], tokens["window"]) == (400, 3600)


@pytest.mark.parametrize(
    ("settings", "code"),
    [({"MONTHLY_TOKEN_CAP": "400"}, "TokenCapReached"), ({"MONTHLY_SPEND_CAP_USD": "0.0003"}, "SpendCapReached")],
)
def test_monthly_caps_conform(
    serve: Callable[..., contextlib.AbstractContextManager[Explicit]], settings: dict[str, str], code: str
) -> None:
    with serve(MAX_TOKENS="100", **settings) as client:
        for _ in range(30):
            response = client.case("POST", "/api/chat", body=HELLO).call(base_url=client.server.url)
            if response.status_code == 503:
                break
        for path in CHAT_ROUTES:
            response = client.call("POST", path, body=HELLO, status=503, code=code)
            assert int(response.headers["retry-after"][0]) >= 1


def test_storage_down_conforms(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    with serve(STORAGE_URL=closed_port_url(), STORAGE_FAILURE="closed", STORAGE_TIMEOUT="0.5") as client:
        health = client.call("GET", "/healthz", token=None, origin=None, status=200)
        assert health.json()["status"] == "degraded"
        client.call("POST", "/api/token", token=None, status=503, code="StorageUnavailable")
        token = _token(jti="storage-down")  # /api/token cannot mint one now
        client.call("POST", "/api/chat", body=HELLO, token=token, status=503, code="StorageUnavailable")
        client.call("GET", "/v1/models", token=token, status=503, code="StorageUnavailable")
        client.call("GET", "/api/usage", token=token, status=503, code="StorageUnavailable")


def test_challenges_conform(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    """POST /api/token's challenge answers and GET/POST /api/challenge, up the ladder to its refusal."""
    with serve(TOKEN_CHALLENGE="pow", CHALLENGE_LADDER="0=1000,2=refuse") as client:
        # No solution: 401 with the challenge to solve (no body, or an empty object).
        required = client.call("POST", "/api/token", token=None, status=401, code="ChallengeRequired")
        challenge = required.json()["challenge"]
        assert (challenge["kind"], challenge["maxnumber"], challenge["step"]) == ("pow", 1000, 0)
        client.call("POST", "/api/token", body={}, token=None, status=401, code="ChallengeRequired")
        # A wrong solution: 403 with a fresh challenge.
        failed = client.call(
            "POST", "/api/token", body={"solution": "not a solution"}, token=None, status=403, code="ChallengeFailed"
        )
        assert failed.json()["challenge"]["challenge"] != challenge["challenge"]
        # A body that is not a solution at all (read because a challenge is asked for).
        client.call("POST", "/api/token", body=b"{not json", token=None, status=400, code="InvalidRequest")
        client.call("POST", "/api/token", body=["solution"], token=None, status=422, code="InvalidRequest")
        too_large = {"solution": "x" * 9000}
        client.call("POST", "/api/token", body=too_large, token=None, status=413, code="PayloadTooLarge")

        # Solved: a token, once.
        solution = {"solution": solve_challenge_payload(challenge)}
        minted = client.call("POST", "/api/token", body=solution, token=None, status=200)
        client.call("POST", "/api/chat", body=HELLO, token=minted.json()["token"], status=200)
        reused = client.call("POST", "/api/token", body=solution, token=None, status=403, code="ChallengeFailed")
        assert "used already" in reused.json()["message"]

        # GET and POST /api/challenge answer the challenge of the client's rung; the second mint ends the ladder.
        for method in ("GET", "POST"):
            current = client.call(method, "/api/challenge", token=None, status=200).json()
            assert (current["kind"], current["step"]) == ("pow", 0)
        current = client.call("GET", "/api/challenge", token=None, status=200).json()
        client.call("POST", "/api/token", body={"solution": solve_challenge_payload(current)}, token=None, status=200)

        # At the top: 429 on both routes, with Retry-After.
        for method, path in (("GET", "/api/challenge"), ("POST", "/api/challenge"), ("POST", "/api/token")):
            refused = client.call(method, path, token=None, status=429, code="RateLimitExceeded")
            assert int(refused.headers["retry-after"][0]) >= 1
            assert refused.json()["retry_after"] >= 1

    # A CAPTCHA whose verifier does not answer: 503, never a token.
    verifier = f"http://127.0.0.1:{free_port()}/siteverify"
    captcha = {"CAPTCHA_SITE_KEY": "0x-site-key", "CAPTCHA_SECRET": "0x-secret", "CAPTCHA_VERIFY_URL": verifier}
    with serve(TOKEN_CHALLENGE="turnstile", **captcha) as client:
        required = client.call("POST", "/api/token", token=None, status=401, code="ChallengeRequired")
        assert required.json()["challenge"]["kind"] == "turnstile"
        assert required.json()["challenge"]["action"] == "llmguard-token"
        assert client.call("GET", "/api/challenge", token=None, status=200).json()["kind"] == "turnstile"
        body = {"solution": "a-widget-response"}
        down = client.call("POST", "/api/token", body=body, token=None, status=503, code="ChallengeUnavailable")
        assert int(down.headers["retry-after"][0]) >= 1

    # Off: no body needed, and the challenge route says so.
    with serve(TOKEN_CHALLENGE="off") as client:
        assert client.call("GET", "/api/challenge", token=None, status=200).json() == {"kind": "off"}
        client.call("POST", "/api/token", body={"solution": "ignored"}, token=None, status=200)


def _wait_until_busy(url: str) -> None:
    """Until the server counts the idle connection (it accepts it on its own time)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with requests.Session() as fresh:
            if fresh.get(f"{url}/healthz", timeout=10).status_code == 503:
                return
        time.sleep(0.05)
    raise AssertionError("the server never answered ServerBusy with MAX_CONNECTIONS=1 and a connection open")


def test_connection_refusals_conform(serve: Callable[..., contextlib.AbstractContextManager[Explicit]]) -> None:
    """ServerBusy and the headers' 408 are answered below the app; they keep the same contract."""
    problems: list[str] = []
    with serve(MAX_CONNECTIONS="1", HEADER_TIMEOUT="1") as client:
        with socket.create_connection(("127.0.0.1", client.server.port)):  # the one connection allowed
            _wait_until_busy(client.server.url)
            for method, path in (("GET", "/healthz"), ("POST", "/api/chat"), ("GET", "/v1/models")):
                case = client.case(method, path, body=HELLO if method == "POST" else None, token="never-minted")
                try:
                    with requests.Session() as fresh:
                        response = case.call_and_validate(
                            base_url=client.server.url, session=fresh, excluded_checks=[not_a_server_error], timeout=30
                        )
                    assert response.status_code == 503, response.text
                    assert error_code(response) == "ServerBusy", response.text
                except (AssertionError, schemathesis.errors.FailureGroup) as failure:
                    problems.append(
                        f"ServerBusy on {method} {path} (MAX_CONNECTIONS=1, one idle connection): {failure}"
                    )
        time.sleep(0.3)
        for method, path in (("GET", "/healthz"), ("GET", "/v1/models")):
            case = client.case(method, path, token=None)
            sent = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # and no blank line: the headers never end
            with socket.create_connection(("127.0.0.1", client.server.port), timeout=10) as connection:
                connection.sendall(sent.encode())
                status, headers, body = _read_response(connection)
            try:
                assert status == 408, body
                validate_raw(case, f"{client.server.url}{path}", status, headers, body)
            except (AssertionError, schemathesis.errors.FailureGroup) as failure:
                problems.append(f"headers timeout on {method} {path} (HEADER_TIMEOUT=1, sent {sent!r}): {failure}")
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("path", CHAT_ROUTES)
def test_values_the_spec_refuses_are_refused_by_name(fuzzing: Fuzzing, path: str) -> None:
    """What fuzzing does not happen to draw: ``true`` is not 1, and ``param`` names the field sent."""
    client = Explicit(fuzzing.server, fuzzing.session)
    status = 422 if path == "/api/chat" else 400
    problems = []
    for name, value in (("n", True), ("n", 2), ("max_tokens", 0), ("max_tokens", "100"), ("temperature", True)):
        body = {**HELLO, name: value}
        try:
            response = client.call("POST", path, body=body, status=status, code="InvalidRequest")
            error = response.json() if path == "/api/chat" else response.json()["error"]
            assert error["param"] == name, f"param is {error['param']!r}: {response.text}"
        except (AssertionError, schemathesis.errors.FailureGroup) as failure:
            problems.append(f"POST {path} {json.dumps(body)}: {failure}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ["/sdk.js", "/widget.js", "/sdk-pow.js", "/sdk-captcha.js"])
def test_scripts_revalidate_with_their_etag(fuzzing: Fuzzing, path: str) -> None:
    """The 304 that fuzzing cannot reach: its If-None-Match would have to guess the ETag."""
    client = Explicit(fuzzing.server, fuzzing.session)
    etag = client.call("GET", path, token=None, origin=None, status=200).headers["etag"][0]
    case = SCHEMA[path]["GET"].Case(headers={"If-None-Match": etag})
    response = case.call_and_validate(base_url=fuzzing.server.url, session=fuzzing.session, timeout=30)
    assert response.status_code == 304
    assert response.headers["etag"] == [etag]
