"""Metrics: what a scrape of GET /metrics says after known requests, in-process (one process).

The same under ``llmguard serve --workers 2`` (prometheus_client's multiprocess
mode, files shared by the workers) is tested in test_metrics_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from harness import (
    HELLO,
    KEY,
    ORIGIN,
    PEER,
    SECRET,
    STREAM,
    Harness,
    access_records,
    asgi_client,
    assert_error,
    assert_no_secrets,
    client_tokens,
    fields_of,
    find,
    make_settings,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from servers import ThreadedServer, closed_port_url
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Message, Receive, Scope, Send

import llmguard._errors as errors
from llmguard import (
    AccessLog,
    ChatEndpoint,
    JWTAuth,
    Metrics,
    MetricsEndpoint,
    Settings,
    SettingsError,
    TokenBudget,
    TokenEndpoint,
    create_app,
)
from llmguard._degrade import parse_degrade
from llmguard._metrics import BUNDLED_ROUTES, GUARDS, MULTIPROC_DIR, NOT_REFUSALS, forget_dead_workers
from llmguard._prices import DEFAULT_PRICES
from llmguard._state import Usage, request_state
from llmguard.testing import FakeProvider, FakeReply

TOKEN = "metrics-token-Zq8Wd3Lp0Rk6Ys2V"
SCRAPER = {"authorization": f"Bearer {TOKEN}"}
MODEL = "gpt-4.1-mini"
#: Settings for the tests below: metrics on, and every limit a request of theirs meets is small.
METRICS_ON: dict[str, Any] = {
    "metrics": True,
    "metrics_token": TOKEN,
    "token_rate_limit": "3/minute",
    "max_prompt_tokens": 200,
    "monthly_token_cap": 50_000,
    "monthly_spend_cap_usd": 5.0,
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the scrape does not have it (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: number for (sample, labels), number in samples.items() if sample == name}


async def scrape(client: httpx.AsyncClient, path: str = "/metrics") -> Samples:
    response = await client.get(path, headers=SCRAPER)
    assert response.status_code == 200, response.text
    return parse(response.text)


def requests_total(samples: Samples) -> dict[tuple[str, str, str, str], float]:
    """``llmguard_requests_total`` as {(route, method, status, code): count}."""
    return {
        (labels["route"], labels["method"], labels["status"], labels["code"]): count
        for labels, count in ((dict(key), count) for key, count in named(samples, "llmguard_requests_total").items())
    }


# -- off, on, and who may scrape ---------------------------------------------------------------


async def test_without_metrics_there_is_no_route(harness: Harness) -> None:
    response = await harness.client.get("/metrics", headers=SCRAPER)
    assert_error(response, 404, "NotFound")


async def test_a_scrape_needs_the_token(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    wrong = [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Bearer metrics-token-Zq8Wd3Lp0Rk6Ys2"},  # a prefix of it
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": TOKEN},
        {"authorization": f"Bearer {await harness.token()}"},  # a chat token is not a metrics token
    ]
    for headers in wrong:
        response = await harness.client.get("/metrics", headers=headers)
        body = assert_error(response, 401, "Unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
        assert TOKEN not in response.text
        assert "llmguard_" not in body["message"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = await harness.client.get("/metrics", headers={"authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        assert response.headers["cache-control"] == "no-store"
        assert "# TYPE llmguard_requests_total counter" in response.text
    # No Origin needed (a scraper is no browser), and only GET (and HEAD).
    response = await harness.client_from(PEER, origin=None).get("/metrics", headers=SCRAPER)
    assert response.status_code == 200
    assert (await harness.client.head("/metrics", headers=SCRAPER)).status_code == 200
    response = await harness.client.post("/metrics", headers=SCRAPER)
    assert_error(response, 405, "MethodNotAllowed")
    # The refused scrapes are counted, as auth refusals on the /metrics route.
    samples = await scrape(harness.client)
    assert value(samples, "llmguard_requests_total", route="/metrics", method="GET", status="401", code="Unauthorized")
    assert value(samples, "llmguard_refusals_total", guard="auth", code="Unauthorized") == len(wrong)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"metrics": True}, "is required with METRICS=true", id="missing"),
        pytest.param({"metrics": True, "metrics_token": "short-token"}, "too short", id="short"),
        pytest.param({"metrics": True, "metrics_token": "a token with spaces"}, "printable ASCII", id="spaces"),
        pytest.param({"metrics": True, "metrics_token": "métrics-token-0123456789"}, "printable ASCII", id="ascii"),
    ],
)
def test_metrics_need_a_good_token_at_start_up(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(SettingsError) as raised:
        make_settings(**overrides)
    assert raised.value.name == "metrics_token"
    assert reason in str(raised.value)
    token = overrides.get("metrics_token")
    assert token is None or token not in str(raised.value)


def test_the_settings_read_metrics_from_the_environment() -> None:
    environ = {"OPENAI_API_KEY": KEY, "METRICS": "true", "METRICS_TOKEN": TOKEN}
    settings = Settings.from_env(environ)
    assert (settings.metrics, settings.metrics_token) == (True, TOKEN)
    assert settings.describe()["METRICS_TOKEN"] == "set"
    assert TOKEN not in repr(settings)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**environ, "METRICS_TOKEN": "0123456789abcde"})
    assert str(raised.value).startswith("Setting METRICS_TOKEN: ")
    assert "0123456789abcde" not in str(raised.value)
    assert Settings.from_env({"OPENAI_API_KEY": KEY}).metrics is False


def test_metrics_endpoint_checks_its_token() -> None:
    for token in ("", "x" * 15, "tab\there-0123456789"):
        with pytest.raises(ValueError, match=r"^token: ") as raised:
            MetricsEndpoint(Metrics(), token=token)
        assert token not in str(raised.value) or not token


# -- what a scrape says after known requests -----------------------------------------------------


async def test_a_known_mix_of_requests_is_counted_exactly(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    provider = harness.provider
    provider.enqueue(FakeReply(chunks=["one", " two", " three"]), FakeReply(chunks=["a", "b"]))
    token = await harness.token()
    served = [await harness.chat(HELLO, token=token), await harness.chat(STREAM, token=token)]
    assert [response.status_code for response in served] == [200, 200]
    usages = [served[0].json()["usage"]]
    finish = [event for event in _events(served[1].text) if event.get("type") == "finish"]
    usages.append(finish[0]["messageMetadata"]["usage"])

    # Refusals, one of each kind a browser meets.
    forbidden = harness.client_from(PEER, origin="https://evil.example")
    assert_error(await forbidden.post("/api/token"), 403, "Forbidden")
    assert_error(await harness.client.post("/api/chat", json=HELLO), 401, "Unauthorized")
    assert_error(await harness.chat({"messages": "nope"}, token=token), 422, "InvalidRequest")
    long_prompt = {"messages": [{"role": "user", "content": "word " * 400}]}
    assert_error(await harness.chat(long_prompt, token=token), 413, "PromptTooLarge")
    await harness.token()
    await harness.token()  # the third mint this minute: the limit
    assert_error(await harness.client.post("/api/token"), 429, "RateLimitExceeded")
    assert_error(await harness.client.get("/nowhere"), 404, "NotFound")
    provider.enqueue(FakeReply.failure(500))
    assert_error(await harness.chat(HELLO, token=token), 502, "UpstreamError")

    samples = await scrape(harness.client)
    assert requests_total(samples) == {
        ("/api/token", "POST", "200", ""): 3,
        ("/api/token", "POST", "403", "Forbidden"): 1,
        ("/api/token", "POST", "429", "RateLimitExceeded"): 1,
        ("/api/chat", "POST", "200", ""): 2,
        ("/api/chat", "POST", "401", "Unauthorized"): 1,
        ("/api/chat", "POST", "422", "InvalidRequest"): 1,
        ("/api/chat", "POST", "413", "PromptTooLarge"): 1,
        ("/api/chat", "POST", "502", "UpstreamError"): 1,
        ("other", "GET", "404", "NotFound"): 1,
    }
    refusals = {
        f"{dict(labels)['guard']} {dict(labels)['code']}": n
        for labels, n in named(samples, "llmguard_refusals_total").items()
    }
    assert refusals == {
        "origin Forbidden": 1,
        "auth Unauthorized": 1,
        "request InvalidRequest": 1,
        "request PromptTooLarge": 1,
        "rate_limit RateLimitExceeded": 1,
    }
    prompt = sum(usage["prompt_tokens"] for usage in usages)
    completion = sum(usage["completion_tokens"] for usage in usages)
    assert (prompt, completion) == (2 * usages[0]["prompt_tokens"], 3 + 2)
    assert value(samples, "llmguard_tokens_total", model=MODEL, type="prompt") == prompt
    assert value(samples, "llmguard_tokens_total", model=MODEL, type="completion") == completion
    price = DEFAULT_PRICES[MODEL]
    spent = value(samples, "llmguard_spend_usd_total", model=MODEL)
    assert spent == pytest.approx(price.micro_usd(prompt, completion) / 1e6)
    # Three provider calls (the refused one too); the two answered ones had a first token.
    assert value(samples, "llmguard_provider_latency_seconds_count", model=MODEL) == 3
    assert value(samples, "llmguard_time_to_first_token_seconds_count", model=MODEL) == 2
    assert value(samples, "llmguard_open_streams") == 0
    assert value(samples, "llmguard_storage_errors_total") == 0
    # The caps' room, read from the storage: what the budget charged, and nothing else, is gone.
    assert value(samples, "llmguard_monthly_cap_remaining", cap="tokens") == 50_000 - prompt - completion
    assert value(samples, "llmguard_monthly_cap_remaining", cap="usd") == pytest.approx(5.0 - spent)

    # The scrape before this one is counted now.
    again = await scrape(harness.client)
    assert value(again, "llmguard_requests_total", route="/metrics", method="GET", status="200", code="") == 1


async def test_the_first_token_comes_after_the_provider_s_pause(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    harness.provider.enqueue(FakeReply(chunks=["slow"], first_byte_delay=0.3))
    assert (await harness.chat(STREAM)).status_code == 200
    samples = await scrape(harness.client)
    assert value(samples, "llmguard_time_to_first_token_seconds_sum", model=MODEL) >= 0.3
    assert value(samples, "llmguard_time_to_first_token_seconds_bucket", model=MODEL, le="0.25") == 0
    assert value(samples, "llmguard_provider_latency_seconds_sum", model=MODEL) >= 0.3


async def test_a_degraded_request_counts_under_the_model_it_got(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON, degrade=parse_degrade("1%:gpt-4.1-nano:100"))
    month = f"budget:month-tokens:{datetime.now(timezone.utc):%Y-%m}"
    await find(harness.app, TokenBudget).storage.incr(month, expiry=3600, amount=1000)  # 2 % of the month used
    response = await harness.chat(HELLO)
    assert response.headers["x-llmguard-degraded"] == "1"  # the step: the cheaper model
    samples = await scrape(harness.client)
    assert value(samples, "llmguard_tokens_total", model="gpt-4.1-nano", type="completion") > 0
    assert value(samples, "llmguard_tokens_total", model=MODEL, type="completion") == 0


async def test_the_openai_route_is_counted_as_itself(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    token = await harness.token()
    response = await harness.client.post(
        "/v1/chat/completions", json={"model": MODEL, **HELLO}, headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert (await harness.client.get("/v1/models", headers={"authorization": f"Bearer {token}"})).status_code == 200
    samples = await scrape(harness.client)
    assert value(samples, "llmguard_requests_total", route="/v1/chat/completions", method="POST", status="200", code="")
    assert value(samples, "llmguard_requests_total", route="/v1/models", method="GET", status="200", code="")
    usage = response.json()["usage"]
    assert value(samples, "llmguard_tokens_total", model=MODEL, type="prompt") == usage["prompt_tokens"]


async def test_labels_stay_bounded(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    for path in ("/wp-login.php", "/api/chat/", "/API/CHAT", "/metrics/x", f"/{'a' * 500}"):
        await harness.client.get(path)
    await harness.client.request("PROPFIND", "/api/chat")
    await harness.client.request("X" * 40, "/healthz")
    samples = await scrape(harness.client)
    counted = requests_total(samples)
    assert {route for route, _, _, _ in counted} == {"other", "/api/chat", "/healthz"}
    assert {method for _, method, _, _ in counted} == {"GET", "other"}


async def test_the_route_is_the_path_under_the_mount(provider: FakeProvider) -> None:
    app = create_app(make_settings(**METRICS_ON), transport=provider.transport())
    outer = Starlette(routes=[Mount("/llm", app=app)])
    async with asgi_client(outer, origin=ORIGIN) as client:
        assert (await client.post("/llm/api/token")).status_code == 200
        samples = await scrape(client, "/llm/metrics")
    assert value(samples, "llmguard_requests_total", route="/api/token", method="POST", status="200", code="") == 1


# -- streams: open, finished, and left by the client ----------------------------------------------


async def test_open_streams_are_counted_while_they_last(provider: FakeProvider) -> None:
    app = create_app(make_settings(**METRICS_ON), transport=provider.transport())
    provider.enqueue(FakeReply(chunks=["tick "] * 50, delay=0.05))
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, headers={"origin": ORIGIN}, timeout=10) as client:
            token = (await client.post("/api/token")).json()["token"]
            headers = {"authorization": f"Bearer {token}"}
            async with client.stream("POST", "/api/chat", json=STREAM, headers=headers) as response:
                lines = response.aiter_lines()  # one iterator: dropping it would close the stream
                async for line in lines:
                    if '"text-delta"' in line:
                        break
                assert value(await scrape(client), "llmguard_open_streams") == 1
            # The client left; once the server has seen it go, no stream is open.

            async def closed() -> bool:
                return value(await scrape(client), "llmguard_open_streams") == 0

            await _eventually(closed)


async def test_a_stream_the_client_leaves_is_a_499_charged_what_the_budget_charged(
    provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    app = create_app(make_settings(**METRICS_ON, tokens_per_ip="100000/day"), transport=provider.transport())
    provider.enqueue(FakeReply(chunks=["word "] * 200, delay=0.02))
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, headers={"origin": ORIGIN}, timeout=10) as client:
            token = (await client.post("/api/token")).json()["token"]
            headers = {"authorization": f"Bearer {token}"}
            async with client.stream("POST", "/api/chat", json=STREAM, headers=headers) as response:
                async for line in response.aiter_lines():
                    if '"text-delta"' in line:
                        break
            # Recorded when the request ends, after the budget settled it: wait for that.
            samples: Samples = {}

            async def left() -> bool:
                nonlocal samples
                samples = await scrape(client)
                key = ("/api/chat", "POST", "499", "")
                return requests_total(samples).get(key) == 1

            await _eventually(left)
    assert ("/api/chat", "POST", "200", "") not in requests_total(samples)
    charged = await client_tokens(app, "ip:127.0.0.1")
    tokens = sum(value(samples, "llmguard_tokens_total", model=MODEL, type=kind) for kind in ("prompt", "completion"))
    assert tokens == charged
    assert 0 < tokens < 200  # what was streamed, not the whole reply
    assert value(samples, "llmguard_open_streams") == 0
    # The access log says the same.
    [chat] = [fields_of(record) for record in access_records(caplog) if fields_of(record)["path"] == "/api/chat"]
    assert chat["status"] == 499


# -- the storage ---------------------------------------------------------------------------------


async def test_storage_errors_are_counted_and_the_caps_left_out(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(
        **METRICS_ON, storage_url=closed_port_url(), storage_failure="open", storage_timeout=0.2
    )
    assert (await harness.client.post("/api/token")).status_code == 200  # minted without a limit
    samples = await scrape(harness.client)
    failures = value(samples, "llmguard_storage_errors_total")
    assert failures >= 2  # the mint's rate limit, the scrape's reading of the caps
    assert named(samples, "llmguard_monthly_cap_remaining") == {}
    # Reading the caps for that scrape failed too, and was counted.
    assert value(await scrape(harness.client), "llmguard_storage_errors_total") > failures


# -- the pieces, for a hand-built stack -----------------------------------------------------------


async def test_a_hand_built_stack_with_its_own_registry(provider: FakeProvider) -> None:
    registry = CollectorRegistry()
    chat = ChatEndpoint(api_key=KEY, transport=provider.transport(), retries=0)
    budget = TokenBudget(chat, monthly_token_cap=10_000)
    metrics = Metrics(budget=budget, registry=registry, routes={"/chat", "/token", "/metrics"})
    token = TokenEndpoint(secret=SECRET)
    inner = Router(
        routes=[
            Route("/token", token),
            Route("/chat", JWTAuth(budget, secret=SECRET)),
            Route("/metrics", MetricsEndpoint(metrics, token=TOKEN)),
        ]
    )
    app = AccessLog(inner, metrics=metrics)
    try:
        async with asgi_client(app) as client:
            minted = (await client.post("/token")).json()["token"]
            response = await client.post("/chat", json=HELLO, headers={"authorization": f"Bearer {minted}"})
            assert response.status_code == 200
            samples = await scrape(client)
    finally:
        await chat.aclose()
    usage = response.json()["usage"]
    assert value(samples, "llmguard_requests_total", route="/chat", method="POST", status="200", code="") == 1
    assert value(samples, "llmguard_tokens_total", model=MODEL, type="prompt") == usage["prompt_tokens"]
    assert value(samples, "llmguard_monthly_cap_remaining", cap="tokens") == 10_000 - usage["total_tokens"]
    # The registry given holds them too, for an app that serves its own /metrics.
    assert registry.get_sample_value(
        "llmguard_requests_total", {"route": "/chat", "method": "POST", "status": "200", "code": ""}
    )


async def test_recording_reads_what_the_layers_left_in_the_scope() -> None:
    metrics = Metrics()

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        state.model, state.usage, state.cost_usd = "m-1", Usage(7, 11), 0.25
        state.provider_started, state.first_token_at, state.provider_ended = 10.0, 10.5, 12.0
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with asgi_client(AccessLog(endpoint, metrics=metrics)) as client:
        await client.post("/anything")
    samples = parse((await metrics.exposition()).decode())
    assert value(samples, "llmguard_tokens_total", model="m-1", type="prompt") == 7
    assert value(samples, "llmguard_tokens_total", model="m-1", type="completion") == 11
    assert value(samples, "llmguard_spend_usd_total", model="m-1") == 0.25
    assert value(samples, "llmguard_provider_latency_seconds_sum", model="m-1") == 2.0
    assert value(samples, "llmguard_time_to_first_token_seconds_sum", model="m-1") == 0.5
    assert value(samples, "llmguard_requests_total", route="other", method="POST", status="200", code="") == 1


async def test_a_response_that_never_ends_is_a_499() -> None:
    metrics = Metrics()

    async def cut(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert value(parse((await metrics.exposition()).decode()), "llmguard_open_streams") == 1
        # ... and the client is gone: the app returns without the last body message.

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/sdk.js", "root_path": "", "headers": [], "client": None}
    await AccessLog(cut, metrics=metrics)(scope, receive, send)
    samples = parse((await metrics.exposition()).decode())
    assert value(samples, "llmguard_requests_total", route="/sdk.js", method="GET", status="499", code="") == 1
    assert value(samples, "llmguard_open_streams") == 0


def test_every_error_code_is_a_refusal_of_one_guard_or_none() -> None:
    codes = {
        value.code
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.LLMGuardError)
    }
    assert set(GUARDS) | NOT_REFUSALS == codes, "classify the new error code in _metrics.GUARDS or NOT_REFUSALS"
    assert not set(GUARDS) & NOT_REFUSALS
    assert set(GUARDS.values()) == {"origin", "rate_limit", "auth", "challenge", "budget", "request", "server"}


def _paths(routes: list[BaseRoute], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            inner = route.app
            while not isinstance(inner, Router):
                inner = inner.app  # type: ignore[attr-defined]
            found |= _paths(inner.routes, prefix + route.path)
        elif isinstance(route, Route):
            found.add(prefix + route.path)
    return found


def test_every_route_of_the_bundled_app_has_its_label() -> None:
    app = create_app(Settings(demo=True, jwt_secret=SECRET, metrics=True, metrics_token=TOKEN))
    assert _paths(app.routes) <= BUNDLED_ROUTES


# -- several processes -----------------------------------------------------------------------------


def test_a_multiprocess_directory_set_too_late_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # prometheus_client was imported in memory mode (this process started without the variable).
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path))
    with pytest.raises(ValueError, match="set it in the environment the process starts with"):
        Metrics()


def test_forget_dead_workers_keeps_the_living(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead = int(ended.stdout)
    for pid in (dead, os.getpid()):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"counter_{os.getpid()}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


# -- no secret in a scrape --------------------------------------------------------------------------


async def test_no_secret_reaches_a_scrape(harness_factory: Callable[..., Any]) -> None:
    harness: Harness = await harness_factory(**METRICS_ON)
    tokens = [await harness.token()]
    await harness.chat(HELLO, token=tokens[0])
    await harness.client.post("/api/chat", json=HELLO, headers={"authorization": f"Bearer {tokens[0]}x"})
    await harness.client.get("/metrics", headers={"authorization": f"Bearer {KEY}"})
    text = (await harness.client.get("/metrics", headers=SCRAPER)).text
    assert_no_secrets(text, tokens)
    assert TOKEN not in text
    assert PEER not in text  # no client address either


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def _eventually(condition: Callable[[], Any]) -> None:
    """Wait until ``await condition()`` holds (it reads over HTTP what a server thread does); fail after 5 s."""
    with anyio.fail_after(5):
        while not await condition():  # noqa: ASYNC110 - no event to await: the state is read over HTTP
            await anyio.sleep(0.02)
