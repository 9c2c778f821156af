"""RULER needle-in-a-haystack tasks (8 variants).

Wording (template with ``{type_needle_v}``, ``{context}``, ``{query}``; answer prefix; needle) comes
from the prompt set (``prompt_sets.RulerTexts``). When one value is asked (niah_single_*,
niah_multikey_*), the template and prefix take their singular form ("A special magic number
is hidden ..."), as RULER does; needles keep the plural ("One of the special magic numbers for
{key} is: {value}."). Keys: adjective-noun pairs ("brave-lantern") or UUIDs; values: 7-digit
numbers or UUIDs.
Haystacks, as RULER builds them:
  "noise"  the prompt set's noise paragraph (RULER: five fixed sentences) as one unit,
           repeated, units joined by "\n"; needles at random unit positions;
  "needle" distractor needles with other keys, one per line; needles at random positions;
  "essay"  the given haystack's sentences (books or procedural prose), joined by " "; needle i
           before sentence int(k * depth_i / 100), depths drawn without replacement from 40
           evenly spaced integer percentages 0..100.
References: the values of the queried keys; metric string_match_all; the prompt set's
max_new_tokens (128). With ``split`` given, queried values are drawn from that split's share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from focusft.evaluation.haystack import Haystack, ProceduralProse, prose_vocabulary
from focusft.evaluation.prompt_sets import join_prefix, ruler_texts
from focusft.evaluation.ruler_base import (
    RulerSample,
    context_start,
    draw_in_split,
    fill,
    insert_at,
    largest_fitting,
    random_number,
    random_uuid,
    repeat_stream,
    spans_of,
    take_units,
    units_for,
)
from focusft.evaluation.tokens import TokenCounter


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
DEPTHS = [int(round(i * 100 / 39)) for i in range(40)]


def _key_maker(kind: str, rng: random.Random):
    if kind == "uuids":
        return lambda: random_uuid(rng)
    vocab = prose_vocabulary()
    return lambda: f"{rng.choice(vocab['a'])}-{rng.choice(vocab['n'])}"


def _value_maker(kind: str, rng: random.Random):
    return (lambda: random_uuid(rng)) if kind == "uuids" else (lambda: random_number(rng))


def _join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _distractor_needles(needle, new_key, new_value, taken: set):
    while True:
        key = new_key()
        if key not in taken:
            taken.add(key)
            yield needle(key, new_value())


def niah_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
                haystack: Haystack | None = None, split: str | None = None,
                prompts: str = "focusft", frame_tokens: int = 0) -> RulerSample:
    spec, texts = NIAH_TASKS[task], ruler_texts(prompts)
    plural = spec.value  # "numbers" | "uuids"

    def needle(key: str, value: str) -> str:
        return fill(texts.needle, type_needle_v=plural, key=key, value=value)

    new_key, new_value = _key_maker(spec.key, rng), _value_maker(spec.value, rng)
    keys: list[str] = []
    while len(keys) < spec.keys:
        key = new_key()
        if key not in keys:
            keys.append(key)
    queried = keys[:spec.queries]
    values = {k: [draw_in_split(new_value, split if k in queried else None)
                  for _ in range(spec.values_per_key)] for k in keys}
    needles = [needle(k, v) for k in keys for v in values[k]]
    rng.shuffle(needles)
    gold = {needle(k, v) for k in queried for v in values[k]}
    references = [v for k in queried for v in values[k]]
    single = len(references) == 1
    template, prefix = texts.niah(single)
    fields = dict(type_needle_v=plural[:-1] if single else plural, query=_join_keys(queried))
    prefix = fill(prefix, **fields)

    if spec.haystack == "noise":
        stream, sep = repeat_stream(texts.repeat_noise), "\n"
    elif spec.haystack == "essay":
        stream, sep = (haystack or ProceduralProse()).sentences(rng), " "
    else:
        stream, sep = _distractor_needles(needle, new_key, new_value, set(keys)), "\n"
    new_tokens = texts.new_tokens(task)
    budget = length - new_tokens - frame_tokens
    units, counts = take_units(stream, counter, budget)
    if spec.haystack == "essay":
        depths = sorted(rng.sample(DEPTHS, len(needles)))
    else:  # RULER: random unit positions, drawn here as fractions of the haystack
        depths = sorted(rng.random() * 100 for _ in needles)

    def build(k: int) -> str:
        positions = [int(k * d / 100) for d in depths]
        context = sep.join(insert_at(units[:k], needles, positions))
        return fill(template, context=context, **fields)

    fixed = counter.count(join_prefix(build(0), prefix))
    k = largest_fitting(lambda m: join_prefix(build(m), prefix), counter, budget,
                        units_for(counts, budget - fixed), maximum=len(units))
    prompt = build(k)
    order = sorted(range(len(needles)), key=lambda i: int(k * depths[i] / 100))
    spans = spans_of(prompt, [needles[i] for i in order], context_start(template, **fields))
    evidence = [span for i, span in zip(order, spans) if needles[i] in gold]
    return RulerSample(task, length, prompt, references, new_tokens, "all", prefix, evidence,
                       {"haystack_units": k, "depths": depths})
