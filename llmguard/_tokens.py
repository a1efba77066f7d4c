"""Token estimates for when the provider has not (yet) said how many it used.

No tokenizer is bundled: tiktoken downloads its tables at run time. A UTF-8
byte count over four tracks English closely (about four characters a token)
and errs high, the safe side for a budget, on other scripts.
"""

from __future__ import annotations

from collections.abc import Iterable

# Chat formats add a few tokens per message (role markers) and per reply.
PER_MESSAGE = 4
PER_REPLY = 3


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, -(-len(text.encode("utf-8", "replace")) // 4))


def estimate_prompt_tokens(texts: Iterable[str]) -> int:
    return PER_REPLY + sum(PER_MESSAGE + estimate_text_tokens(text) for text in texts)
