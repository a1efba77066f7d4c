"""Graceful degradation (``DEGRADE``): past a fraction of the monthly caps, a cheaper model and a lower cap."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import openai
import pytest
from harness import HELLO, Harness, access_fields, assert_error, find, make_settings, sse_events

from llmguard import Settings, TokenBudget
from llmguard._degrade import Degradation, check_degrade, parse_degrade, step_for
from llmguard._prices import Price
from llmguard._settings import SettingsError
from llmguard.testing import FakeReply

Factory = Callable[..., Any]
STEPS = "80%:gpt-4.1-nano:300, 95%::100"


@pytest.fixture(autouse=True)
def _read_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reading of the month's use is per process and at most once a second; here, every request.
    monkeypatch.setattr("llmguard._budget.READING_INTERVAL", 0.0)


def month() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m}"


async def use(harness: Harness, kind: str, amount: int) -> None:
    """Count ``amount`` on the month's ``kind`` counter (``month-tokens``, or ``month-spend`` in micro-dollars)."""
    budget = find(harness.app, TokenBudget)
    await budget.storage.incr(f"budget:{kind}:{month()}", expiry=86400, amount=amount)


def cap(sent: dict[str, Any]) -> int:
    value: int = sent["max_completion_tokens"]
    return value


# -- reading DEGRADE ----------------------------------------------------------------------


def test_steps_are_read_as_percents_or_fractions() -> None:
    assert parse_degrade(STEPS) == (Degradation(0.8, "gpt-4.1-nano", 300), Degradation(0.95, None, 100))
    assert parse_degrade("0.5::50,0.25:gpt-4.1-nano:") == (
        Degradation(0.25, "gpt-4.1-nano", None),
        Degradation(0.5, None, 50),
    )
    assert parse_degrade(" 82.5% : gpt-4.1-nano : 10 ") == (Degradation(0.825, "gpt-4.1-nano", 10),)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("80%", "is not a step", id="no-colons"),
        pytest.param("80%:a:b:c", "is not a step", id="too-many-parts"),
        pytest.param("lots:gpt-4.1-nano:300", "is not a step", id="not-a-number"),
        pytest.param("1.2.3:gpt-4.1-nano:300", "is not a number", id="two-dots"),
        pytest.param("80:gpt-4.1-nano:300", "write the fraction as a percent", id="bare-80"),
        pytest.param("100%::100", "below 100%", id="at-100"),
        pytest.param("0%::100", "above 0%", id="at-0"),
        pytest.param("80%::", "changes nothing", id="empty-step"),
        pytest.param("80%::0", "output cap below 1", id="cap-0"),
        pytest.param("80%::many", "is not a whole number", id="cap-word"),
        pytest.param("80%::10, 0.8::5", "two steps at 80%", id="twice"),
    ],
)
def test_a_bad_degrade_setting_is_refused_at_start_up_naming_degrade(text: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENAI_API_KEY": "sk-x", "DEGRADE": text, "MONTHLY_TOKEN_CAP": "1000"})
    assert caught.value.name == "DEGRADE"
    assert reason in caught.value.reason


def test_degrade_needs_a_monthly_cap() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENAI_API_KEY": "sk-x", "DEGRADE": STEPS})
    assert caught.value.name == "DEGRADE"
    assert "MONTHLY_TOKEN_CAP or MONTHLY_SPEND_CAP_USD" in caught.value.reason
    with pytest.raises(ValueError, match="degrade needs a monthly cap"):
        TokenBudget(lambda *_: None, degrade=parse_degrade(STEPS))  # type: ignore[arg-type]


def test_a_degraded_model_needs_a_price_under_a_spend_cap() -> None:
    environ = {"OPENAI_API_KEY": "sk-x", "DEGRADE": "80%:my-model:", "MONTHLY_SPEND_CAP_USD": "5"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert caught.value.name == "DEGRADE"
    assert "'my-model'" in caught.value.reason
    Settings.from_env({**environ, "MODEL_PRICES": "my-model=0.1/0.4"})
    Settings.from_env({**environ, "MONTHLY_SPEND_CAP_USD": "", "MONTHLY_TOKEN_CAP": "1000"})  # no spend cap
    with pytest.raises(ValueError, match="'my-model', which has no price"):
        TokenBudget(
            lambda *_: None,  # type: ignore[arg-type]
            monthly_spend_cap_usd=5,
            degrade=[Degradation(0.8, "my-model")],
        )


def test_degrade_round_trips_through_the_environment() -> None:
    settings = make_settings(degrade=parse_degrade(STEPS), monthly_token_cap=1000)
    environ = {name: value for name, value in settings.to_env().items() if value is not None}
    assert environ["DEGRADE"] == "80%:gpt-4.1-nano:300,95%::100"
    assert Settings.from_env(environ).degrade == settings.degrade
    assert not make_settings().to_env()["DEGRADE"]
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x", "DEGRADE": "off"}).degrade == ()


def test_check_degrade_sorts_and_refuses_what_is_not_a_step() -> None:
    steps = check_degrade([Degradation(0.9, None, 10), Degradation(0.5, "m")])
    assert [step.threshold for step in steps] == [0.5, 0.9]
    with pytest.raises(ValueError, match=r"^degrade: expected Degradation steps"):
        check_degrade("80%::10")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (0.0, None),
        (0.7999, None),
        (0.8, Degradation(0.8, "gpt-4.1-nano", 300)),
        (0.9, Degradation(0.8, "gpt-4.1-nano", 300)),
        # The 95 % step names no model: the cheaper one of the step below stays.
        (0.95, Degradation(0.95, "gpt-4.1-nano", 100)),
        (1.5, Degradation(0.95, "gpt-4.1-nano", 100)),
    ],
)
def test_the_highest_step_reached_is_in_force(used: float, expected: Degradation | None) -> None:
    assert step_for(parse_degrade(STEPS), used) == expected


