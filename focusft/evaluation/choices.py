"""Closed answer sets: the candidate answers a row can be scored against by likelihood.

Contract: ``row_choices(row)`` returns ``(choices, gold)`` - every candidate answer rendered in
the format the row's assistant turn uses (the training answer format), and the index of the
row's own answer among them - or ``None`` when the row's task has no closed answer set.

    BABILong qa1-qa4   the bAbI places: bathroom, bedroom, garden, hallway, kitchen, office
    BABILong qa5       the objects (apple, football, milk) when the answer is an object, else
                       the qa5 people (Bill, Fred, Jeff, Mary)
    agentic compare    the two people the question names ("Who was born earlier, X or Y?")
    agentic lookup,    open vocabularies (invented words, numbers): None
    RULER

The candidate set is the task's whole vocabulary, not only what the story mentions (as
BABILong's label set is). Each candidate is the row's answer with its answer word replaced,
so a sentence answer stays a sentence:

>>> row = {"suite": "babilong", "task": "qa1", "target": "kitchen",
...        "messages": [{"role": "user", "content": "..."},
...                     {"role": "assistant", "content": "The most recent location of Mary is kitchen."}]}
>>> choices, gold = row_choices(row)
>>> choices[0], gold, choices[gold]
('The most recent location of Mary is bathroom.', 4, 'The most recent location of Mary is kitchen.')
>>> row_choices({**row, "messages": [row["messages"][0], {"role": "assistant", "content": "kitchen"}]})[0][:2]
['bathroom', 'bedroom']
>>> row_choices({"suite": "ruler", "task": "vt", "target": "X", "messages": []}) is None
True
"""

from __future__ import annotations

import re

from focusft.evaluation.babi import OBJECTS, PLACES, QA5_PEOPLE

_COMPARE = re.compile(r"^Who was born earlier, (.+) or (.+)\?$")


def vocabulary(row: dict) -> tuple[str, ...] | None:
    """The closed answer vocabulary of a row's task, or None (see the module docstring)."""
    task = row.get("task")
    if row.get("suite") == "babilong":
        if task == "qa5":
            return OBJECTS if row["target"] in OBJECTS else QA5_PEOPLE
        return PLACES if task in ("qa1", "qa2", "qa3", "qa4") else None
    if row.get("suite") == "agentic" and task == "compare":
        match = _COMPARE.match(row["question"])
        return match.groups() if match else None
    return None


def substitute(answer: str, word: str, replacement: str) -> str:
    """``answer`` with its one whole-word occurrence of ``word`` replaced.

    >>> substitute("Before the kitchen the milk was in the office.", "office", "garden")
    'Before the kitchen the milk was in the garden.'
    """
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")
    found = pattern.findall(answer)
    if len(found) != 1:
        raise ValueError(f"the answer {answer!r} names {word!r} {len(found)} times, expected once")
    return pattern.sub(lambda _: replacement, answer)


def row_choices(row: dict) -> tuple[list[str], int] | None:
    """(candidate answers in the row's answer format, index of the gold one), or None."""
    words = vocabulary(row)
    if words is None:
        return None
    answer, target = row["messages"][-1]["content"], row["target"]
    if target not in words:
        raise ValueError(f"{row['task']}: the answer {target!r} is outside the task's "
                         f"vocabulary {list(words)}")
    return [substitute(answer, target, w) for w in words], list(words).index(target)
