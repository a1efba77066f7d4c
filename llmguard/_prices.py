"""What tokens cost, for the monthly spend cap.

US dollars per million tokens (input, output), OpenAI's published standard-tier
prices for the models people pick for chat widgets. Prices change: check them
and override or extend the table with ``MODEL_PRICES`` (``"model=in/out,..."``)
or the ``prices`` argument of ``TokenBudget``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def micro_usd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost in millionths of a dollar, rounded up (tokens times dollars per million)."""
        # Rounded to a millionth of a micro-dollar first: 50 x 1.10 is 55.000000000000007 in floats.
        return math.ceil(round(prompt_tokens * self.input + completion_tokens * self.output, 6))


DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-2025-04-14": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-mini-2025-04-14": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4.1-nano-2025-04-14": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    # The first gpt-4o snapshot kept its launch price: twice the family's.
    "gpt-4o-2024-05-13": Price(5.00, 15.00),
    "gpt-4o-2024-08-06": Price(2.50, 10.00),
    "gpt-4o-2024-11-20": Price(2.50, 10.00),
    "chatgpt-4o-latest": Price(5.00, 15.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o-mini-2024-07-18": Price(0.15, 0.60),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-2025-08-07": Price(1.25, 10.00),
    "gpt-5-chat-latest": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-mini-2025-08-07": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-5-nano-2025-08-07": Price(0.05, 0.40),
    "o1": Price(15.00, 60.00),
    "o1-2024-12-17": Price(15.00, 60.00),
    "o3": Price(2.00, 8.00),
    "o3-2025-04-16": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o3-mini-2025-01-31": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "o4-mini-2025-04-16": Price(1.10, 4.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4-turbo-2024-04-09": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-3.5-turbo-0125": Price(0.50, 1.50),
}

# Models whose output starts with hidden reasoning tokens, billed as output before any
# visible text: OpenAI's o-series and gpt-5 (but not its chat variant), and other providers'
# "reasoner"/"thinking" models by the words in their names.
_REASONING = re.compile(r"^(o\d|gpt-5(?!-chat))|reason|think|(^|[-/])r1($|-)|qwq", re.IGNORECASE)


def price_of(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The model's price, by its exact name.

    A dated snapshot is not assumed to cost what its family costs
    (``gpt-4o-2024-05-13`` costs twice ``gpt-4o``): it needs its own entry.
    """
    return prices.get(model)


def is_reasoning_model(model: str) -> bool:
    """Whether the model may spend hidden reasoning tokens (billed as output) before any text."""
    return _REASONING.search(model) is not None


def parse_prices(text: str) -> dict[str, Price]:
    """``"my-model=0.5/1.5, other=1/4"`` → prices in dollars per million tokens."""
    prices: dict[str, Price] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        model, _, pair = entry.partition("=")
        input_price, _, output_price = pair.partition("/")
        try:
            price = Price(float(input_price), float(output_price))
        except ValueError:
            raise ValueError(f"{entry.strip()!r} is not model=input/output (US dollars per million tokens)") from None
        if not model.strip() or not _usable(price):
            raise ValueError(f"{entry.strip()!r} is not model=input/output (US dollars per million tokens)")
        prices[model.strip()] = price
    return prices


def check_prices(prices: Mapping[str, Price], option: str = "prices") -> Mapping[str, Price]:
    """``prices`` as given, or ValueError naming ``option`` and the entry that is not a usable price."""
    if not isinstance(prices, Mapping):
        raise ValueError(f"{option} has value {prices!r}: expected a mapping of model names to Price")
    for model, price in prices.items():
        if not (isinstance(model, str) and model.strip() and isinstance(price, Price) and _usable(price)):
            raise ValueError(
                f"{option}: {model!r}: {price!r} is not a model name with a Price "
                "(finite, non-negative US dollars per million tokens)"
            )
    return prices


def _usable(price: Price) -> bool:
    return all(
        not isinstance(p, bool) and isinstance(p, (int, float)) and math.isfinite(p) and p >= 0
        for p in (price.input, price.output)
    )
