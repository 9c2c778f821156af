"""SFT tasks with multi-token answers for `focusft experiment --task real`: BABILong qa1-qa5.

BABILong rows: a bAbI story's facts hidden in haystack noise at a length in model tokens
(`focusft.evaluation.babilong.babilong_sample`, no worked examples), asked in a prompt whose
last line states the answer format, answered with one sentence:

    qa1  Where is P?                        The most recent location of P is L.
    qa2  Where is the O?                    The O is in the L.
    qa3  Where was the O before the L1?     Before the L1 the O was in the L2.
    qa4  What is d of the B? / ... d of?    The A is d of the B.
    qa5  (five question forms on a give)    G gave the O to R. / R received the O.

qa1-qa3 use BABILong's official answer formats; qa4 and qa5 (one word upstream) get a sentence
too, so that every answer is several tokens. The sentence names the question's own entities
besides the answer, so BABILong's label rule (`scoring.babilong_correct`: exactly one task
label not named in the question) still scores it, and a model cannot satisfy the loss by
emitting one memorised word.

Splits: bAbI samples are drawn from the split's own seed stream and kept only if their content
key (`chat.babi_key`) belongs to the split (`focusft.evaluation.splits`). Train and test never
share a sample.
"""

from __future__ import annotations

import random
import re
from typing import Any

from focusft.evaluation.babi import BabiSample

BABI_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
FORMATS = {
    "qa1": "The most recent location of PERSON is PLACE.",
    "qa2": "The OBJECT is in the PLACE.",
    "qa3": "Before the PLACE the OBJECT was in the PLACE.",
    "qa4": "The PLACE is DIRECTION of the PLACE.",
    "qa5": "PERSON gave the OBJECT to PERSON. (or: PERSON received the OBJECT.)",
}
_GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")


def sentence_answer(sample: BabiSample) -> str:
    """The one-sentence answer of a bAbI sample (see the module docstring)."""
    q, a = sample.question, sample.answer
    if sample.task == "qa1":
        return f"The most recent location of {q[len('Where is '):-1]} is {a}."
    if sample.task == "qa2":
        return f"The {q[len('Where is the '):-1]} is in the {a}."
    if sample.task == "qa3":
        obj, before = re.match(r"^Where was the (\w+) before the (\w+)\?$", q).groups()
        return f"Before the {before} the {obj} was in the {a}."
    if sample.task == "qa4":
        m = re.match(r"^What is (\w+) of the (\w+)\?$", q)
        if m:
            return f"The {a} is {m.group(1)} of the {m.group(2)}."
        place, direction = re.match(r"^What is the (\w+) (\w+) of\?$", q).groups()
        return f"The {place} is {direction} of the {a}."
    giver, obj, receiver = _GIVE.match(sample.facts[sample.supporting[0]]).groups()
    if q.startswith("Who received"):
        return f"{receiver} received the {obj}."
    if q == f"Who gave the {obj}?":
        return f"{giver} gave the {obj}."
    return f"{giver} gave the {obj} to {receiver}."


def babi_prompt(task: str, context: str, question: str) -> tuple[str, int]:
    """The SFT prompt and the character offset of ``context`` in it."""
    from focusft.evaluation.babilong_prompts import TASK_PROMPTS

    head = f"{TASK_PROMPTS[task].instruction}\n\n<context>\n"
    tail = (f"\n</context>\n\nQuestion: {question}\nAnswer with one sentence in this format: "
            f"{FORMATS[task]}")
    return head + context + tail, len(head)


def distinct_babi(task: str, n: int, seed: int, split: str) -> list[BabiSample]:
    """``n`` distinct bAbI samples of ``task`` whose content key belongs to ``split`` (a story
    stream of its own, apart from the evaluation rows')."""
    from focusft.evaluation.chat import distinct_babi as draw

    return draw(task, n, seed, split, stream="sft-babi")


def babi_rows(tasks, lengths, n: int, seed: int, split: str, tokenizer: Any = None,
              haystack=None) -> list[dict]:
    """``n`` rows per (task, length); the same bAbI samples at every length of a task."""
    from focusft.evaluation.babilong import babilong_sample
    from focusft.evaluation.haystack import make_haystack
    from focusft.evaluation.splits import split_seed
    from focusft.evaluation.tokens import as_counter

    hay = haystack if hasattr(haystack, "sentences") else make_haystack(haystack, seed)
    counter, rows = as_counter(tokenizer), []
    for task in tasks:
        samples = distinct_babi(task, n, seed, split)
        for length in lengths:
            rng = random.Random(split_seed(seed, split, "sft-babi-noise", task, length))
            for sample in samples:
                long = babilong_sample(sample, length, counter, hay, rng, few_shot=False)
                prompt, offset = babi_prompt(task, long.context, sample.question)
                start = long.prompt.index(long.context)
                evidence = [[a - start + offset, b - start + offset] for a, b in long.evidence_spans]
                rows.append(_row("babilong", task, length, split, prompt, sentence_answer(sample),
                                 sample.answer, sample.question, "babilong", evidence))
    return rows


SENTENCE_NEW_TOKENS = 32  # generation budget of a one-sentence answer (the evaluation rows' field)


def _row(suite, task, length, split, user, answer, target, question, metric, evidence) -> dict:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer}],
            "suite": suite, "task": task, "length": int(length), "split": split,
            "target": target, "question": question, "references": [target], "metric": metric,
            "evidence": evidence, "answer_prefix": "", "max_new_tokens": SENTENCE_NEW_TOKENS}

