"""Token counting for length budgets, and the length labels used by BABILong and RULER.

Contract: ``TokenCounter(tokenizer)`` counts tokens the way the evaluated model sees them, i.e.
``len(tokenizer(text, add_special_tokens=False)["input_ids"])`` for a Hugging Face tokenizer.
It also accepts a raw ``tokenizers.Tokenizer`` (``encode_batch``), any object with ``encode``,
or ``None``, which counts whitespace-separated words (a stand-in when no model tokenizer is at
hand; budgets are then in words, not tokens).

Batched counting (``count_many``) is what makes long contexts cheap: generators tokenize each
sentence once and sum, instead of re-tokenizing the growing context.

Length labels: ``"4k"`` is 4 * ``kilo`` tokens, ``"0k"`` is 0 (facts only); plain integers
("256" or 256) are taken as token counts. The conventions differ by benchmark: RULER's lengths
are powers of two (``kilo=1024``: "4k" = 4096), BABILong's are 1000-based (``kilo=1000``:
"1k" = 1000, see ``SUITE_KILO``).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

_LABEL = re.compile(r"^\s*(\d+)\s*([kK]?)\s*$")
SUITE_KILO = {"babilong": 1000, "ruler": 1024, "agentic": 1024}


def parse_length(value: str | int, kilo: int = 1024) -> int:
    """``"4k"`` -> 4 * kilo, ``"0k"`` -> 0, ``"256"`` / ``256`` -> 256."""
    if isinstance(value, bool):
        raise ValueError(f"invalid length {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"length must be >= 0, got {value}")
        return value
    match = _LABEL.match(str(value))
    if not match:
        raise ValueError(f"invalid length {value!r}; expected e.g. 0k, 4k, 128k or a token count")
    number, unit = int(match.group(1)), match.group(2)
    return number * kilo if unit else number


def format_length(tokens: int, kilo: int = 1024) -> str:
    """Inverse of ``parse_length`` for display: 4096 -> "4k", 300 -> "300"."""
    return f"{tokens // kilo}k" if tokens % kilo == 0 else str(tokens)


class TokenCounter:
    """Counts tokens of texts with a model tokenizer (or words when ``tokenizer`` is None)."""

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        texts = list(texts)
        if not texts:
            return []
        tok = self.tokenizer
        if tok is None:
            return [len(t.split()) for t in texts]
        if hasattr(tok, "encode_batch"):  # a raw `tokenizers.Tokenizer`
            return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        if callable(tok):  # a transformers tokenizer: batched call, no special tokens
            # verbose=False silences the "longer than model_max_length" warning: we only count.
            ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
            return [len(x) for x in ids]
        return [len(tok.encode(t)) for t in texts]


def as_counter(tokenizer: Any) -> TokenCounter:
    """Wrap a tokenizer (or None) in a TokenCounter; pass an existing counter through."""
    return tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
