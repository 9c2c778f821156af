r"""BABILong: bAbI facts hidden in distractor prose, at a target length in model tokens.

Contract, per sample (bAbI facts F_1..F_m in story order, a question, a length L):

  budget(L) = 0                          for L = 0 ("0k": the facts alone, no noise)
            = L - 300                    for L >= 1000 (BABILong's room for the prompt; its
                                         lengths are 1000-based: "1k" = 1000, budget 700)
            = L - ceil(L * 300 / 1000)   for 0 < L < 1000 (small models: the same 30 % share)
  noise     = haystack sentences, each tokenized once, taken until their summed count plus
              the facts' reaches the budget; the last sentence is cut (word by word) so the sum
              does not exceed it. Joining can merge tokens across sentence boundaries, so the
              joined context is then counted once and, if it misses [budget - max(10, budget //
              200), budget], the sum target is rescaled by the measured ratio and the noise
              re-taken (at most 4 rounds; the noise is a prefix of the same sentence stream).
  placement = positions sorted(randrange(n_noise + 1) for each fact) (with replacement); facts
              keep story order; a fact at slot i goes just before noise sentence i (slot
              n_noise = the end).
  context   = all pieces joined by single spaces.
  prompt    = the prompt set's assembly (``babilong_prompts.BabilongTask``): focusft's
              "{instruction}\n\n{examples}\n\n{post_prompt}\n\n<context>\n{context}\n</context>"
              "\n\nQuestion: {question}" (empty sections, e.g. examples with few_shot=False, are
              left out with their blank line), or lm-eval's description (``system``) + examples
              + ``doc_to_text``.
  target    = the training answer in the format the prompt asks for: the bAbI answer word
              (focusft), or lm-eval's example-target sentence filled for this question
              (``sentence_target``: "The most recent location of Mary is kitchen.").

The context's token count is thus at most the budget and at most max(10, 0.5 %) below it
(tests measure it); the prompt adds instruction, examples and question on top (~250 tokens
with examples, ~140 without, for a 1.5k-vocabulary BPE). Below 1k the proportional room is too
small for the examples: use ``few_shot=False`` there (the prompt may still exceed L slightly).
``evidence_spans`` are character spans, in ``prompt``, of the supporting facts (in order).
Scoring: greedy decoding, at most the prompt set's ``max_new_tokens`` (focusft 20, lm-eval 16),
``scoring.babilong_correct`` (the leaderboard rule) against the answer word (``answer``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

from focusft.evaluation.babi import BabiSample, babi_stories
from focusft.evaluation.haystack import Haystack, ProceduralProse
from focusft.evaluation.babilong_prompts import BabilongTask
from focusft.evaluation.prompt_sets import babilong_task
from focusft.evaluation.tokens import TokenCounter, as_counter, format_length, parse_length

__all__ = ["LongSample", "babilong_sample", "babilong_samples", "context_budget", "build_prompt",
           "parse_length", "format_length", "LENGTHS", "MAX_NEW_TOKENS", "PROMPT_ROOM"]

LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k")
PROMPT_ROOM = 300
MAX_NEW_TOKENS = 20
_BATCH = 64  # sentences tokenized per call
_FIT_ROUNDS = 4  # measure-and-rescale rounds of the noise length


@dataclass
class LongSample:
    task: str
    length: int  # token budget asked for (0 for "0k"); see `format_length`
    prompt: str
    question: str
    target: str  # the training answer (see the module docstring)
    context: str
    evidence_spans: list[tuple[int, int]]  # character spans of supporting facts in `prompt`
    answer: str = ""  # the bAbI answer word, what the scorer looks for
    system: str = ""  # system message of the prompt set ("" for none)
    max_new_tokens: int = MAX_NEW_TOKENS


def context_budget(length: int) -> int:
    """Tokens for noise + facts at a given total length (see the module docstring)."""
    if length <= 0:
        return 0
    if length >= 1000:
        return length - PROMPT_ROOM
    return length - math.ceil(length * PROMPT_ROOM / 1000)


def _cut_to(sentence: str, limit: int, counter: TokenCounter) -> str:
    """Longest word prefix of ``sentence`` with at most ``limit`` tokens (binary search)."""
    words = sentence.split(" ")
    lo, hi = 0, len(words)  # invariant: prefix of lo words fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


class NoiseSource:
    """Sentences pulled lazily from a haystack stream, each tokenized once, in batches."""

    def __init__(self, stream: Iterator[str], counter: TokenCounter):
        self.stream, self.counter = stream, counter
        self.sentences: list[str] = []
        self.counts: list[int] = []

    def _pull(self, need: int) -> None:
        while sum(self.counts) < need:  # short loop: a batch is tens of sentences
            batch = [next(self.stream) for _ in range(_BATCH)]
            self.sentences += batch
            self.counts += self.counter.count_many(batch)

    def take(self, need: int) -> list[str]:
        """Leading sentences summing to ``need`` tokens or a few less (the last one cut)."""
        self._pull(need)
        noise, total = [], 0
        for sentence, n in zip(self.sentences, self.counts):
            if total + n > need:
                cut = _cut_to(sentence, need - total, self.counter)
                return noise + [cut] if cut else noise
            noise.append(sentence)
            total += n
            if total == need:
                break
        return noise


def place_facts(facts: list[str], noise: list[str], rng: random.Random):
    """Interleave facts into noise; returns (pieces, index in pieces of each fact)."""
    slots = sorted(rng.randrange(len(noise) + 1) for _ in facts)
    pieces, fact_at, f = [], [], 0
    for i in range(len(noise) + 1):
        while f < len(facts) and slots[f] == i:
            fact_at.append(len(pieces))
            pieces.append(facts[f])
            f += 1
        if i < len(noise):
            pieces.append(noise[i])
    return pieces, fact_at


def _join_with_spans(pieces: list[str]) -> tuple[str, list[tuple[int, int]]]:
    spans, pos = [], 0
    for piece in pieces:
        spans.append((pos, pos + len(piece)))
        pos += len(piece) + 1  # the joining space
    return " ".join(pieces), spans


def _focusft_example(context: str, question: str, answer: str) -> str:
    return f"<example>\n{context}\nQuestion: {question}\nAnswer: {answer}\n</example>"


def _doc_to_text(parts: BabilongTask, context: str, question: str) -> str:
    import jinja2

    return jinja2.Template(parts.doc_to_text, keep_trailing_newline=True).render(
        input=context, question=question)


def build_prompt(task: str, context: str, question: str, few_shot: bool = True,
                 prompts: str = "focusft") -> tuple[str, int]:
    """The BABILong user prompt and the character offset at which ``context`` starts in it."""
    parts = babilong_task(prompts, task)
    if parts.style == "lm-eval":
        shots = parts.examples if few_shot else ()
        head = "".join(_doc_to_text(parts, i, q) + parts.target_delimiter + t + "\n\n"
                       for i, q, t in shots)
        marker = "\x00CONTEXT\x00"  # locate the context inside the rendered doc_to_text
        doc = _doc_to_text(parts, marker, question)
        # lm-eval strips the input; offsets stay those of the unstripped context
        offset = len(head) + doc.index(marker) - (len(context) - len(context.lstrip()))
        return head + doc.replace(marker, context.strip()), offset
    examples = "\n".join(_focusft_example(*e) for e in parts.examples) if few_shot else ""
    head = [parts.instruction, examples, parts.post_prompt]
    head = "\n\n".join(p for p in head if p) + "\n\n<context>\n"
    return f"{head}{context}\n</context>\n\nQuestion: {question}", len(head)


def sentence_target(parts: BabilongTask, question: str, answer: str) -> str:
    """The answer in the format of the prompt set's example targets.

    One-word example targets (or none): ``answer``. Sentence targets: the first example whose
    question has as many words as ``question``, with its answer (the target's last word) put
    in place of ``answer`` and each word it shares with its question replaced by the word at
    the same position of ``question``.
    """
    for _, ex_question, ex_target in parts.examples:
        words = ex_target.rstrip(".").split()
        if len(words) <= 1:
            return answer
        ex_q, new_q = ex_question.rstrip("?").split(), question.rstrip("?").split()
        if len(ex_q) != len(new_q):
            continue
        out = [answer if w == words[-1] else new_q[ex_q.index(w)] if w in ex_q else w
               for w in words]
        return " ".join(out) + ("." if ex_target.endswith(".") else "")
    return answer


def _fit_context(facts: list[str], budget: int, counter: TokenCounter, haystack: Haystack,
                 rng: random.Random) -> tuple[list[str], list[int]]:
    """Noise + facts whose joined token count lands in [budget - tolerance, budget].

    Summed per-sentence counts differ from the joined text's count by a tokenizer-dependent
    share (merges across the joining spaces), so we measure the joined context once, rescale
    the sum-based target by the observed ratio and retry; two rounds usually suffice.
    """
    if budget <= 0:
        return place_facts(facts, [], rng)
    fact_tokens = sum(counter.count_many(facts))
    source = NoiseSource(haystack.sentences(rng), counter)
    tolerance, scale = max(10, budget // 200), 1.0
    for _ in range(_FIT_ROUNDS):
        need = int(budget / scale) - fact_tokens
        if need <= 0:  # facts alone fill the budget: no noise
            return place_facts(facts, [], rng)
        noise = source.take(need)
        pieces, fact_at = place_facts(facts, noise, rng)
        real = counter.count(" ".join(pieces))
        if budget - tolerance <= real <= budget:
            return pieces, fact_at
        summed = fact_tokens + sum(source.counts[: len(noise) - 1]) + sum(
            counter.count_many(noise[-1:]))
        scale = real / max(1, summed)  # joined tokens per summed token, measured
    # Rescaling did not land in the window (tiny budgets, odd tokenizers): shave from above.
    while real > budget and need > 0:
        need -= real - budget
        noise = source.take(need) if need > 0 else []
        pieces, fact_at = place_facts(facts, noise, rng)
        real = counter.count(" ".join(pieces))
    return pieces, fact_at


def babilong_sample(sample: BabiSample, length: int | str, tokenizer: Any = None,
                    haystack: Haystack | None = None, rng: random.Random | None = None,
                    few_shot: bool = True, prompts: str = "focusft") -> LongSample:
    """Hide one bAbI sample in ``haystack`` noise at ``length`` tokens of ``tokenizer``."""
    rng = rng or random.Random(0)
    length = parse_length(length, kilo=1000)
    counter = as_counter(tokenizer)
    pieces, fact_at = _fit_context(sample.facts, context_budget(length), counter,
                                   haystack or ProceduralProse(), rng)
    context, spans = _join_with_spans(pieces)
    prompt, offset = build_prompt(sample.task, context, sample.question, few_shot, prompts)
    evidence = [spans[fact_at[i]] for i in sample.supporting]
    evidence = [(start + offset, end + offset) for start, end in evidence]
    parts = babilong_task(prompts, sample.task)
    system = parts.instruction if parts.style == "lm-eval" else ""
    return LongSample(sample.task, length, prompt, sample.question,
                      sentence_target(parts, sample.question, sample.answer), context, evidence,
                      sample.answer, system, parts.max_new_tokens)


def babilong_samples(task: str, length: int | str, n: int, seed: int, tokenizer: Any = None,
                     haystack: Haystack | None = None, few_shot: bool = True,
                     prompts: str = "focusft") -> list[LongSample]:
    """``n`` BABILong samples of ``task`` at ``length``; same arguments -> same samples."""
    rng = random.Random(seed)
    stories = babi_stories(task, random.Random(rng.getrandbits(64)))
    counter = as_counter(tokenizer)  # built once: sample after sample reuses it
    return [babilong_sample(next(stories), length, counter, haystack, rng, few_shot, prompts)
            for _ in range(n)]
