"""RULER question answering over many documents, with synthetic documents.

Upstream RULER draws qa_1 from SQuAD and qa_2 from HotpotQA. Neither can be had offline, so we
build a synthetic equivalent: short encyclopedia-style documents about invented people and
towns (names from random syllables, so a model cannot know the answer in advance).

  person document: birth town, employer, pet's name.
  town document:   river it lies on, founder.
  qa_1 (single hop, SQuAD-like): one gold person document; the question asks one of its three
       facts. Distractors: other person documents.
  qa_2 (two hops, HotpotQA-like): a gold person document and the gold document of the town
       that person was born in; the question asks the river or the founder of "the town where
       {person} was born". Distractors: other person and town documents.
Documents are rendered with the prompt set's document format ("Document {i}:\\n{document}",
numbered after placement) and separated by blank lines; gold documents sit at random positions
among as many distractors as fit. References = [the answer]; string_match_part; the prompt
set's max_new_tokens (32). Names are unique within a sample; with
``split`` given, the answer name is drawn from that split's share of names.
"""

from __future__ import annotations

import random

from focusft.evaluation.prompt_sets import join_prefix, ruler_texts
from focusft.evaluation.ruler_base import (
    RulerSample,
    draw_in_split,
    fill,
    largest_fitting,
    spans_of,
)
from focusft.evaluation.tokens import TokenCounter

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s",
           "st", "t", "th", "v", "w", "z", "sk", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rk", "m", "v")
_TOWN_ENDS = ("ford", "mere", "wick", "holm", "dale", "port", "stead", "by", "ton", "haven")
OCCUPATIONS = ("carpenter", "weaver", "surveyor", "clockmaker", "ferryman", "potter",
               "cartographer", "glassblower", "bookbinder", "beekeeper")
PETS = ("dog", "cat", "parrot", "goat", "horse", "tortoise")


class _Names:
    """Invented, capitalised names, never repeated within one sample."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _syllables(self, n: int) -> str:
        rng = self.rng
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(n))

    def _unique(self, draw, split: str | None = None) -> str:
        name = draw_in_split(draw, split, avoid=self.used)
        self.used.add(name)
        return name

    def word(self, split: str | None = None) -> str:
        return self._unique(lambda: self._syllables(self.rng.randint(2, 3)).capitalize(), split)

    def person(self, split: str | None = None) -> str:
        return self._unique(lambda: (self._syllables(2).capitalize() + " "
                                     + self._syllables(self.rng.randint(1, 2)).capitalize()), split)

    def town(self, split: str | None = None) -> str:
        return self._unique(lambda: (self._syllables(self.rng.randint(1, 2))
                                     + self.rng.choice(_TOWN_ENDS)).capitalize(), split)


def _person_doc(rng: random.Random, names: _Names, town: str, split: str | None = None,
                asked: str | None = None) -> tuple[str, dict]:
    """A person document and its facts; the ``asked`` fact's answer is drawn in ``split``."""
    facts = {
        "person": names.person(),
        "town": town,
        "employer": names.word(split if asked == "employer" else None),
        "pet": names.word(split if asked == "pet" else None),
        "occupation": rng.choice(OCCUPATIONS),
        "animal": rng.choice(PETS),
    }
    first = facts["person"].split()[0]
    doc = (f"{facts['person']} is a {facts['occupation']} who was born in the town of {town}. "
           f"Early in life, {first} went to work for the {facts['employer']} company, whose "
           f"workers were known for their patience. Friends of {first} still "
           f"remember a pet {facts['animal']} named {facts['pet']}.")
    return doc, facts


def _town_doc(rng: random.Random, names: _Names, town: str, split: str | None = None,
              asked: str | None = None) -> tuple[str, dict]:
    facts = {"town": town, "river": names.word(split if asked == "river" else None),
             "founder": names.person(split if asked == "founder" else None)}
    doc = (f"{town} is a small town on the banks of the {facts['river']} river. It was founded "
           f"by {facts['founder']}, and its market is still held there every week.")
    return doc, facts


def _qa1_gold(rng: random.Random, names: _Names, split: str | None):
    asked = rng.choice(("town", "employer", "pet"))
    town = names.town(split if asked == "town" else None)
    doc, f = _person_doc(rng, names, town, split, asked)
    question = {
        "town": f"In which town was {f['person']} born?",
        "employer": f"Which company did {f['person']} work for?",
        "pet": f"What was the name of the pet {f['animal']} of {f['person']}?",
    }[asked]
    return [doc], question, f[asked]


def _qa2_gold(rng: random.Random, names: _Names, split: str | None):
    asked = rng.choice(("river", "founder"))
    town = names.town()
    town_doc, t = _town_doc(rng, names, town, split, asked)
    person_doc, p = _person_doc(rng, names, town)
    question = {
        "river": f"On which river lies the town where {p['person']} was born?",
        "founder": f"Who founded the town where {p['person']} was born?",
    }[asked]
    return [person_doc, town_doc], question, t[asked]


def _distractors(rng: random.Random, names: _Names, towns_too: bool):
    """Endless distractor documents (person documents, and town documents for qa_2)."""
    while True:
        if towns_too and rng.random() < 0.5:
            yield _town_doc(rng, names, names.town())[0]
        else:
            yield _person_doc(rng, names, names.town())[0]


def qa_sample(task: str, length: int, counter: TokenCounter, rng: random.Random,
              haystack=None, split: str | None = None, prompts: str = "focusft",
              frame_tokens: int = 0) -> RulerSample:
    texts = ruler_texts(prompts)
    names = _Names(rng)
    gold_fn = _qa1_gold if task == "qa_1" else _qa2_gold
    gold, question, answer = gold_fn(rng, names, split)
    new_tokens = texts.new_tokens(task)
    budget = length - new_tokens - frame_tokens
    stream = _distractors(rng, names, towns_too=task == "qa_2")
    first = [next(stream) for _ in range(8)]
    per_doc = sum(counter.count_many(first)) / len(first) + 6  # + "Document i:" header
    fractions = [rng.random() for _ in gold]
    pool = first + [next(stream) for _ in range(max(0, int(budget / per_doc * 1.5) - 8))]

    def build(m: int) -> str:
        docs = list(pool[:m])
        for doc, f in sorted(zip(gold, fractions), key=lambda x: x[1]):
            docs.insert(int(f * (len(docs) + 1)), doc)
        body = "\n\n".join(fill(texts.qa_document, i=str(i + 1), document=d)
                            for i, d in enumerate(docs))
        return fill(texts.qa_template, context=body, query=question)

    full = lambda m: join_prefix(build(m), texts.qa_prefix)  # noqa: E731
    fixed = counter.count(full(0))
    m = largest_fitting(full, counter, budget, max(0, int((budget - fixed) / per_doc)),
                        maximum=len(pool))
    prompt = build(m)
    evidence = sorted(spans_of(prompt, [d], 0)[0] for d in gold)
    return RulerSample(task, length, prompt, [answer], new_tokens, "part", texts.qa_prefix,
                       evidence, {"documents": m + len(gold)})
