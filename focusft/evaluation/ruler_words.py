"""RULER aggregation tasks: common words (CWE) and frequent coded words (FWE).

CWE: a numbered list "1. w 2. w ..." of wonderwords words in random order. 10 common words
appear 30 times each and every other word 3 times (6 and 1 when the length is below 4k); the
number of other words is the largest that fits. References = the 10 common words; 120 new
tokens; string_match_all. A worked example (10 common words x3, 20 others x1) comes first from
``EXAMPLE_MIN_LENGTH`` on. The pool (~8.5k distinct words) runs out around 64k-128k with
compact tokenizers: the list then stops short of the length (``meta["truncated"]``).

FWE: V = max(4, (L - 50) // 50) random coded words (6 lowercase letters); the word of rank k
appears int(n * k^-2 / zeta(2)) times (Zipf, alpha 2; n the largest that fits; words with 0
occurrences are absent), in random order, space separated. References = the 3 most frequent
words; 50 new tokens; string_match_all. ``meta["n"]`` records n so counts can be checked.

With ``split`` given, the reference words are drawn from that split's share of words.
"""

from __future__ import annotations

import math
import random
import string

from .haystack import prose_vocabulary
from .ruler_base import EXAMPLE_MIN_LENGTH, RulerSample, draw_in_split, largest_fitting
from .tokens import TokenCounter

CWE_MAX_NEW_TOKENS = 120
FWE_MAX_NEW_TOKENS = 50
ZETA_2 = math.pi ** 2 / 6


def _word_pool() -> list[str]:
    vocab = prose_vocabulary()
    return sorted(set(vocab["n"]) | set(vocab["a"]) | set(vocab["v"]))


# --- CWE -------------------------------------------------------------------------------------
def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe_texts(context: str) -> tuple[str, str]:
    template = ("Below is a numbered list of words. Some of them appear many more times than the "
                "others. Memorize the ones that appear most often.\n"
                f"{context}\nQuestion: What are the 10 most common words in the list above?")
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    return template, prefix


def _cwe_list(common: list[str], fc: int, others: list[str], fo: int, seed: int) -> list[str]:
    words = common * fc + others * fo
    random.Random(seed).shuffle(words)
    return words


def _cwe_example(rng: random.Random, pool: list[str]) -> str:
    picked = rng.sample(pool, 30)
    template, prefix = _cwe_texts(_numbered(_cwe_list(picked[:10], 3, picked[10:], 1,
                                                      rng.getrandbits(32))))
    return f"{template}{prefix} {_numbered(picked[:10])}\n\n"


def cwe_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
               haystack=None, split: str | None = None) -> RulerSample:
    pool = _word_pool()
    fc, fo = (30, 3) if length >= 4096 else (6, 1)
    example = _cwe_example(rng, pool) if length >= EXAMPLE_MIN_LENGTH else ""
    common: list[str] = []
    while len(common) < 10:
        common.append(draw_in_split(lambda: rng.choice(pool), split, avoid=common))
    others = [w for w in pool if w not in set(common)]
    rng.shuffle(others)
    seed = rng.getrandbits(32)

    def build(m: int) -> str:
        template, prefix = _cwe_texts(_numbered(_cwe_list(common, fc, others[:m], fo, seed)))
        return f"{example}{template}{prefix}"

    budget = length - CWE_MAX_NEW_TOKENS
    per_entry = counter.count(_numbered(others[:200])) / 200  # tokens of one "i. word"
    guess = int((budget - counter.count(build(0))) / (per_entry * fo))
    m = largest_fitting(build, counter, budget, max(0, guess), maximum=len(others))
    return RulerSample(task, length, build(m), common, CWE_MAX_NEW_TOKENS, "all",
                       _cwe_texts("")[1], [], {"common_freq": fc, "other_freq": fo,
                                               "other_words": m, "truncated": m == len(others)})


# --- FWE -------------------------------------------------------------------------------------
def fwe_counts(n: int, vocab: int) -> list[int]:
    """Occurrences of the words of rank 1..vocab: int(n * k^-2 / zeta(2))."""
    return [int(n * k ** -2 / ZETA_2) for k in range(1, vocab + 1)]


def _fwe_texts(context: str) -> tuple[str, str]:
    template = ("Read the following coded text and keep track of how often each coded word "
                "appears. Find the three coded words that appear most often.\n"
                f"{context}\nQuestion: Do not give any explanation. What are the three most "
                "frequently appearing coded words in the coded text above?")
    prefix = (" Answer: According to the coded text above, the three most frequently appearing "
              "words are:")
    return template, prefix


def fwe_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
               haystack=None, split: str | None = None) -> RulerSample:
    vocab = max(4, (length - 50) // 50)

    def coded() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(6))

    words: list[str] = []
    while len(words) < vocab:  # the top 3 carry the answer: drawn in the split
        words.append(draw_in_split(coded, split if len(words) < 3 else None, avoid=words))
    seed = rng.getrandbits(32)

    def build(n: int) -> str:
        text = [w for w, c in zip(words, fwe_counts(n, vocab)) for _ in range(c)]
        random.Random(seed).shuffle(text)
        template, prefix = _fwe_texts(" ".join(text))
        return f"{template}{prefix}"

    budget = length - FWE_MAX_NEW_TOKENS
    per_word = counter.count(" ".join(words[:50])) / min(50, vocab)
    guess = int((budget - counter.count(build(0))) / per_word)
    n = largest_fitting(build, counter, budget, max(60, guess), minimum=60)
    return RulerSample(task, length, build(n), words[:3], FWE_MAX_NEW_TOKENS, "all",
                       _fwe_texts("")[1], [], {"n": n, "vocab": vocab})
