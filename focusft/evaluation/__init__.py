"""Offline long-context evaluation: BABILong, RULER and agentic generators, scorers, chat sets.

Everything is generated locally from a seed (no hub downloads): bAbI stories (babi.py) hidden
in book or procedural prose (haystack.py, babilong.py), RULER's 13 tasks (ruler*.py), tool-use
conversations over long documents (agentic.py), the benchmarks' scoring rules (scoring.py),
chat rows for training / evaluation (chat.py) and their rendering for generation with the
answer prefix (render.py). Wording comes from a prompt set (prompt_sets.py): focusft's own, or
lm-evaluation-harness's task files read at run time (lm_eval_tasks.py).

The generators are importable building blocks for training sets too: ``babi_samples`` (facts,
question, answer, supporting facts), ``babilong_sample`` (a sample at a token length, with
``target`` in the prompt set's answer format and ``answer`` the bAbI word), ``ruler_sample``
(prompt, answer prefix, references), ``make_chat_rows`` / ``agentic_rows`` (chat rows with
multi-token answers: ``messages[-1]`` is the training target).

Layer 4: imports `focusft.data`, `focusft.sources`, `focusft.core` and `focusft.errors`; the
generators (all but runner.py and inference.py, which load and run models) import only each other.
"""

from focusft.evaluation.agentic import AGENTIC_TASKS, agentic_rows
from focusft.evaluation.babi import BabiSample, babi_samples
from focusft.evaluation.babilong import (
    LongSample,
    babilong_sample,
    babilong_samples,
    context_budget,
)
from focusft.evaluation.chat import make_chat_rows
from focusft.evaluation.prompt_sets import PROMPT_SETS
from focusft.evaluation.render import generation_text
from focusft.evaluation.haystack import BookHaystack, ProceduralProse, make_haystack
from focusft.evaluation.ruler import RULER_TASKS, RulerSample, ruler_sample, ruler_samples
from focusft.evaluation.scoring import (
    babilong_accuracy,
    babilong_correct,
    ruler_score,
    string_match_all,
    string_match_part,
)
from focusft.evaluation.tokens import TokenCounter, format_length, parse_length

__all__ = [
    "AGENTIC_TASKS", "agentic_rows", "PROMPT_SETS", "generation_text", "BabiSample", "babi_samples", "LongSample", "babilong_sample", "babilong_samples",
    "context_budget", "make_chat_rows", "BookHaystack", "ProceduralProse", "make_haystack",
    "RULER_TASKS", "RulerSample", "ruler_sample", "ruler_samples", "babilong_accuracy",
    "babilong_correct", "ruler_score", "string_match_all", "string_match_part", "TokenCounter",
    "format_length", "parse_length",
]
