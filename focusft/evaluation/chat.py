"""Long-context training / evaluation sets as chat rows.

Contract: ``make_chat_rows(suite, tasks, lengths, n, seed, split, tokenizer, haystack, few_shot,
prompts, chat_template)`` returns ``n`` rows per (task, length), each

  {"messages": [({"role": "system", ...},) {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer}],
   "suite", "task", "length" (int tokens, 0 = "0k"), "split", "target", "question",
   "references" (list[str]), "metric" ("babilong" | "all" | "part"),
   "answer_prefix", "max_new_tokens", "prompts",
   "evidence": [[start, end], ...]}   # character spans in the user content

Lengths: BABILong labels are 1000-based ("1k" = 1000), RULER's 1024-based ("4k" = 4096);
RULER lengths count the chat template's tokens too when ``chat_template`` (``render.py``).
BABILong: user = the BABILong prompt of the prompt set (lm-eval's adds a system message, its
description), answer = the target in the format the prompt asks for, ``target`` = the bAbI
answer word the scorer looks for. The same bAbI samples are used at every length of a task (as
upstream BABILong does), only the noise differs, so accuracy-vs-length curves compare like with
like. RULER: user = the template without the answer prefix, answer = the prefix followed by the
references (``answer_text``); evidence = needles / chain / gold documents. Generation starts
from ``answer_prefix`` (``render.generation_text``).

Splits never share a sample: each split draws from its own seed stream (``split_seed``) and a
candidate is rejected unless its content key - (task, facts, question) for BABILong, the
references for RULER - belongs to the split (``splits.split_of``). Duplicates within a split are
rejected too. Same arguments -> same rows.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from focusft.evaluation.babi import BabiSample, babi_stories
from focusft.evaluation.babilong import babilong_sample
from focusft.evaluation.haystack import Haystack, make_haystack
from focusft.evaluation.prompt_sets import check_prompt_set
from focusft.evaluation.render import frame_tokens
from focusft.evaluation.ruler import RULER_TASKS, ruler_sample
from focusft.evaluation.splits import check_split, in_split, split_seed
from focusft.evaluation.tokens import SUITE_KILO, as_counter, parse_length

SUITES = ("babilong", "ruler")
BABILONG_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
_ATTEMPTS_PER_ROW = 200  # rejection budget before we call a sample space exhausted


def babi_key(sample: BabiSample) -> str:
    """Content key of a bAbI sample: what two splits must never share."""
    return "\x1e".join([sample.task, "\x1f".join(sample.facts), sample.question])


def answer_text(task: str, references: list[str]) -> str:
    """RULER references as a training answer: VT's names space separated (RULER's example
    format), CWE's words numbered, the others comma separated."""
    if task == "vt":
        return " ".join(references)
    if task == "cwe":
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(references))
    return ", ".join(references)


def _row(suite: str, task: str, length: int, split: str | None, user: str, answer: str,
         target: str, question: str, references: list[str], metric: str,
         evidence: Iterable[tuple[int, int]], answer_prefix: str = "", max_new_tokens: int = 20,
         system: str = "", prompts: str = "focusft") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {
        "messages": messages,
        "suite": suite, "task": task, "length": length, "split": split or "",
        "target": target, "question": question, "references": list(references),
        "metric": metric, "answer_prefix": answer_prefix, "max_new_tokens": int(max_new_tokens),
        "prompts": prompts, "evidence": [[int(a), int(b)] for a, b in evidence],
    }


def distinct_babi(task: str, n: int, seed: int, split: str | None,
                  stream: str = "babilong") -> list[BabiSample]:
    """``n`` distinct bAbI samples of ``task`` whose content key belongs to ``split``, drawn from
    the story stream seeded by (seed, split, stream, task)."""
    stream = babi_stories(task, random.Random(split_seed(seed, split, stream, task)))
    picked, seen = [], set()
    for _ in range(_ATTEMPTS_PER_ROW * n + 1000):
        if len(picked) == n:
            return picked
        sample = next(stream)
        key = babi_key(sample)
        if key not in seen and in_split(key, split):
            seen.add(key)
            picked.append(sample)
    raise ValueError(f"{task}: could only find {len(picked)} distinct samples for split "
                     f"{split!r}; ask for fewer")


def _babilong_rows(task, lengths, n, seed, split, counter, haystack, few_shot,
                   prompts) -> list[dict]:
    samples = distinct_babi(task, n, seed, split)
    rows = []
    for length in lengths:
        rng = random.Random(split_seed(seed, split, "babilong-noise", task, length))
        for sample in samples:
            s = babilong_sample(sample, length, counter, haystack, rng, few_shot, prompts)
            rows.append(_row("babilong", task, length, split, s.prompt, s.target, s.answer,
                             s.question, [s.answer], "babilong", s.evidence_spans, "",
                             s.max_new_tokens, s.system, prompts))
    return rows


def _ruler_rows(task, length, n, seed, split, counter, haystack, prompts,
                frame) -> list[dict]:
    rng = random.Random(split_seed(seed, split, "ruler", task, length))
    rows, seen = [], set()
    for _ in range(_ATTEMPTS_PER_ROW * n + 100):
        if len(rows) == n:
            return rows
        s = ruler_sample(task, length, counter, rng, haystack, split, prompts, frame)
        key = "\x1e".join([task, *s.references])
        if key in seen:
            continue
        seen.add(key)
        answer = f"{s.answer_prefix} {answer_text(task, s.references)}"
        rows.append(_row("ruler", task, length, split, s.prompt, answer, ", ".join(s.references),
                         "", s.references, s.metric, s.evidence_spans, s.answer_prefix,
                         s.max_new_tokens, "", prompts))
    raise ValueError(f"{task}: could not find {n} distinct samples")


def make_chat_rows(suite: str, tasks: Iterable[str], lengths: Iterable[int | str], n: int,
                   seed: int, split: str | None = "train", tokenizer: Any = None,
                   haystack: Haystack | str | None = None, few_shot: bool = True,
                   prompts: str = "focusft", chat_template: bool = True) -> list[dict]:
    """Rows for every (task, length), ``n`` each, in task-major order (see module docstring)."""
    check_split(split)
    check_prompt_set(prompts)
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
    known = BABILONG_TASKS if suite == "babilong" else RULER_TASKS
    tasks, lengths = list(tasks), [parse_length(x, SUITE_KILO[suite]) for x in lengths]
    for task in tasks:
        if task not in known:
            raise ValueError(f"unknown {suite} task {task!r}; expected some of {', '.join(known)}")
    hay = haystack if hasattr(haystack, "sentences") else make_haystack(haystack, seed)
    counter = as_counter(tokenizer)
    frame = frame_tokens(getattr(counter, "tokenizer", None), chat_template)
    rows = []
    for task in tasks:
        if suite == "babilong":
            rows += _babilong_rows(task, lengths, n, seed, split, counter, hay, few_shot, prompts)
        else:
            for length in lengths:
                rows += _ruler_rows(task, length, n, seed, split, counter, hay, prompts, frame)
    return rows
