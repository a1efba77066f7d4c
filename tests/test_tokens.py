"""The token estimate against the exact o200k_base count (gpt-tokenizer, see tests/o200k_counter.py).

The corpus is tests/tokens/corpus.jsonl (written by tests/tokens/make_corpus.py); the properties
draw text from several strategies, ordinary and hostile.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from o200k_counter import CounterUnavailable, ExactCounter

from llmguard._tokens import PER_MESSAGE, PER_REPLY, estimate_prompt_tokens, estimate_text_tokens

# One item a line; not str.splitlines(), which also splits at the U+0085 and U+2028 inside the texts.
LINES = (Path(__file__).parent / "tokens" / "corpus.jsonl").read_text("utf-8").split("\n")
CORPUS = [json.loads(line) for line in LINES if line]
ORDINARY = ("english", "code", "cjk", "multilingual")
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def o200k() -> Iterator[ExactCounter]:
    try:
        counter = ExactCounter()
    except CounterUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    yield counter
    counter.close()


def corpus(*kinds: str) -> list[object]:
    return [
        pytest.param(item["text"], id=f"{item['kind']}-{item['name']}")
        for item in CORPUS
        if not kinds or item["kind"] in kinds
    ]


def test_the_corpus_has_ordinary_and_adversarial_text() -> None:
    kinds = {item["kind"] for item in CORPUS}
    assert kinds == {*ORDINARY, "adversarial"}
    assert sum(item["kind"] == "adversarial" for item in CORPUS) >= 40


@pytest.mark.parametrize("text", corpus())
def test_the_estimate_is_never_below_the_exact_count(o200k: ExactCounter, text: str) -> None:
    assert estimate_text_tokens(text) >= o200k.count(text)


@pytest.mark.parametrize("text", corpus("english", "code"))
def test_english_and_code_are_estimated_within_one_and_a_half_times(o200k: ExactCounter, text: str) -> None:
    assert estimate_text_tokens(text) <= 1.5 * o200k.count(text)


@pytest.mark.parametrize("text", corpus("cjk", "multilingual"))
def test_chinese_japanese_korean_and_other_languages_too(o200k: ExactCounter, text: str) -> None:
    # Not refused far earlier than the model would need: a byte count is 2 to 3 times too high here.
    assert estimate_text_tokens(text) <= 1.5 * o200k.count(text)


def hostile_bodies() -> list[object]:
    rng = random.Random(11)
    english = "\n".join(item["text"] for item in CORPUS if item["kind"] == "english")
    nonsense = " ".join("".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(6000))
    return [
        pytest.param("1 " * 140_000, id="more-pieces-than-counted-exactly"),
        pytest.param(nonsense, id="more-bytes-than-merged-exactly"),
        pytest.param("".join(rng.choices(string.printable, k=150_000)), id="more-pieces-than-looked-up"),
        pytest.param("\x00" * 21_000 + english, id="no-sure-cut-for-21000-characters"),
        pytest.param("x" * 300 + " " + "中" * 300 + " " + "1" * 300, id="pieces-longer-than-merged"),
    ]


def test_a_long_english_text_is_estimated_within_one_and_a_half_times_too(o200k: ExactCounter) -> None:
    english = "\n".join(item["text"] for item in CORPUS if item["kind"] == "english")
    text = english * (300_000 // len(english) + 1)
    assert estimate_text_tokens(text) <= 1.5 * o200k.count(text)


@pytest.mark.parametrize("text", hostile_bodies())
def test_past_the_cost_limits_text_counts_as_its_bytes_never_less(o200k: ExactCounter, text: str) -> None:
    assert o200k.count(text) <= estimate_text_tokens(text) <= len(text.encode())


def test_an_empty_text_has_no_tokens() -> None:
    assert estimate_text_tokens("") == 0


def test_a_prompt_counts_each_message_and_the_reply() -> None:
    texts = [item["text"] for item in CORPUS[:5]]
    expected = PER_REPLY + sum(PER_MESSAGE + estimate_text_tokens(text) for text in texts)
    assert estimate_prompt_tokens(texts) == expected
    assert estimate_prompt_tokens([]) == PER_REPLY


# -- properties ---------------------------------------------------------------------------

WORDS = sorted({word for item in CORPUS if item["kind"] in ORDINARY for word in item["text"].split()})
# Characters whose class is disputed or that sit at the pattern's edges (contractions, CR LF, digits
# of other scripts, marks, astral letters, characters new in recent Unicode, a lone surrogate).
TRICKY = [
    *"aZ09 \t\r\n'sStTdDmMlLvVrReE/._-",
    *"ſK\x85\ufeff\u200b\u200d\u2028\u3000\xa0\x00\x7f\u0301\u20e3\ufe0f",
    *"é中日한٣²Ⅻ①𝐀𠀀😀🇫\U0001f3fb\U0001fae8\U0002ebf0\U0001e900\U00011f00\U000e0041\ue000\U000f0000\ud800\udc00",
]
WINDOWS = [item["text"][start : start + 400] for item in CORPUS for start in range(0, len(item["text"]), 400)]

texts = st.one_of(
    st.text(),
    st.text(alphabet=string.printable),
    st.text(alphabet="0123456789 \t\n\r"),
    st.text(alphabet=st.sampled_from(TRICKY)),
    st.lists(st.sampled_from(WORDS) | st.sampled_from(TRICKY)).map(" ".join),
    st.lists(st.sampled_from(WORDS) | st.sampled_from(TRICKY)).map("".join),
)
# Long enough to be counted in several chunks, with ordinary and hostile text meeting at the cuts.
long_texts = st.lists(st.sampled_from(WINDOWS) | st.sampled_from(TRICKY), min_size=5, max_size=40).map("".join)


@PROPERTY
@given(texts)
def test_any_text_is_estimated_at_least_at_its_exact_count(o200k: ExactCounter, text: str) -> None:
    # And at most at its length in bytes: never worse than counting bytes.
    assert o200k.count(text) <= estimate_text_tokens(text) <= len(text.encode("utf-8", "surrogatepass"))


@settings(PROPERTY, max_examples=40)
@given(long_texts)
def test_long_mixed_text_is_estimated_at_least_at_its_exact_count(o200k: ExactCounter, text: str) -> None:
    assert estimate_text_tokens(text) >= o200k.count(text)


STOPPING_EARLY = [
    pytest.param(st.one_of(texts, long_texts), estimate_text_tokens, id="one-text"),
    pytest.param(st.lists(st.one_of(texts, long_texts), max_size=5), estimate_prompt_tokens, id="prompt-messages"),
]


@pytest.mark.parametrize(("subjects", "estimate"), STOPPING_EARLY)
@PROPERTY
@given(data=st.data())
def test_stopping_early_never_says_a_prompt_fits_when_it_does_not(
    subjects: st.SearchStrategy[Any], estimate: Callable[..., int], data: st.DataObject
) -> None:
    subject = data.draw(subjects)
    full = estimate(subject)
    limit = data.draw(st.integers(min_value=0, max_value=full + 10))
    early = estimate(subject, stop_above=limit)
    if full <= limit:
        assert early == full
    else:
        assert limit < early <= full
