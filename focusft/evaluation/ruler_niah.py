"""RULER needle-in-a-haystack tasks (8 variants).

Template (the answer prefix follows it; singular forms when one value is asked):
  Some special magic {v} are hidden within the following text. Make sure to memorize it. I will
  quiz you about the {v} afterwards.\\n{context}\\nWhat are all the special magic {v} for
  {query} mentioned in the provided text?
  prefix: " The special magic {v} for {query} mentioned in the provided text are"
Needle: "One of the special magic {v} for {key} is: {value}."  Keys: adjective-noun pairs
("brave-lantern") or UUIDs; values: 7-digit numbers or UUIDs.
Haystacks: "noise" = RULER's five fixed sentences repeated; "essay" = the given haystack's
sentences (books or procedural prose); "needle" = distractor needles with other keys.
Depths: one per needle, drawn without replacement from 40 evenly spaced percentages 0..100;
a needle at depth d goes before haystack unit round(d/100 * n_units). Needles are joined to the
haystack with " " (with "\\n" in the needle haystack, one needle per line).
References: the values of the queried keys; metric string_match_all; 128 new tokens.
With ``split`` given, queried values are drawn from that split's share of the value space.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .haystack import Haystack, ProceduralProse, prose_vocabulary
from .ruler_base import (RulerSample, draw_in_split, insert_at, largest_fitting, noise_stream,
                         random_number, random_uuid, spans_of, take_units, units_for)
from .tokens import TokenCounter


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # "noise" | "essay" | "needle"
    key: str  # "words" | "uuids"
    value: str  # "numbers" | "uuids"
    keys: int
    values_per_key: int
    queries: int


NIAH_TASKS = {
    "niah_single_1": NiahSpec("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": NiahSpec("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": NiahSpec("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", 4, 1, 4),
}
MAX_NEW_TOKENS = 128
DEPTHS = [round(i * 100 / 39, 2) for i in range(40)]


def _key_maker(kind: str, rng: random.Random):
    if kind == "uuids":
        return lambda: random_uuid(rng)
    vocab = prose_vocabulary()
    return lambda: f"{rng.choice(vocab['a'])}-{rng.choice(vocab['n'])}"


def _value_maker(kind: str, rng: random.Random):
    return (lambda: random_uuid(rng)) if kind == "uuids" else (lambda: random_number(rng))


def _needle(plural: str, key: str, value: str) -> str:
    return f"One of the special magic {plural} for {key} is: {value}."


def _join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _texts(plural: str, query: str, single: bool) -> tuple[str, str, str]:
    """(header, question, answer prefix) of the template."""
    header = (f"Some special magic {plural} are hidden within the following text. Make sure to "
              f"memorize it. I will quiz you about the {plural} afterwards.\n")
    if single:
        v = plural[:-1]
        return (header, f"\nWhat is the special magic {v} for {query} mentioned in the provided "
                f"text?", f" The special magic {v} for {query} mentioned in the provided text is")
    return (header, f"\nWhat are all the special magic {plural} for {query} mentioned in the "
            f"provided text?", f" The special magic {plural} for {query} mentioned in the "
            f"provided text are")


def _distractor_needles(plural: str, new_key, new_value, taken: set):
    while True:
        key = new_key()
        if key not in taken:
            taken.add(key)
            yield _needle(plural, key, new_value())


def niah_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
                haystack: Haystack | None = None, split: str | None = None) -> RulerSample:
    spec = NIAH_TASKS[task]
    plural = spec.value  # "numbers" | "uuids"
    new_key, new_value = _key_maker(spec.key, rng), _value_maker(spec.value, rng)
    keys: list[str] = []
    while len(keys) < spec.keys:
        key = new_key()
        if key not in keys:
            keys.append(key)
    queried = keys[:spec.queries]
    values = {k: [draw_in_split(new_value, split if k in queried else None)
                  for _ in range(spec.values_per_key)] for k in keys}
    needles = [_needle(plural, k, v) for k in keys for v in values[k]]
    rng.shuffle(needles)
    gold = {_needle(plural, k, v) for k in queried for v in values[k]}
    references = [v for k in queried for v in values[k]]
    header, question, prefix = _texts(plural, _join_keys(queried), len(references) == 1)

    if spec.haystack == "noise":
        stream, sep = noise_stream(), " "
    elif spec.haystack == "essay":
        stream, sep = (haystack or ProceduralProse()).sentences(rng), " "
    else:
        stream, sep = _distractor_needles(plural, new_key, new_value, set(keys)), "\n"
    budget = length - MAX_NEW_TOKENS
    units, counts = take_units(stream, counter, budget)
    depths = sorted(rng.sample(DEPTHS, len(needles)))

    def build(k: int) -> str:
        positions = [round(d / 100 * k) for d in depths]
        context = sep.join(insert_at(units[:k], needles, positions))
        return f"{header}{context}{question}{prefix}"

    fixed = counter.count(build(0))
    k = largest_fitting(build, counter, budget, units_for(counts, budget - fixed),
                        maximum=len(units))
    prompt = build(k)
    order = sorted(range(len(needles)), key=lambda i: round(depths[i] / 100 * k))
    spans = spans_of(prompt, [needles[i] for i in order], len(header))
    evidence = [span for i, span in zip(order, spans) if needles[i] in gold]
    return RulerSample(task, length, prompt, references, MAX_NEW_TOKENS, "all", prefix, evidence,
                       {"haystack_units": k, "depths": depths})
