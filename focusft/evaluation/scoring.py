"""Scorers: the BABILong leaderboard rule and RULER's string matches.

BABILong (qa1-qa5), per sample:
  out = output.lower(); keep the text before the first "."; then before "<context>" and before
  "<example>" (a model echoing the prompt earns nothing);
  found = {label in LABELS[task] : label in out} - {label : label in question.lower()};
  correct  iff  target.lower() in found and len(found) == 1.
  Accuracy = 100 x mean(correct).

RULER, per sample: pred -> strip, every control character (U+0000..U+001F) -> "\n", strip.
  string_match_all  = mean over samples of (references found / references), x 100  (NIAH, VT,
                      CWE, FWE);
  string_match_part = mean over samples of (1 if any reference is found), x 100       (QA).
  "found" = case-insensitive substring.

Per sample (``sample_score``): 1/0 for BABILong and exact match, the fraction of references
found (``all``) or 1/0 (``part``) for RULER. ``normalized_exact_match``: lowercase, articles and
punctuation removed, whitespace collapsed (SQuAD's normalisation), equal strings.
Intervals (``wilson_interval``): the Wilson score interval at 95 % for a mean of n per-sample
scores in [0, 1] (exact for 0/1 scores; for RULER's partial credit the mean is treated as a
proportion of n, a common approximation).
"""

from __future__ import annotations

import math
import re
import string
from typing import Sequence

_ROOMS = frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"})
LABELS = {
    "qa1": _ROOMS, "qa2": _ROOMS, "qa3": _ROOMS, "qa4": _ROOMS,
    "qa5": frozenset({"bill", "fred", "jeff", "mary", "apple", "football", "milk"}),
}
_CONTROL = re.compile(r"[\x00-\x1f]")


def _answer_part(output: str) -> str:
    out = output.lower().split(".")[0]
    return out.split("<context>")[0].split("<example>")[0]


def babilong_labels_found(output: str, question: str, task: str) -> set[str]:
    """Task labels in the answer part of ``output`` that the question does not itself name."""
    if task not in LABELS:
        raise ValueError(f"no BABILong labels for task {task!r}; known: {', '.join(LABELS)}")
    out, asked = _answer_part(output), question.lower()
    return {lab for lab in LABELS[task] if lab in out} - {lab for lab in LABELS[task] if lab in asked}


def babilong_correct(output: str, target: str, question: str, task: str) -> bool:
    """The leaderboard rule: the target is the one and only task label found."""
    found = babilong_labels_found(output, question, task)
    return target.lower() in found and len(found) == 1


def babilong_accuracy(outputs: Sequence[str], targets: Sequence[str], questions: Sequence[str],
                      task: str) -> float:
    """100 x mean of ``babilong_correct`` (0.0 for no samples)."""
    hits = [babilong_correct(o, t, q, task) for o, t, q in zip(outputs, targets, questions,
                                                               strict=True)]
    return 100.0 * sum(hits) / len(hits) if hits else 0.0


def normalize_prediction(pred: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def _found(pred: str, refs: Sequence[str]) -> list[bool]:
    low = normalize_prediction(pred).lower()
    return [ref.lower() in low for ref in refs]


def string_match_all(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """Mean fraction of references found per sample, x 100."""
    scores = [sum(_found(p, refs)) / len(refs) for p, refs in zip(preds, refs_list, strict=True)]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def string_match_part(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """Share of samples in which at least one reference is found, x 100."""
    scores = [float(any(_found(p, refs))) for p, refs in zip(preds, refs_list, strict=True)]
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def ruler_score(metric: str, preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> float:
    """Dispatch on a RulerSample's ``metric`` ("all" or "part")."""
    if metric == "all":
        return string_match_all(preds, refs_list)
    if metric == "part":
        return string_match_part(preds, refs_list)
    raise ValueError(f"unknown RULER metric {metric!r}; expected 'all' or 'part'")


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalized_exact_match(output: str, references: Sequence[str]) -> bool:
    """The first line of ``output`` equals one reference after ``normalize_answer``."""
    lines = normalize_prediction(output).splitlines()
    got = normalize_answer(lines[0] if lines else "")
    return any(got == normalize_answer(r) for r in references)


def sample_score(metric: str, output: str, references: Sequence[str], question: str = "",
                 task: str = "") -> float:
    """One sample's score in [0, 1] under ``metric`` ("babilong", "all", "part", "exact")."""
    if metric == "babilong":
        return float(babilong_correct(output, references[0], question, task))
    if metric == "exact":
        return float(normalized_exact_match(output, references))
    found = _found(output, references)
    if metric == "all":
        return sum(found) / len(found)
    if metric == "part":
        return float(any(found))
    raise ValueError(f"unknown metric {metric!r}")


def wilson_interval(mean: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval (as fractions) for a mean of ``n`` scores in [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, mean))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
