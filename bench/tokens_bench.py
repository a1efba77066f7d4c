"""What llmguard's token estimate (llmguard/_tokens.py) costs, against counting UTF-8 bytes.

    .venv/bin/python bench/tokens_bench.py            # full run, writes bench/results/tokens.{md,json}
    .venv/bin/python bench/tokens_bench.py --quick    # a smoke run (figures are not asserted)

Inputs: ordinary English (about 2 KB and 100 KB, from tests/tokens/texts/) and 1 MB of
adversarial text of several kinds. Arms, interleaved round by round and reported as the best
round (the machine is shared and noisy): the baseline ``len(text.encode())`` (what the old
bytes/4 estimate cost), the estimate, the estimate of the same text again (its pieces are
remembered, as when a chat resends its history), and the estimate with ``stop_above=8000``
(the default MAX_PROMPT_TOKENS), each with its ratio to the baseline of the same round. The
other arms start with an empty piece cache, as on text the server has not seen. Also measured,
in fresh processes: the first call (which loads the vocabulary) and the memory that adds.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import string
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from llmguard import _tokens

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
TEXTS = ROOT / "tests" / "tokens" / "texts"
LIMIT = 8000
MB = 1_000_000


def ordinary() -> str:
    return "\n\n".join(
        (TEXTS / f"english-{name}.txt").read_text("utf-8") for name in ("essay", "story", "technical", "email")
    )


def inputs(size: int) -> dict[str, str]:
    rng = random.Random(7)
    english = ordinary()
    label = f"{size // 1000:,} KB" if size < MB else "1 MB"

    def repeat(unit: Callable[[], str]) -> str:
        parts, length = [], 0
        while length < size:
            parts.append(unit())
            length += len(parts[-1].encode())
        return "".join(parts)

    return {
        "English, 2 KB": (TEXTS / "english-essay.txt").read_text("utf-8"),
        "English, 100 KB": (english * (100_000 // len(english) + 1))[:100_000],
        f"digits and spaces, {label}": repeat(lambda: rng.choice(string.digits) + " "),
        f"NUL, {label}": "\x00" * size,
        f"printable ASCII, {label}": repeat(lambda: rng.choice(string.printable)),
        f"lowercase nonsense words, {label}": repeat(lambda: "".join(rng.choices(string.ascii_lowercase, k=12)) + " "),
        f"Chinese clauses, {label}": repeat(
            lambda: "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(20)) + "，"
        ),
        f"ideographs, no punctuation, {label}": repeat(lambda: chr(rng.randint(0x4E00, 0x9FFF))),
        f"emoji, {label}": repeat(lambda: rng.choice(["😀", "🔥", "👍🏽", "🇫🇷", "✨", "👨‍👩‍👧"])),
        f"BOM, NEL and words, {label}": repeat(lambda: rng.choice(["\ufeff", "\x85", "a", " ", "1", "."])),
        f"any code point, {label}": repeat(
            lambda: chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
        ),
    }


def best(rounds: int, arms: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Times of each arm, round by round; an arm named "...again" keeps the piece cache of the one before."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, arm in arms.items():
            if not name.endswith("again"):
                _tokens._o200k()._cache.clear()
            start = time.perf_counter()
            arm()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(value: float) -> str:
    return f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def first_call() -> dict[str, float]:
    """In a fresh process: how long the first estimate takes (it loads the data) and the memory it adds."""
    probe = """
import gc, json, time
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096
from llmguard._tokens import estimate_text_tokens
gc.collect(); before = rss(); start = time.perf_counter()
estimate_text_tokens("Hello, world")
seconds = time.perf_counter() - start
gc.collect(); print(json.dumps({"seconds": seconds, "rss_mb": (rss() - before) / 1e6}))
"""
    runs = [
        json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)
        for _ in range(3)
    ]
    return {"seconds": min(run["seconds"] for run in runs), "rss_mb": max(run["rss_mb"] for run in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds")
    args = parser.parse_args()
    size, rounds = (100_000, 2) if args.quick else (MB, 7)
    _tokens.estimate_text_tokens("warm up: load the vocabulary")
    rows = []
    for name, text in inputs(size).items():
        times = best(
            rounds,
            {
                "bytes": lambda text=text: len(text.encode("utf-8", "surrogatepass")),
                "estimate": lambda text=text: _tokens.estimate_text_tokens(text),
                "estimate again": lambda text=text: _tokens.estimate_text_tokens(text),
                "stop_above": lambda text=text: _tokens.estimate_text_tokens(text, stop_above=LIMIT),
            },
        )
        base = min(times["bytes"])
        rows.append(
            {
                "input": name,
                "bytes": len(text.encode("utf-8", "surrogatepass")),
                "estimate": _tokens.estimate_text_tokens(text),
                "baseline_ms": base * 1e3,
                "estimate_ms": min(times["estimate"]) * 1e3,
                "again_ms": min(times["estimate again"]) * 1e3,
                "stop_above_ms": min(times["stop_above"]) * 1e3,
                "estimate_ratio": min(times["estimate"]) / base,
                "again_ratio": min(times["estimate again"]) / base,
                "stop_above_ratio": min(times["stop_above"]) / base,
            }
        )
    load = first_call()
    data = Path(_tokens.__file__).with_name("_o200k_base.xz").stat().st_size
    lines = [
        f"# Token estimate, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}",
        "",
        f"Best of {rounds} rounds. Baseline: `len(text.encode())`. {LIMIT} is the default MAX_PROMPT_TOKENS.",
        "",
        "| input | estimate | baseline | estimate (× baseline) | same text again | stop_above |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {row['input']} | {row['estimate']:,} tokens | {row['baseline_ms']:.3f} ms"
            f" | {row['estimate_ms']:.1f} ms ({ratio(row['estimate_ratio'])})"
            f" | {row['again_ms']:.1f} ms ({ratio(row['again_ratio'])})"
            f" | {row['stop_above_ms']:.1f} ms ({ratio(row['stop_above_ratio'])}) |"
            for row in rows
        ),
        "",
        f"First call (loads the vocabulary): {load['seconds'] * 1e3:.0f} ms; resident memory added: "
        f"{load['rss_mb']:.1f} MB. Data file in the wheel: {data / 1e3:.0f} KB.",
    ]
    print("\n".join(lines))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tokens.md").write_text("\n".join(lines) + "\n")
        (RESULTS / "tokens.json").write_text(
            json.dumps({"rows": rows, "first_call": load, "data_bytes": data}, indent=2)
        )


if __name__ == "__main__":
    main()
