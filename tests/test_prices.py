from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from harness import HELLO, KEY, Harness, access_fields

from llmguard import Settings, SettingsError
from llmguard._prices import DEFAULT_PRICES, Price, parse_prices, price_of

# -- Price ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "prompt_tokens", "completion_tokens", "micro_usd"),
    [
        pytest.param(Price(0.40, 1.60), 1000, 500, 1200, id="gpt-4.1-mini"),
        pytest.param(Price(2.00, 8.00), 1_000_000, 0, 2_000_000, id="a-million-prompt-tokens"),
        pytest.param(Price(2.00, 8.00), 0, 1_000_000, 8_000_000, id="a-million-completion-tokens"),
        pytest.param(Price(2.00, 8.00), 0, 0, 0, id="nothing"),
        pytest.param(Price(0.0, 0.0), 5000, 5000, 0, id="free"),
        pytest.param(Price(0.10, 0.40), 1, 0, 1, id="a-fraction-rounds-up"),
        pytest.param(Price(0.05, 0.40), 30, 1, 2, id="fractions-add-up-then-round"),
        pytest.param(Price(1.10, 4.40), 50, 0, 55, id="o4-mini-exact-prompt"),
        pytest.param(Price(1.10, 4.40), 0, 25, 110, id="o4-mini-exact-completion"),
    ],
)
def test_micro_usd_is_the_cost_in_millionths_of_a_dollar_rounded_up(
    price: Price, prompt_tokens: int, completion_tokens: int, micro_usd: int
) -> None:
    assert price.micro_usd(prompt_tokens, completion_tokens) == micro_usd


def test_the_table_prices_output_above_input() -> None:
    assert DEFAULT_PRICES
    assert all(0 < price.input <= price.output for price in DEFAULT_PRICES.values())


# -- price_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4.1-mini", Price(0.40, 1.60)),
        ("gpt-4.1", Price(2.00, 8.00)),
        ("gpt-4.1-nano", Price(0.10, 0.40)),
        ("gpt-4.1-mini-2025-04-14", Price(0.40, 1.60)),
        ("gpt-4o-2024-08-06", Price(2.50, 10.00)),
        ("gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),
        ("my-model", None),
        ("gpt-4o-2024-05-13", Price(5.00, 15.00)),
        ("gpt-4.1-mini-2025-04", None),
        ("gpt-4.1-mini-2099-01-01", None),
        ("gpt-4.1-mini-latest", None),
        ("openai/gpt-4.1-mini", None),
        ("", None),
    ],
)
def test_price_of_knows_models_and_their_dated_snapshots(model: str, expected: Price | None) -> None:
    assert price_of(model, DEFAULT_PRICES) == expected


def test_a_snapshot_is_never_priced_as_its_family() -> None:
    # gpt-4o-2024-05-13 costs twice gpt-4o: a snapshot the table does not know has no price,
    # rather than its family's, which could be too low for a dollar cap.
    prices = {"gpt-4o": Price(2.50, 10.00)}
    assert price_of("gpt-4o-2024-05-13", prices) is None
    assert price_of("gpt-4o-2024-05-13", DEFAULT_PRICES) == Price(5.00, 15.00)
    assert DEFAULT_PRICES["gpt-4o-2024-05-13"].input > DEFAULT_PRICES["gpt-4o"].input


def test_every_dated_snapshot_in_the_table_has_its_own_entry() -> None:
    dated = [model for model in DEFAULT_PRICES if re.search(r"-\d{4}-\d{2}-\d{2}$", model)]
    assert len(dated) >= 15
    families = {re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model) for model in dated}
    assert families <= set(DEFAULT_PRICES), "every snapshot's family is priced too"


