"""RULER variable tracking (VT): follow one chain of assignments hidden in noise.

Chain (4 hops, 5 variables, names of 5 capital letters, a 5-digit value):
  VAR AAAAA = 12345.  VAR BBBBB = VAR AAAAA.  ...  VAR EEEEE = VAR DDDDD.
Noise, as in RULER: the prompt set's noise paragraph as one unit, repeated, units joined by
"\\n"; the statements keep chain order at sorted random unit positions. Question: which
variables are assigned the value; references = the 5 names; string_match_all; the prompt set's
max_new_tokens (30). One worked example comes first at every length, as in RULER: a chain in
``EXAMPLE_UNITS`` noise units, the answer prefix and the names, then a blank line. With
``split`` given, the asked variable names are drawn from that split's share of names.
"""

from __future__ import annotations

import random
import string

from focusft.evaluation.prompt_sets import join_prefix, ruler_texts
from focusft.evaluation.ruler_base import (
    RulerSample,
    context_start,
    draw_in_split,
    fill,
    insert_at,
    largest_fitting,
    random_number,
    repeat_stream,
    spans_of,
    take_units,
    units_for,
)
from focusft.evaluation.tokens import TokenCounter

HOPS = 4
EXAMPLE_UNITS = 5


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


def _context(noise: list[str], statements: list[str], fractions: list[float]) -> str:
    positions = [int(f * (len(noise) + 1)) for f in fractions]  # 0..k, chain order kept
    return "\n".join(insert_at(noise, statements, positions))


def _example(rng: random.Random, texts) -> str:
    names, value, statements = _chain(rng, None)
    fields = dict(query=value, num_v=str(HOPS + 1))
    noise = [texts.repeat_noise] * EXAMPLE_UNITS
    context = _context(noise, statements, sorted(rng.random() for _ in statements))
    text = join_prefix(fill(texts.vt_template, context=context, **fields),
                       fill(texts.vt_prefix, **fields))
    return f"{text} {' '.join(names)}\n\n"


def vt_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
              haystack=None, split: str | None = None, prompts: str = "focusft",
              frame_tokens: int = 0) -> RulerSample:
    texts = ruler_texts(prompts)
    example = _example(rng, texts)
    names, value, statements = _chain(rng, split)
    fields = dict(query=value, num_v=str(HOPS + 1))
    prefix = fill(texts.vt_prefix, **fields)
    new_tokens = texts.new_tokens(task)
    budget = length - new_tokens - frame_tokens
    units, counts = take_units(repeat_stream(texts.repeat_noise), counter, budget)
    fractions = sorted(rng.random() for _ in statements)

    def build(k: int) -> str:
        context = _context(units[:k], statements, fractions)
        return example + fill(texts.vt_template, context=context, **fields)

    fixed = counter.count(join_prefix(build(0), prefix))
    k = largest_fitting(lambda m: join_prefix(build(m), prefix), counter, budget,
                        units_for(counts, budget - fixed), maximum=len(units))
    prompt = build(k)
    start = len(example) + context_start(texts.vt_template, **fields)
    return RulerSample(task, length, prompt, names, new_tokens, "all", prefix,
                       spans_of(prompt, statements, start), {"noise_units": k})
