"""Pretraining text for `focusft pretrain`: rows that open with a BOS token, mixed from segments.

A row is ``[BOS] + segment + "\\n\\n" + segment + ...``, exactly ``seq_len`` tokens (see
`token_rows`); every row starts a fresh document, so position 0 is always the BOS token
(``with_bos`` adds it to the embedded default tokenizer and to its chat template, so SFT rows
built from the saved base's tokenizer open with it too). Segments, drawn with the recipe's weights:

  book    consecutive sentences of the haystack books (BABILong's noise) or procedural prose
  babi    a train-split bAbI qa1-qa5 story's facts scattered through prose, then
          "Question: ...\\nAnswer: <the answer as a sentence>" (`focusft.experiments.sft_tasks.sentence_answer`)
  ruler   a train-split RULER NIAH (noise / needle haystacks) or VT prompt with its answer, at
          ``ruler_len`` tokens (at most 7/8 of a row; a copy segment where the task cannot fit)
  copy    prose with ``n`` sparse key-value facts ("The code of the brave lantern is 4821.") and,
          at the end, one query "What is the code of the brave lantern? 4821"
  repeat  a run of 8-32 random words, then the same run again (only an induction / copy head can
          predict the second run; on text without a repeat such a head has nothing to do)
  bigram  Bigram-Backcopy (Guo et al. 2024, the active-dormant paper): a walk on a fixed sparse
          bigram table over 64 words that are one token each of the tokenizer (each word has 3
          successors); 3 of the words are triggers, and after a trigger the next word repeats
          the word before it. Only the word after a trigger needs attention (to the token
          before the current one); everywhere else the current token alone predicts the next
          one and attention can only add noise. One token per word matters: with words of
          several tokens every position needs the tokens before it (measured: docs/sinks.md)

The hypothesis behind the mix (the "active-dormant head" mechanism): babi, ruler, copy and
bigram segments need heads that retrieve one earlier token; on the plain prose around them such
heads have nothing to do, and softmax attention must still put its mass somewhere: the
always-present BOS token is the place that costs nothing, so heads would learn to idle on it
(an attention sink). Measured: docs/sinks.md (at the training lengths tried there, no sinks).
``bos=False`` packs the same segments into a stream cut at arbitrary points (no fixed first
token): the control for the BOS token (recipe ``sparse-nobos``).
"""

from __future__ import annotations

import random
from typing import Iterator

BOS = "<|bos|>"
KINDS = ("book", "babi", "ruler", "copy", "repeat", "bigram")
RULER_PRETRAIN_TASKS = ("niah_single_1", "niah_multikey_2", "vt")


def with_bos(tokenizer):
    """The tokenizer with a BOS special token that its chat template writes first."""
    if tokenizer.bos_token != BOS:
        tokenizer.add_special_tokens({"bos_token": BOS})
    template = tokenizer.chat_template or ""
    if not template.startswith("{{- bos_token -}}"):
        tokenizer.chat_template = "{{- bos_token -}}" + template
    return tokenizer