# -- parse_prices -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my-model=0.5/1.5, other=1/4", {"my-model": Price(0.5, 1.5), "other": Price(1.0, 4.0)}),
        ("  gpt-4.1-mini = 1 / 2 ,", {"gpt-4.1-mini": Price(1.0, 2.0)}),
        ("local=0/0", {"local": Price(0.0, 0.0)}),
        ("tiny=1e-2/0.04", {"tiny": Price(0.01, 0.04)}),
        ("org/model:v1=3/9", {"org/model:v1": Price(3.0, 9.0)}),
        ("", {}),
        (" , ", {}),
    ],
)
def test_parse_prices_reads_model_input_output(text: str, expected: dict[str, Price]) -> None:
    assert parse_prices(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "my-model",
        "my-model=1",
        "my-model=1/",
        "my-model=/2",
        "=1/2",
        " =1/2",
        "my-model=a/b",
        "my-model=1/2/3",
        "my-model=-1/2",
        "my-model=1/-2",
        "my-model=nan/1",
        "my-model=1/inf",
        "good=1/2, bad",
    ],
)
def test_parse_prices_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="model=input/output"):
        parse_prices(text)


# -- Settings ---------------------------------------------------------------------------


def test_model_prices_override_and_extend_the_table() -> None:
    settings = Settings.from_env(
        {"OPENAI_API_KEY": KEY, "MODEL_PRICES": "gpt-4.1-mini=1/3, my-model=0.5/1.5"},
    )
    assert settings.prices["gpt-4.1-mini"] == Price(1.0, 3.0)
    assert settings.prices["my-model"] == Price(0.5, 1.5)
    assert settings.prices["gpt-4o"] == DEFAULT_PRICES["gpt-4o"]
    # A snapshot keeps its own price: overriding the family does not reprice it.
    assert price_of("gpt-4.1-mini-2025-04-14", settings.prices) == DEFAULT_PRICES["gpt-4.1-mini-2025-04-14"]


def test_bad_model_prices_refuse_to_start_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="MODEL_PRICES") as caught:
        Settings.from_env({"OPENAI_API_KEY": KEY, "MODEL_PRICES": "my-model=cheap"})
    assert "my-model=cheap" in str(caught.value)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"OPENAI_MODEL": "my-model"}, id="unpriced-model"),
        pytest.param({"OPENAI_MODEL": "my-model", "MODEL_PRICES": "other=1/2"}, id="prices-for-another-model"),
    ],
)
def test_a_spend_cap_on_an_unpriced_model_refuses_to_start(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENAI_API_KEY": KEY, "MONTHLY_SPEND_CAP_USD": "25", **environ})
    message = str(caught.value)
    assert caught.value.name == "MODEL_PRICES"
    assert "MODEL_PRICES" in message
    assert "'my-model'" in message
    assert "object at 0x" not in message
    assert "MISSING" not in message


def test_a_spend_cap_on_an_unpriced_model_refuses_to_start_from_arguments() -> None:
    with pytest.raises(SettingsError, match="model_prices") as caught:
        Settings(openai_api_key=KEY, monthly_spend_cap_usd=25, openai_model="my-model")
    assert "'my-model'" in str(caught.value)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="default-model"),
        pytest.param({"OPENAI_MODEL": "gpt-4.1-mini-2025-04-14"}, id="dated-snapshot"),
        pytest.param({"OPENAI_MODEL": "my-model", "MODEL_PRICES": "my-model=0.5/1.5"}, id="priced-by-setting"),
    ],
)
def test_a_spend_cap_on_a_priced_model_starts(environ: dict[str, str]) -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "MONTHLY_SPEND_CAP_USD": "25", **environ})
    assert settings.monthly_spend_cap_usd == 25.0


async def test_the_logged_cost_follows_model_prices(
    harness_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmguard.access")
    harness: Harness = await harness_factory(model_prices={"gpt-4.1-mini": Price(1000.0, 2000.0)})
    response = await harness.chat(HELLO)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]

    fields = access_fields(caplog)
    assert fields["path"] == "/api/chat"
    expected = (usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000) / 1e6
    assert fields["cost_usd"] == pytest.approx(expected)
