"""Helpers for the evaluation tests: a byte-level BPE tokenizer trained here, offline.

The corpus is procedural prose plus bAbI facts and a few digits/letters, so counts behave like a
real subword tokenizer's (common words one token, rare words and numbers several), while
training takes well under a second.
"""

from __future__ import annotations

import functools
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from focusft.evaluation.babi import TASKS, babi_samples
from focusft.evaluation.haystack import ProceduralProse


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    prose = ProceduralProse(0).sentences(random.Random(0))
    corpus = [next(prose) for _ in range(3000)]
    corpus += [f for t in TASKS for s in babi_samples(t, 50, 0) for f in s.facts + [s.question]]
    corpus += ["0 1 2 3 4 5 6 7 8 9 VAR Document Question Answer <context> </context>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def make_test_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
