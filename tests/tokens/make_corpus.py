"""Write tests/tokens/corpus.jsonl: the texts tests/test_tokens.py counts both ways.

    .venv/bin/python tests/tokens/make_corpus.py

Ordinary text is in texts/, one file per item, named ``<kind>-<name>.txt`` (english, code, cjk,
multilingual); english-chat.txt holds one question per line, each its own item. Adversarial text
is generated below with a fixed seed: what makes a byte count, or a naive estimator, undercount.
Each line of the output: {"kind", "name", "text"}.
"""

from __future__ import annotations

import base64
import json
import random
import string
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = 4000  # characters, roughly, of each generated item


def ordinary() -> Iterator[dict[str, str]]:
    for path in sorted((HERE / "texts").glob("*.txt")):
        kind, name = path.name.removesuffix(".txt").split("-", 1)
        text = path.read_text(encoding="utf-8")
        if name == "chat":
            for number, line in enumerate(text.splitlines(), 1):
                yield {"kind": kind, "name": f"chat-{number}", "text": line}
        else:
            yield {"kind": kind, "name": name, "text": text}


def pick(rng: random.Random, alphabet: str | list[str], size: int = SIZE) -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


def code_points(*ranges: tuple[int, int]) -> list[str]:
    return [chr(c) for start, end in ranges for c in range(start, end + 1)]


EMOJI = [
    "😀", "😂", "🥲", "🤖", "🔥", "✨", "👍🏽", "👩🏿‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "🇺🇸", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣",
    "❤️", "🫠", "🧑‍🚀", "🐈‍⬛", "🙂‍↔️", "🫨", "🪿", "⚠️", "☕", "🦀",
]  # fmt: skip
COMBINING = code_points((0x300, 0x36F), (0x1AB0, 0x1ACE), (0x1DC0, 0x1DFF), (0x20D0, 0x20F0), (0xFE20, 0xFE2F))
SPACES = [" ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000", "\u2028", "\x85", "\u200b"]
DIGITS = "0123456789" + "٠١٢٣٤٥٦٧٨٩" + "०१२३४५६७८९" + "０１２３４５６７８９" + "²³¹¼½¾ⅠⅡⅫⅰ①②⑳"
CONTROLS = [chr(c) for c in [*range(0x01, 0x20), *range(0x7F, 0xA0)]]
CONTRACTIONS = ["'s", "'S", "'ll", "'LL", "'Re", "'ve", "'d", "'t", "'m", "\u017f", "'\u017f", "’s", "x", " ", "'"]
BIDI = [*"שלום עולם مرحبا بالعالم abc 123", "\u200f", "\u200e", "\u202e", "\u202c", "\u2067", "\u2069"]
INVISIBLE = ["\ufeff", "\x85", "\u200b", "\u2060"]
NEW_IN_UNICODE_15_TO_17 = [*code_points((0x1FA70, 0x1FAFF), (0x2EBF0, 0x2EE5D), (0x11F00, 0x11F5A)), " ", "a"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "user", "\n"]
JSON_ESCAPED = code_points((0x0, 0x40), (0x4E00, 0x4E40), (0x1F600, 0x1F640))
ACCENTED = "éèêëàâäîïôöùûüçñßøåæœÉÀÇÑ" + "aeiou"
MINIFIED = [
    "function(a,b){",
    "return a&&b?",
    "var e=",
    "}",
    ";",
    "[0]",
    "!0",
    "void 0",
    ".map(",
    ")",
    "=>",
    "`${",
    "}`",
]


def any_code_point(r: random.Random, high: int) -> str:
    return chr(r.choice([r.randint(0x20, 0xD7FF), r.randint(0xE000, high)]))


