"""Offline long-context evaluation: BABILong and RULER generators, scorers, chat-format sets.

Everything is generated locally from a seed (no hub downloads): bAbI stories (babi.py) hidden
in book or procedural prose (haystack.py, babilong.py), RULER's 13 tasks (ruler*.py), the
benchmarks' scoring rules (scoring.py) and chat rows for training / evaluation (chat.py).
"""

from .babi import BabiSample, babi_samples
from .babilong import LongSample, babilong_sample, babilong_samples, context_budget
from .chat import make_chat_rows
from .haystack import BookHaystack, ProceduralProse, make_haystack
from .ruler import RULER_TASKS, RulerSample, ruler_sample, ruler_samples
from .scoring import (babilong_accuracy, babilong_correct, ruler_score, string_match_all,
                      string_match_part)
from .tokens import TokenCounter, format_length, parse_length

__all__ = [
    "BabiSample", "babi_samples", "LongSample", "babilong_sample", "babilong_samples",
    "context_budget", "make_chat_rows", "BookHaystack", "ProceduralProse", "make_haystack",
    "RULER_TASKS", "RulerSample", "ruler_sample", "ruler_samples", "babilong_accuracy",
    "babilong_correct", "ruler_score", "string_match_all", "string_match_part", "TokenCounter",
    "format_length", "parse_length",
]