class Segments:
    """Endless segment texts of each kind, all drawn from one seed (train splits only)."""

    def __init__(self, seed: int, haystack=None, tokenizer=None, ruler_len: int = 448):
        from focusft.evaluation.babi import babi_stories
        from focusft.evaluation.haystack import make_haystack

        self.rng = random.Random(seed)
        self.hay = make_haystack(haystack, seed)
        self.prose = self.hay.sentences(random.Random(seed + 1))
        self.stories = {t: babi_stories(t, random.Random(seed * 31 + i))
                        for i, t in enumerate(("qa1", "qa2", "qa3", "qa4", "qa5"))}
        self.tokenizer, self.ruler_len = tokenizer, ruler_len

    def text(self, kind: str) -> str:
        return getattr(self, f"_{kind}")()

    def _sentences(self, lo: int, hi: int) -> list[str]:
        return [next(self.prose) for _ in range(self.rng.randint(lo, hi))]

    def _book(self) -> str:
        return " ".join(self._sentences(2, 8))

    def _babi(self) -> str:
        from focusft.evaluation.chat import babi_key
        from focusft.evaluation.splits import in_split
        from focusft.experiments.sft_tasks import sentence_answer

        while True:
            sample = next(self.stories[self.rng.choice(tuple(self.stories))])
            if in_split(babi_key(sample), "train"):
                break
        text = _scatter(self._sentences(1, 6), sample.facts, self.rng)
        return f"{text}\nQuestion: {sample.question}\nAnswer: {sentence_answer(sample)}"

    def _ruler(self) -> str:
        from focusft.evaluation.ruler import ruler_sample

        task = self.rng.choice(RULER_PRETRAIN_TASKS)
        try:
            s = ruler_sample(task, self.ruler_len, self.tokenizer, self.rng, self.hay, "train")
        except ValueError:  # the task's smallest prompt does not fit ruler_len: a copy instead
            return self._copy()
        return f"{s.prompt} {', '.join(s.references)}."

    def _copy(self) -> str:
        from focusft.evaluation.haystack import prose_vocabulary

        vocab = prose_vocabulary()
        keys = [f"{self.rng.choice(vocab['a'])} {self.rng.choice(vocab['n'])}"
                for _ in range(self.rng.randint(1, 3))]
        codes = [str(self.rng.randint(1000, 9999)) for _ in keys]
        facts = [f"The code of the {k} is {c}." for k, c in zip(keys, codes)]
        i = self.rng.randrange(len(keys))
        text = _scatter(self._sentences(1, 6), facts, self.rng)
        return f"{text}\nWhat is the code of the {keys[i]}? {codes[i]}"

    def _bigram(self) -> str:
        words, table, triggers = self._bigram_table()
        before, word, out = None, self.rng.choice(words), []
        for _ in range(self.rng.randint(60, 120)):
            out.append(word)
            after = before if word in triggers and before else self.rng.choice(table[word])
            before, word = word, after
        return " " + " ".join(out)  # the leading space keeps the first word one token too

    def _bigram_table(self):
        """(64 one-token words, each word's 3 successors, the 3 trigger words): one table for
        every seed (it is the "language"), drawn from the prose nouns the tokenizer keeps whole."""
        if not hasattr(self, "_table"):
            from focusft.evaluation.haystack import prose_vocabulary

            whole = [w for w in prose_vocabulary()["n"] if self._one_token(w)]
            rng = random.Random(1234)
            words = rng.sample(whole, 64)
            self._table = (words, {w: rng.sample(words, 3) for w in words}, set(words[:3]))
        return self._table

    def _one_token(self, word: str) -> bool:
        return len(self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    def _repeat(self) -> str:
        from focusft.evaluation.haystack import prose_vocabulary

        vocab = prose_vocabulary()["n"]
        run = " ".join(self.rng.choice(vocab) for _ in range(self.rng.randint(8, 32)))
        return f"{run}. {run}."


def _scatter(filler: list[str], facts: list[str], rng: random.Random) -> str:
    """Facts inserted in order at sorted random slots of the filler sentences."""
    slots = sorted(rng.randint(0, len(filler)) for _ in facts)
    text = list(filler)
    for offset, (slot, fact) in enumerate(zip(slots, facts)):
        text.insert(slot + offset, fact)
    return " ".join(text)


def token_rows(tokenizer, seq_len: int, seed: int, mix: dict[str, float], haystack=None,
               bos: bool = True, ruler_len: int = 448) -> Iterator[list[int]]:
    """Endless rows of exactly ``seq_len`` ids.

    With ``bos`` each row is one document: the BOS token, then whole segments; a segment that
    does not fit the room left is redrawn (up to 4 times), then the row is filled with book
    prose cut at the row's end, so a question is never cut off from its answer. Without
    ``bos`` the same segments form one stream cut every ``seq_len`` tokens.
    """
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown segment kinds {sorted(unknown)}; expected some of {KINDS}")
    segments = Segments(seed, haystack, tokenizer, min(ruler_len, seq_len * 7 // 8))
    kinds, weights = zip(*[(k, w) for k, w in mix.items() if w > 0])
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]

    def draw(kind: str) -> list[int]:
        return tokenizer(segments.text(kind), add_special_tokens=False)["input_ids"] + sep

    if not bos:
        buffer: list[int] = []
        while True:
            buffer += draw(segments.rng.choices(kinds, weights)[0])
            while len(buffer) >= seq_len:
                yield buffer[:seq_len]
                buffer = buffer[seq_len:]
    first = tokenizer.convert_tokens_to_ids(BOS)
    while True:
        row, tries = [first], 0
        while len(row) < seq_len:
            kind = segments.rng.choices(kinds, weights)[0]
            ids = draw(kind)
            if len(ids) > seq_len - len(row) and kind != "book":
                tries += 1
                if tries <= 4:
                    continue
                ids = draw("book")
            row += ids
        yield row[:seq_len]
