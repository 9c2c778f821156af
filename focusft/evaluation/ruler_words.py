"""RULER aggregation tasks: common words (CWE) and frequent coded words (FWE).

CWE: a numbered list "1. w 2. w ..." of wonderwords words in random order. 10 common words
appear 30 times each and every other word 3 times (6 and 1 when the length is below 4k); the
number of other words is the largest that fits. References = the 10 common words; string_match_all;
the prompt set's max_new_tokens (120). One worked example comes first at every length, as in
RULER: 40 words, the 10 common ones x10 and the rest x3 (below 4k: 20 words, x3 and x1), with
the answer prefix and its numbered answer, then a newline (lm-eval's port leaves it out:
``RulerTexts.cwe_example``). The pool (~8.5k distinct words) runs
out around 64k-128k with compact tokenizers: the list then stops short (``meta["truncated"]``).
Small-vocabulary tokenizers (numbers digit by digit) cannot fit 10 words x30 plus the example
in 4k: the below-4k frequencies and example are then used (``meta["common_freq"] == 6``).

FWE: V = max(5, (L - 50) // 50) words; rank 1 is the prompt set's noise word (RULER: "....",
which the prompt says to ignore), ranks 2..V random coded words (6 lowercase letters); the
word of rank k appears int(n * k^-2 / zeta(2)) times (Zipf, alpha 2; n the largest that fits;
words with 0 occurrences are absent), in random order, space separated. References = ranks
2-4 (the three most frequent coded words); string_match_all; max_new_tokens 50.
``meta["n"]`` records n so counts can be checked.

With ``split`` given, the reference words are drawn from that split's share of words.
"""

from __future__ import annotations

import math
import random
import string

from focusft.evaluation.haystack import prose_vocabulary
from focusft.evaluation.prompt_sets import join_prefix, ruler_texts
from focusft.evaluation.ruler_base import RulerSample, draw_in_split, fill, largest_fitting
from focusft.evaluation.tokens import TokenCounter

ZETA_2 = math.pi ** 2 / 6


def _word_pool() -> list[str]:
    vocab = prose_vocabulary()
    return sorted(set(vocab["n"]) | set(vocab["a"]) | set(vocab["v"]))


# --- CWE -------------------------------------------------------------------------------------
def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe_list(common: list[str], fc: int, others: list[str], fo: int, seed: int) -> list[str]:
    words = common * fc + others * fo
    random.Random(seed).shuffle(words)
    return words


def _cwe_example(rng: random.Random, pool: list[str], texts, short: bool) -> str:
    n, fc, fo = (20, 3, 1) if short else (40, 10, 3)
    picked = rng.sample(pool, n)
    listing = _numbered(_cwe_list(picked[:10], fc, picked[10:], fo, rng.getrandbits(32)))
    text = join_prefix(fill(texts.cwe_template, context=listing), texts.cwe_prefix)
    return f"{text} {_numbered(picked[:10])}\n"


def cwe_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
               haystack=None, split: str | None = None, prompts: str = "focusft",
               frame_tokens: int = 0) -> RulerSample:
    if length >= 4096:
        state = rng.getstate()
        try:
            return _cwe(task, length, counter, rng, split, prompts, frame_tokens, short=False)
        except ValueError:  # 30x common words do not fit this tokenizer: RULER's short form
            rng.setstate(state)
    return _cwe(task, length, counter, rng, split, prompts, frame_tokens, short=True)


def _cwe(task: str, length: int, counter: TokenCounter, rng: random.Random, split, prompts,
         frame_tokens: int, short: bool) -> RulerSample:
    texts, pool = ruler_texts(prompts), _word_pool()
    fc, fo = (6, 1) if short else (30, 3)
    example = _cwe_example(rng, pool, texts, short)
    example = example if texts.cwe_example else ""  # drawn anyway: same samples either way
    common: list[str] = []
    while len(common) < 10:
        common.append(draw_in_split(lambda: rng.choice(pool), split, avoid=common))
    others = [w for w in pool if w not in set(common)]
    rng.shuffle(others)
    seed = rng.getrandbits(32)

    def build(m: int) -> str:
        listing = _numbered(_cwe_list(common, fc, others[:m], fo, seed))
        return example + fill(texts.cwe_template, context=listing)

    new_tokens = texts.new_tokens(task)
    budget = length - new_tokens - frame_tokens
    per_entry = counter.count(_numbered(others[:200])) / 200  # tokens of one "i. word"
    full = lambda m: join_prefix(build(m), texts.cwe_prefix)  # noqa: E731
    guess = int((budget - counter.count(full(0))) / (per_entry * fo))
    m = largest_fitting(full, counter, budget, max(0, guess), maximum=len(others))
    return RulerSample(task, length, build(m), common, new_tokens, "all", texts.cwe_prefix, [],
                       {"common_freq": fc, "other_freq": fo, "other_words": m,
                        "truncated": m == len(others)})


# --- FWE -------------------------------------------------------------------------------------
def fwe_counts(n: int, vocab: int) -> list[int]:
    """Occurrences of the words of rank 1..vocab: int(n * k^-2 / zeta(2))."""
    return [int(n * k ** -2 / ZETA_2) for k in range(1, vocab + 1)]


def fwe_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
               haystack=None, split: str | None = None, prompts: str = "focusft",
               frame_tokens: int = 0) -> RulerSample:
    texts = ruler_texts(prompts)
    vocab = max(5, (length - 50) // 50)

    def coded() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(6))

    words: list[str] = [texts.fwe_noise_word]
    while len(words) < vocab:  # ranks 2-4 carry the answer: drawn in the split
        words.append(draw_in_split(coded, split if len(words) < 4 else None, avoid=words))
    seed = rng.getrandbits(32)

    def build(n: int) -> str:
        text = [w for w, c in zip(words, fwe_counts(n, vocab)) for _ in range(c)]
        random.Random(seed).shuffle(text)
        return fill(texts.fwe_template, context=" ".join(text))

    new_tokens = texts.new_tokens(task)
    budget = length - new_tokens - frame_tokens
    full = lambda n: join_prefix(build(n), texts.fwe_prefix)  # noqa: E731
    per_word = counter.count(" ".join(words[:50])) / min(50, vocab)
    guess = int((budget - counter.count(full(0))) / per_word)
    n = largest_fitting(full, counter, budget, max(60, guess), minimum=60)
    return RulerSample(task, length, build(n), words[1:4], new_tokens, "all", texts.fwe_prefix,
                       [], {"n": n, "vocab": vocab})