def generated() -> Iterator[tuple[str, Callable[[random.Random], str]]]:
    digits, letters, lower = string.digits, string.ascii_letters, string.ascii_lowercase
    yield "digits-spaced", lambda r: " ".join(pick(r, digits, SIZE // 2))
    yield "digits-spaced-mixed", lambda r: "".join(r.choice(digits) + r.choice(SPACES[:7]) for _ in range(SIZE // 2))
    yield "digits-long", lambda r: pick(r, digits)
    yield "digit-runs-of-four", lambda r: " ".join(pick(r, digits, 4) for _ in range(SIZE // 5))
    yield "numbers-formatted", lambda r: " ".join(f"{r.uniform(-1e7, 1e7):,.{r.randint(0, 6)}f}" for _ in range(300))
    yield "digits-all-scripts", lambda r: pick(r, DIGITS + " ", SIZE // 2)
    yield "letters-and-digits", lambda r: "".join(r.choice(letters) + r.choice(digits) for _ in range(SIZE // 2))
    yield "nul-run", lambda r: "\x00" * SIZE
    yield "nul-spaced", lambda r: " \x00" * (SIZE // 2)
    yield "control-chars", lambda r: pick(r, CONTROLS)
    yield "whitespace-mixed", lambda r: pick(r, SPACES)
    yield (
        "whitespace-and-words",
        lambda r: "".join(r.choice(SPACES) * r.randint(1, 9) + r.choice("ax1.") for _ in range(800)),
    )
    yield "tabs", lambda r: "\t" * SIZE
    yield "spaces-then-letter", lambda r: (" " * 997 + "x") * 4
    yield (
        "crlf-lines",
        lambda r: "".join(r.choice(["\r\n", "\n", "\r", "\r\n\r\n", " \r\n", "x\r\n"]) for _ in range(2000)),
    )
    yield (
        "indentation",
        lambda r: "".join("\n" + " " * r.choice([0, 2, 4, 8, 12, 16, 24, 32, 33, 65]) + "x" for _ in range(600)),
    )
    yield "cjk-extension-b", lambda r: pick(r, code_points((0x20000, 0x2A6DF)), SIZE // 2)
    yield "cjk-unified-random", lambda r: pick(r, code_points((0x4E00, 0x9FFF)), SIZE // 2)
    yield "hangul-random", lambda r: pick(r, code_points((0xAC00, 0xD7A3)), SIZE // 2)
    yield "kana-random", lambda r: pick(r, code_points((0x3041, 0x3096), (0x30A1, 0x30FA)), SIZE // 2)
    yield "emoji", lambda r: pick(r, EMOJI, SIZE // 4)
    yield "emoji-spaced", lambda r: " ".join(pick(r, EMOJI, SIZE // 6))
    yield "zalgo", lambda r: "".join(r.choice(letters) + pick(r, COMBINING, r.randint(3, 15)) for _ in range(400))
    yield "combining-alone", lambda r: pick(r, [*COMBINING, " "], SIZE // 2)
    yield "base64", lambda r: base64.b64encode(r.randbytes(SIZE * 3 // 4)).decode()
    yield "base64-lines", lambda r: base64.encodebytes(r.randbytes(SIZE * 3 // 4)).decode()
    yield "hex", lambda r: r.randbytes(SIZE // 2).hex()
    yield (
        "hashes-and-uuids",
        lambda r: "\n".join(f"{r.randbytes(32).hex()} {r.randbytes(16).hex('-', 4)}" for _ in range(50)),
    )
    yield "url-encoded", lambda r: urllib.parse.quote(r.randbytes(SIZE // 3).decode("latin-1"))
    yield "mixed-case", lambda r: pick(r, letters)
    yield "mixed-case-words", lambda r: " ".join(pick(r, letters, r.randint(1, 12)) for _ in range(500))
    yield "printable-ascii", lambda r: pick(r, string.printable)
    yield "punctuation", lambda r: pick(r, string.punctuation)
    yield "punctuation-runs", lambda r: " ".join(pick(r, string.punctuation, r.randint(1, 20)) for _ in range(300))
    yield "contractions", lambda r: pick(r, CONTRACTIONS, 1500)
    yield "rtl-with-controls", lambda r: pick(r, BIDI)
    yield "math-alphanumerics", lambda r: pick(r, [*code_points((0x1D400, 0x1D7FF)), " "], SIZE // 2)
    yield "fullwidth", lambda r: pick(r, code_points((0xFF01, 0xFF5E)), SIZE // 2)
    yield (
        "bom-nel-zwsp",
        lambda r: "".join(r.choice(INVISIBLE) + r.choice(["word", " the", "1", "."]) for _ in range(700)),
    )
    yield "unicode-any", lambda r: "".join(any_code_point(r, 0x10FFFF) for _ in range(SIZE // 2))
    yield "unicode-bmp", lambda r: "".join(any_code_point(r, 0xFFFD) for _ in range(SIZE // 2))
    yield "new-in-unicode-15-to-17", lambda r: pick(r, NEW_IN_UNICODE_15_TO_17, SIZE // 2)
    yield "private-use", lambda r: pick(r, code_points((0xE000, 0xF8FF), (0xF0000, 0xF00FF)), SIZE // 2)
    yield "special-tokens", lambda r: pick(r, SPECIAL_TOKENS, 400)
    yield "json-escapes", lambda r: json.dumps(pick(r, JSON_ESCAPED, SIZE // 6))
    yield "long-word", lambda r: pick(r, lower)
    yield "long-cjk-piece", lambda r: pick(r, code_points((0x4E00, 0x4FFF)), 1000)
    yield "repeated-word", lambda r: "the" * (SIZE // 3)
    yield "repeated-a", lambda r: "a" * SIZE
    yield "latin-accents", lambda r: " ".join(pick(r, ACCENTED, r.randint(1, 10)) for _ in range(400))
    yield "mixed-scripts-per-char", lambda r: pick(r, "aбcдeфгhиjкlмnоpрsтuвwхyз" + "αβγδ" + "中日" + "1 ")
    yield "minified-js", lambda r: pick(r, MINIFIED, 800)
    yield (
        "markdown-table",
        lambda r: "\n".join(
            "|" + "|".join(pick(r, "-:= ", r.randint(1, 9)) for _ in range(8)) + "|" for _ in range(150)
        ),
    )


def main() -> None:
    items = list(ordinary())
    for number, (name, make) in enumerate(generated()):
        items.append({"kind": "adversarial", "name": name, "text": make(random.Random(number))})
    # Long enough to be counted in several chunks.
    english = "\n\n".join(item["text"] for item in items if item["kind"] == "english" and "chat" not in item["name"])
    items.append({"kind": "english", "name": "long", "text": (english + "\n\n") * 3})
    cjk = "\n".join(item["text"] for item in items if item["kind"] == "cjk")
    items.append({"kind": "cjk", "name": "long", "text": cjk * 6})
    with (HERE / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{len(items)} items, {sum(len(item['text']) for item in items)} characters")


if __name__ == "__main__":
    main()