def test_a_step_without_a_cap_keeps_the_cap_below() -> None:
    assert step_for(parse_degrade("50%::200, 90%:gpt-4.1-nano:"), 0.91) == Degradation(0.9, "gpt-4.1-nano", 200)


def test_the_header_says_the_percent() -> None:
    assert [step.percent for step in parse_degrade("80%::1, 82.5%::1, 0.333::1")] == ["33.3", "80", "82.5"]


# -- through the app ------------------------------------------------------------------------


async def degraded_harness(harness_factory: Factory, **overrides: Any) -> Harness:
    options: dict[str, Any] = {"degrade": parse_degrade(STEPS), "monthly_token_cap": 100_000, "max_tokens": 1000}
    harness: Harness = await harness_factory(**options | overrides)
    return harness


async def test_below_the_first_step_nothing_changes(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 79_000)
    response = await harness.chat(HELLO)
    assert response.status_code == 200, response.text
    assert "x-llmguard-degraded" not in response.headers
    assert "degraded" not in response.json()
    sent = harness.provider.last_request.json
    assert (sent["model"], cap(sent)) == ("gpt-4.1-mini", 1000)


async def test_past_a_step_the_json_reply_gets_the_cheaper_model_and_says_so(
    harness_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 81_000)
    caplog.set_level(logging.INFO, "llmguard.access")
    response = await harness.chat({**HELLO, "max_tokens": 5000})
    assert response.status_code == 200, response.text
    assert response.headers["x-llmguard-degraded"] == "80"
    assert response.json()["degraded"] == {"threshold": 0.8, "model": "gpt-4.1-nano", "max_tokens": 300}
    sent = harness.provider.last_request.json
    assert (sent["model"], cap(sent)) == ("gpt-4.1-nano", 300)
    fields = access_fields(caplog)
    assert (fields["model"], fields["degraded"]) == ("gpt-4.1-nano", "80")


async def test_a_client_asking_for_less_than_the_degraded_cap_gets_what_it_asked(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 96_000)
    await harness.chat({**HELLO, "max_tokens": 30})
    assert cap(harness.provider.last_request.json) == 30


async def test_past_a_step_the_stream_says_so_in_its_start_and_finish_metadata(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 96_000)
    harness.provider.enqueue(FakeReply(chunks=["a", "b"]))
    response = await harness.chat({**HELLO, "stream": True})
    assert response.headers["x-llmguard-degraded"] == "95"
    events = sse_events(response)
    degraded = {"threshold": 0.95, "model": "gpt-4.1-nano", "max_tokens": 100}
    assert events[0]["type"] == "start"
    assert events[0]["messageMetadata"] == {"degraded": degraded}
    finish = events[-2]
    assert finish["type"] == "finish"
    assert finish["messageMetadata"]["degraded"] == degraded
    assert finish["messageMetadata"]["usage"]["completion_tokens"] == 2
    sent = harness.provider.last_request.json
    assert (sent["model"], cap(sent)) == ("gpt-4.1-nano", 100)


async def test_the_spend_cap_counts_when_it_is_the_more_used(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory, monthly_spend_cap_usd=1.0)
    await use(harness, "month-tokens", 10_000)  # 10 % of the tokens
    await use(harness, "month-spend", 850_000)  # 85 % of the dollars
    response = await harness.chat(HELLO)
    assert response.headers["x-llmguard-degraded"] == "80"


