"""RULER's 13 synthetic tasks, generated offline at a length in the model's tokenizer.

Contract: ``ruler_sample(task, length_tokens, tokenizer, rng, haystack, split=None,
prompts="focusft", frame_tokens=0)`` returns a ``RulerSample`` whose input (``frame_tokens`` of
chat template + prompt + answer prefix) plus ``max_new_tokens`` fits in ``length_tokens``
tokens of ``tokenizer`` with the largest haystack that does (``None`` counts whitespace words).
``prompts`` names the prompt set (``prompt_sets``: "focusft" or "lm-eval"). Generation continues
from the answer prefix; score continuations with ``scoring.ruler_score(sample.metric, ...)``.

  retrieval   niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery
              (ruler_niah.py)
  multi-hop   vt (ruler_vt.py)
  aggregation cwe, fwe (ruler_words.py)
  QA          qa_1, qa_2 (ruler_qa.py): SQuAD / HotpotQA cannot be had offline, so these use
              synthetic documents about invented people and towns.

``haystack`` (books or procedural prose, see haystack.py) feeds the "essay" NIAH variants;
the other tasks bring their own filler. ``split`` restricts the answers to that split's share
of the answer space (see splits.py), so samples of different splits never coincide.
"""

from __future__ import annotations

import random
from typing import Any

from focusft.evaluation.haystack import Haystack
from focusft.evaluation.ruler_base import RulerSample
from focusft.evaluation.ruler_niah import NIAH_TASKS, niah_sample
from focusft.evaluation.ruler_qa import qa_sample
from focusft.evaluation.ruler_vt import vt_sample
from focusft.evaluation.ruler_words import cwe_sample, fwe_sample
from focusft.evaluation.splits import check_split
from focusft.evaluation.tokens import as_counter, parse_length

__all__ = ["RULER_TASKS", "RulerSample", "ruler_sample", "ruler_samples"]

_BUILDERS = {**{t: niah_sample for t in NIAH_TASKS}, "vt": vt_sample, "cwe": cwe_sample,
             "fwe": fwe_sample, "qa_1": qa_sample, "qa_2": qa_sample}
RULER_TASKS = tuple(_BUILDERS)


def ruler_sample(task: str, length_tokens: int | str, tokenizer: Any = None,
                 rng: random.Random | None = None, haystack: Haystack | None = None,
                 split: str | None = None, prompts: str = "focusft",
                 frame_tokens: int = 0) -> RulerSample:
    """One sample of ``task`` at ``length_tokens`` (an int or a label such as "4k")."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown RULER task {task!r}; expected one of {', '.join(RULER_TASKS)}")
    check_split(split)
    length = parse_length(length_tokens)
    builder = _BUILDERS[task]
    return builder(task, length, as_counter(tokenizer), rng or random.Random(0), haystack, split,
                   prompts, frame_tokens)


def ruler_samples(task: str, length_tokens: int | str, n: int, seed: int, tokenizer: Any = None,
                  haystack: Haystack | None = None, split: str | None = None,
                  prompts: str = "focusft", frame_tokens: int = 0) -> list[RulerSample]:
    """``n`` samples from one ``random.Random(seed)`` stream; same arguments -> same samples."""
    rng, counter = random.Random(seed), as_counter(tokenizer)
    return [ruler_sample(task, length_tokens, counter, rng, haystack, split, prompts, frame_tokens)
            for _ in range(n)]
