"""RULER variable tracking (VT): follow one chain of assignments hidden in noise.

Chain (4 hops, 5 variables, names of 5 capital letters, a 5-digit value):
  VAR AAAAA = 12345.  VAR BBBBB = VAR AAAAA.  ...  VAR EEEEE = VAR DDDDD.
The statements keep chain order at sorted random positions among RULER's noise sentences.
Question: which variables are assigned the value; references = the 5 names; string_match_all;
30 new tokens. A worked example (same format, 10 noise sentences, answer given) comes first
when the length is at least ``EXAMPLE_MIN_LENGTH``. With ``split`` given, the asked variable
names are drawn from that split's share of names.
"""

from __future__ import annotations

import random
import string

from .ruler_base import (EXAMPLE_MIN_LENGTH, NOISE_SENTENCES, RulerSample, draw_in_split,
                         insert_at, largest_fitting, noise_stream, random_number, spans_of,
                         take_units, units_for)
from .tokens import TokenCounter

MAX_NEW_TOKENS = 30
HOPS = 4


def _chain(rng: random.Random, split: str | None) -> tuple[list[str], str, list[str]]:
    """(variable names, value, statements) of one chain."""
    def name() -> str:
        return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))

    names: list[str] = []
    while len(names) < HOPS + 1:
        names.append(draw_in_split(name, split, avoid=names))
    value = random_number(rng, 5)
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return names, value, statements


def _texts(context: str, value: str) -> tuple[str, str]:
    """(template, answer prefix)."""
    template = ("Memorize and track the chain of variable assignments hidden in the following "
                f"text.\n\n{context}\nQuestion: Find all variables that are assigned the value "
                f"{value} in the text above.")
    prefix = (" Answer: According to the chain of variable assignments in the text above, "
              f"{HOPS + 1} variables are assigned the value {value}, they are:")
    return template, prefix


def _example(rng: random.Random) -> str:
    names, value, statements = _chain(rng, None)
    noise = [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(10)]
    context = " ".join(insert_at(noise, statements, [0, 2, 4, 6, 8]))
    template, prefix = _texts(context, value)
    return f"{template}{prefix} {' '.join(names)}\n\n"


def vt_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
              haystack=None, split: str | None = None) -> RulerSample:
    example = _example(rng) if length >= EXAMPLE_MIN_LENGTH else ""
    names, value, statements = _chain(rng, split)
    budget = length - MAX_NEW_TOKENS
    units, counts = take_units(noise_stream(), counter, budget)
    fractions = sorted(rng.random() for _ in statements)

    def build(k: int) -> str:
        positions = [int(f * (k + 1)) for f in fractions]  # 0..k, chain order kept
        template, prefix = _texts(" ".join(insert_at(units[:k], statements, positions)), value)
        return f"{example}{template}{prefix}"

    fixed = counter.count(build(0))
    k = largest_fitting(build, counter, budget, units_for(counts, budget - fixed),
                        maximum=len(units))
    prompt = build(k)
    prefix = _texts("", value)[1]
    return RulerSample(task, length, prompt, names, MAX_NEW_TOKENS, "all", prefix,
                       spans_of(prompt, statements, len(example)), {"noise_units": k})