async def test_v1_says_it_in_the_header_and_the_model(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 81_000)
    client = openai.AsyncOpenAI(
        base_url="http://testserver/v1",
        api_key=await harness.token(),
        http_client=harness.client,  # type: ignore[arg-type]
        max_retries=0,
    )
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=HELLO["messages"])
    assert raw.headers["x-llmguard-degraded"] == "80"
    assert raw.parse().model == "gpt-4.1-nano"
    assert "degraded" not in raw.http_response.json()


async def test_at_the_cap_the_caps_refuse_as_without_degradation(harness_factory: Factory) -> None:
    harness = await degraded_harness(harness_factory)
    await use(harness, "month-tokens", 100_000)
    assert_error(await harness.chat(HELLO), 503, "TokenCapReached")
    assert harness.provider.requests == []


async def test_a_preset_is_degraded_too(harness_factory: Factory) -> None:
    presets = {"support": {"system": "Acme.", "model": "gpt-4.1-mini", "max_tokens": 500}}
    harness = await degraded_harness(harness_factory, presets=presets)
    await use(harness, "month-tokens", 81_000)
    await harness.chat({**HELLO, "preset": "support"})
    sent = harness.provider.last_request.json
    assert (sent["messages"][0]["content"], sent["model"], cap(sent)) == ("Acme.", "gpt-4.1-nano", 300)


async def test_the_reading_is_kept_for_an_interval(harness_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmguard._budget.READING_INTERVAL", 3600.0)
    harness = await degraded_harness(harness_factory)
    assert "x-llmguard-degraded" not in (await harness.chat(HELLO)).headers  # read now: 0 %
    await use(harness, "month-tokens", 81_000)
    # Within the interval the process goes on its reading; the caps themselves are checked every time.
    assert "x-llmguard-degraded" not in (await harness.chat(HELLO)).headers
    monkeypatch.setattr("llmguard._budget.READING_INTERVAL", 0.0)  # as if an interval had passed
    assert (await harness.chat(HELLO)).headers["x-llmguard-degraded"] == "80"


async def test_a_reading_taken_for_someone_else_serves_the_degradation_too(
    harness_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spend alerts (or a metrics scrape) read the month after requests: the degradation uses that
    # reading for an interval instead of reading again, so both on read once a second, not twice.
    monkeypatch.setattr("llmguard._budget.READING_INTERVAL", 3600.0)
    harness = await degraded_harness(harness_factory)
    budget = find(harness.app, TokenBudget)
    await use(harness, "month-tokens", 81_000)
    assert await budget.month_usage() == {"tokens": (81_000, 100_000)}
    reads: list[object] = []
    real_read = budget.storage.read

    async def counted(keys: Any) -> list[int]:
        reads.append(keys)
        return await real_read(keys)

    monkeypatch.setattr(budget.storage, "read", counted)
    assert await budget.degradation() == Degradation(0.8, "gpt-4.1-nano", 300)
    assert reads == []
    # A reading for another moment (a test's, a report's) is not taken for now.
    await use(harness, "month-tokens", 15_000)
    await budget.month_usage(now=time.time())
    assert await budget.degradation() == Degradation(0.8, "gpt-4.1-nano", 300)


async def test_a_storage_outage_keeps_the_last_reading(
    harness_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = await degraded_harness(harness_factory, storage_failure="open")
    budget = find(harness.app, TokenBudget)
    await use(harness, "month-tokens", 81_000)
    assert await budget.degradation() == Degradation(0.8, "gpt-4.1-nano", 300)

    async def down(*args: Any, **kwargs: Any) -> list[int]:
        raise budget.storage._failed("down for the test")

    monkeypatch.setattr(budget.storage, "hold_step", down)
    started = time.monotonic()
    assert await budget.degradation() == Degradation(0.8, "gpt-4.1-nano", 300)
    assert time.monotonic() - started < 1


async def test_no_steps_no_reading(harness_factory: Factory) -> None:
    harness: Harness = await harness_factory(monthly_token_cap=1000)
    assert await find(harness.app, TokenBudget).degradation() is None


def test_prices_of_the_degraded_model_come_from_model_prices() -> None:
    settings = make_settings(
        degrade=(Degradation(0.5, "cheap-model"),),
        monthly_spend_cap_usd=1.0,
        model_prices={"cheap-model": Price(0.01, 0.02)},
    )
    assert settings.degrade[0].model == "cheap-model"
