"""Shared pieces of the RULER tasks: the sample type, length fitting, split-aware drawing.

Contract:
  ``RulerSample.prompt`` is the filled task template (the model's input); ``answer_prefix`` is
  the answer prefix that generation starts from (after the chat template's assistant header,
  or joined to the prompt by ``prompt_sets.join_prefix`` without a chat template: ``text``).
  ``evidence_spans`` are character spans in ``prompt`` of what the answer is read from (needles,
  chain statements, gold documents; empty for CWE/FWE, whose evidence is the whole list).
  Length rule (RULER counts the whole input): the haystack is the largest one with
  ``frame_tokens + tokens(text) + max_new_tokens <= length``, ``frame_tokens`` being what the
  chat template adds around the text (0 without one).

``largest_fitting(build, counter, budget, guess)`` finds that size: ``build(m)`` must render the
prompt for haystack size ``m`` deterministically and grow with ``m``; we count whole prompts,
starting from a guess made from per-unit counts, then bisect, so a 128k prompt is tokenized
a handful of times, not once per unit.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable

from focusft.evaluation.prompt_sets import join_prefix
from focusft.evaluation.splits import in_split
from focusft.evaluation.tokens import TokenCounter

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass
class RulerSample:
    task: str
    length: int
    prompt: str  # the filled template, without the answer prefix
    references: list[str]
    max_new_tokens: int
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    answer_prefix: str = ""
    evidence_spans: list[tuple[int, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The input without a chat template: prompt, then the answer prefix."""
        return join_prefix(self.prompt, self.answer_prefix)


def largest_fitting(build: Callable[[int], str], counter: TokenCounter, budget: int, guess: int,
                    minimum: int = 0, maximum: int | None = None) -> int:
    """Largest m in [minimum, maximum] with counter.count(build(m)) <= budget."""
    ok, bad, m = None, None, max(minimum, guess)
    if maximum is not None:
        m = min(m, maximum)
    for _ in range(60):
        used = counter.count(build(m))
        if used <= budget:
            ok = m
            if used == budget or m == maximum:
                return m
        else:
            bad = m
            if m == minimum:
                raise ValueError(f"even the smallest prompt needs {used} tokens > budget {budget}")
        if ok is not None and bad is not None:
            if bad - ok <= 1:
                return ok
            m = (ok + bad) // 2
        elif bad is None:  # still fits: grow in proportion to the room left
            m = m + max(1, int(m * (budget - used) / max(used, 1)))
        else:  # never fitted yet: shrink in proportion
            m = max(minimum, min(m - 1, int(m * budget / used)))
        if maximum is not None:
            m = min(m, maximum)
    if ok is None:
        raise ValueError("could not fit the prompt in the budget")
    return ok


def take_units(stream, counter: TokenCounter, need: int, batch: int = 64):
    """Units from ``stream`` with their token counts, until the counts sum to ``need`` or more."""
    units, counts, total = [], [], 0
    while total < need:
        chunk = [next(stream) for _ in range(batch)]
        sizes = counter.count_many(chunk)
        units += chunk
        counts += sizes
        total += sum(sizes)
    return units, counts


def units_for(counts: list[int], room: int) -> int:
    """How many leading units fit in ``room`` tokens by their own counts (a fitting guess)."""
    total = 0
    for i, n in enumerate(counts):
        total += n
        if total > room:
            return i
    return len(counts)


def repeat_stream(unit: str):
    while True:
        yield unit


def fill(template: str, **fields: str) -> str:
    """``{name}`` placeholders replaced in one pass (values are not re-scanned: books may hold
    braces)."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def context_start(template: str, **fields: str) -> int:
    """Character offset of ``{context}`` in the filled ``template``."""
    return len(fill(template.split("{context}")[0], **fields))


def draw_in_split(draw: Callable[[], str], split: str | None, avoid=()) -> str:
    """Redraw until the value belongs to ``split`` (answers never cross splits) and is new."""
    for _ in range(100_000):
        value = draw()
        if value not in avoid and in_split(value, split):
            return value
    raise RuntimeError("value space exhausted while drawing in split")


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def spans_of(prompt: str, pieces: list[str], start: int = 0) -> list[tuple[int, int]]:
    """Character spans of ``pieces`` found in order in ``prompt`` from ``start`` on."""
    spans = []
    for piece in pieces:
        at = prompt.index(piece, start)
        spans.append((at, at + len(piece)))
        start = at + len(piece)
    return spans


def insert_at(units: list[str], items: list[str], positions: list[int]) -> list[str]:
    """Insert ``items`` (in order) before units[positions[i]] (len(units) = the end)."""
    out, j = [], 0
    order = sorted(range(len(items)), key=lambda i: positions[i])
    for u in range(len(units) + 1):
        while j < len(order) and positions[order[j]] == u:
            out.append(items[order[j]])
            j += 1
        if u < len(units):
            out.append(units[u])
    return out
