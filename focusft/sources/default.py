"""The embedded default: a tokenizer, a tiny Qwen2 model, a data set and a recipe.

`focusft train` with no arguments trains this default on CPU in a few minutes. Everything here is
built locally and deterministically; nothing is downloaded.

* `load_default_tokenizer()` trains a small byte-level BPE tokenizer on text the project makes
  itself (bAbI-style sentences plus procedural distractor prose) and caches it on disk.
* `build_default_model(tokenizer, seed)` makes a randomly initialised 6-layer Qwen2.
* `default_training_rows(...)` / `default_eval_rows(...)` make chat rows: find one fact hidden in
  distractor prose and answer a question about it with one word.
* `DEFAULT_RECIPE` holds the training hyper-parameters that were measured to work.
* `answer_accuracy(...)` greedy-decodes a few tokens and scores the first word.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import string
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

TOKENIZER_VERSION = "default-tokenizer-v1"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# --------------------------------------------------------------------------------------------
# Word lists. The bAbI lists cover the entities of bAbI qa1-qa5 so that every name, place and
# object used by the evaluation generators is a single token too.
# --------------------------------------------------------------------------------------------

NAMES = ("Mary", "John", "Sandra", "Daniel", "Fred", "Bill", "Jeff", "Julie")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE_VERBS = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GRAB_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")

# Distractor prose vocabulary. None of these words is a bAbI name, place or object.
_ADJECTIVES = (
    "quiet", "ancient", "bright", "cold", "distant", "dusty", "gentle", "golden", "green", "grey",
    "heavy", "hidden", "hollow", "narrow", "old", "pale", "quick", "rough", "silent", "small",
    "soft", "strange", "tall", "warm", "wide", "wild", "wooden", "young", "broken", "careful",
)
_NOUNS = (
    "river", "mountain", "village", "forest", "road", "bridge", "tower", "market", "harbor",
    "valley", "field", "stone", "window", "door", "lamp", "letter", "story", "song", "ship",
    "wind", "rain", "cloud", "star", "moon", "sun", "tree", "bird", "horse", "dog", "cat",
    "farmer", "sailor", "teacher", "painter", "child", "stranger", "traveler", "merchant",
    "soldier", "king", "queen", "doctor", "book", "map", "coin", "bell", "clock", "wall",
    "hill", "lake", "city", "train", "boat", "candle", "shadow", "morning", "evening", "winter",
    "summer", "autumn", "spring", "island", "desert", "castle", "church", "school", "street",
)
_VERBS = (
    "watched", "followed", "found", "carried", "crossed", "remembered", "opened", "closed",
    "painted", "visited", "described", "admired", "forgot", "noticed", "built", "repaired",
    "praised", "feared", "reached", "passed by", "looked at", "spoke about", "dreamed of",
    "waited for", "searched for", "sang about",
)
_INTRANSITIVE = (
    "slept", "waited", "laughed", "wandered", "rested", "listened", "sang", "worked", "smiled",
    "paused", "shivered", "returned", "vanished", "grew", "changed", "fell silent",
)
_ADVERBS = (
    "slowly", "quietly", "again", "suddenly", "carefully", "often", "rarely", "happily",
    "sadly", "once", "later", "early", "alone", "together", "still",
)
_PREPOSITIONS = ("near", "beyond", "under", "behind", "across", "beside", "above", "around")
_CONNECTIVES = (
    "Meanwhile,", "Later,", "Long ago,", "In the end,", "That night,", "Some say", "Of course,",
    "Once again,", "At dawn,", "After a while,",
)


class ProseGenerator:
    """Deterministic, procedurally generated distractor prose (grammatical nonsense)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _np(self) -> str:
        r = self.rng
        det = r.choice(("the", "the", "a", "an old", "every", "one"))
        if det == "an old":
            return f"an old {r.choice(_NOUNS)}"
        if r.random() < 0.5:
            return f"{det} {r.choice(_ADJECTIVES)} {r.choice(_NOUNS)}"
        return f"{det} {r.choice(_NOUNS)}"

    def sentence(self) -> str:
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            s = f"{self._np()} {r.choice(_VERBS)} {self._np()}"
        elif kind == 1:
            s = f"{self._np()} {r.choice(_INTRANSITIVE)} {r.choice(_PREPOSITIONS)} {self._np()}"
        elif kind == 2:
            s = f"{self._np()} {r.choice(_INTRANSITIVE)} {r.choice(_ADVERBS)}"
        elif kind == 3:
            s = f"{self._np()} was {r.choice(_ADJECTIVES)} and {r.choice(_ADJECTIVES)}"
        else:
            s = (
                f"{self._np()} {r.choice(_VERBS)} {self._np()} {r.choice(_PREPOSITIONS)} "
                f"{self._np()}"
            )
        if r.random() < 0.2:
            c = r.choice(_CONNECTIVES)
            return f"{c} {s}."
        return s[0].upper() + s[1:] + "."

    def sentences(self, n: int) -> list[str]:
        return [self.sentence() for _ in range(n)]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# ChatML, with Qwen2.5-style tools: the tool schemas go into the system turn, an assistant's
# calls render as `<tool_call>` JSON, tool results as a user turn of `<tool_response>` blocks.
# `{% generation %}` marks what the assistant writes (content, calls, `<|im_end|>`), so the loss
# mask comes from one render (focusft.data.templates, rule "generation"). A conversation without
# tools renders byte for byte as `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FORMAT = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>'
)
CHAT_TEMPLATE = (
    "{%- macro text(message) -%}"
    "{{- message['content'] if message['content'] is string else '' -}}"
    "{%- endmacro -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- text(messages[0]) + '\\n\\n' -}}{%- endif -%}"
    "{{- '" + _TOOLS_PREAMBLE + "' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '" + _TOOLS_FORMAT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and loop.first and tools -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- text(message) -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{{- call['arguments'] if call['arguments'] is string else (call['arguments'] | tojson) -}}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(message) + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + text(message) + '<|im_end|>' + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def _babi_corpus(rng: random.Random, n: int) -> list[str]:
    lines = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        p, o = rng.choice(PLACES), rng.choice(OBJECTS)
        lines.append(rng.choice((
            f"{a} {rng.choice(MOVE_VERBS)} the {p}.",
            f"{a} {rng.choice(GRAB_VERBS)} the {o} there.",
            f"{a} {rng.choice(DROP_VERBS)} the {o}.",
            f"{a} {rng.choice(GIVE_VERBS)} the {o} to {b}.",
            f"Where is {a}? {p}",
            f"Where is the {o}? {p}",
            f"Where was the {o} before the {p}? {p}",
            f"Who gave the {o} to {b}? {a}",
            f"Who received the {o}? {b}",
            f"What did {a} give to {b}? {o}",
            f"Question: Where is {a}?\nAnswer: {p}",
            f"The {p} is where {a} is.",
        )))
    return lines


def _tokenizer_corpus() -> list[str]:
    rng = random.Random(1234)
    prose = ProseGenerator(4321)
    corpus = _babi_corpus(rng, 6000)
    # Bare words (answers start right after "assistant\n", with no leading space).
    for word in NAMES + PLACES + OBJECTS + ("yes", "no", "none", "nothing", "unknown"):
        corpus.extend([word, word.capitalize(), f"{word}."] * 20)
    for _ in range(3000):
        corpus.append(" ".join(prose.sentences(rng.randint(1, 4))))
    # Cover the rest of printable ASCII so everything round-trips with few bytes per token.
    corpus.append(string.printable)
    corpus.extend(str(i) for i in range(200))
    return corpus


def _cache_root() -> Path:
    root = os.environ.get("FOCUSFT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "focusft"


def train_default_tokenizer():
    """Train the default tokenizer from scratch (deterministic, about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        padding_side="right",
    )


def load_default_tokenizer():
    """The default tokenizer, built once and cached under `$FOCUSFT_CACHE` (or ~/.cache/focusft)."""
    from transformers import PreTrainedTokenizerFast

    path = _cache_root() / "tokenizers" / TOKENIZER_VERSION
    if (path / "tokenizer.json").exists():
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
            tokenizer.chat_template = CHAT_TEMPLATE  # the template may be newer than the cache
            return tokenizer
        except Exception:  # a damaged cache entry is rebuilt below
            pass
    tokenizer = train_default_tokenizer()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        tokenizer.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except OSError:
        pass  # another process won the race, or the cache is read-only: the tokenizer still works
    return tokenizer


# --------------------------------------------------------------------------------------------
# Rows: find one fact hidden in distractor prose
# --------------------------------------------------------------------------------------------

_SPLIT_SALT = {"train": 0x7A11, "eval": 0xE7A1, "test": 0x7E57}


def _split_seed(seed: int, split: str) -> int:
    digest = hashlib.sha256(f"{split}:{seed}:{_SPLIT_SALT.get(split, 0)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _count_tokens(tokenizer, texts: list[str]) -> list[int]:
    enc = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) for e in enc]


def _locate_row(rng: random.Random, prose: ProseGenerator, tokenizer, length: int,
                n_people: int) -> dict:
    people = rng.sample(NAMES, n_people)
    places = [rng.choice(PLACES) for _ in people]
    facts = [f"{p} {rng.choice(MOVE_VERBS)} the {pl}." for p, pl in zip(people, places)]
    budget = length - sum(_count_tokens(tokenizer, [" " + f for f in facts]))
    filler: list[str] = []
    while budget > 0:
        batch = prose.sentences(8)
        for s, k in zip(batch, _count_tokens(tokenizer, [" " + s for s in batch])):
            if budget <= 0:
                break
            filler.append(s)
            budget -= k
    slots = sorted(rng.randint(0, len(filler)) for _ in facts)
    order = list(range(len(facts)))
    rng.shuffle(order)
    sentences = list(filler)
    for offset, (slot, i) in enumerate(zip(slots, order)):
        sentences.insert(slot + offset, facts[i])
    q = rng.randrange(n_people)
    content = " ".join(sentences) + f"\n\nQuestion: Where is {people[q]}?"
    evidence, start = [], 0
    for sentence in sentences:  # character span of the asked person's fact
        if sentence == facts[q]:
            evidence.append([start, start + len(sentence)])
        start += len(sentence) + 1
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": places[q]},
        ],
        "target": places[q],
        "task": "locate",
        "evidence": evidence,
    }


def _rows(n: int, seed: int, split: str, lengths, n_people, tokenizer,
          curriculum: bool = False) -> list[dict]:
    tokenizer = tokenizer or load_default_tokenizer()
    lengths = [lengths] if isinstance(lengths, int) else list(lengths)
    n_people = [n_people] if isinstance(n_people, int) else list(n_people)
    rng = random.Random(_split_seed(seed, split))
    prose = ProseGenerator(rng.getrandbits(64))
    drawn = [rng.choice(lengths) for _ in range(n)]
    if curriculum:
        drawn.sort()
    return [_locate_row(rng, prose, tokenizer, length, rng.choice(n_people)) for length in drawn]


def default_training_rows(n: int, seed: int = 0, split: str = "train",
                          lengths: int | Sequence[int] = 128, n_people=(1, 2, 3, 4),
                          tokenizer=None, curriculum: bool = False) -> list[dict]:
    """`n` chat rows; with `curriculum`, ordered from the shortest context to the longest
    (train them in order: ``train_sampling_strategy: sequential``)."""
    return _rows(n, seed, split, lengths, n_people, tokenizer, curriculum)


def default_eval_rows(n: int, seed: int = 0, lengths: int | Sequence[int] = 256,
                      n_people=(1, 2, 3, 4), tokenizer=None) -> list[dict]:
    return _rows(n, seed, "eval", lengths, n_people, tokenizer)


# What `focusft train` with no arguments trains on (hyper-parameters: configs/tiny_default.yaml).
DEFAULT_RECIPE = {
    # One fact ("Mary went to the kitchen.") hidden in distractor prose; answer: the place.
    # A curriculum from short to long contexts (trained in order): from scratch, this model
    # learns the task in ~60 steps at 32 tokens but not within 150 steps at 32-256 mixed.
    "train_samples": 5600,  # 175 steps of 32
    "train_lengths": (32, 32, 32, 64, 64, 128, 256),
    "eval_samples": 128,
    "eval_lengths": (256, 512),  # 512: longer than any training sample
    "n_people": 1,
    "curriculum": True,
    "chance": 1 / len(PLACES),
}

# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def default_model_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )


def build_default_model(tokenizer, seed: int = 0, rope_scaling: dict | None = None):
    import torch
    from transformers import Qwen2ForCausalLM

    config = default_model_config(tokenizer)
    if rope_scaling:  # --rope_scaling (focusft.sources.rope_scaling)
        from focusft.sources.rope_scaling import scaled

        config = scaled(config, rope_scaling)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def first_word(text: str) -> str:
    """The first word of `text`, lower-cased, without surrounding punctuation."""
    for word in text.split():
        word = _PUNCT.sub("", word).lower()
        if word:
            return word
    return ""


def answer_accuracy(model, tokenizer, rows: Iterable[dict], batch_size: int = 16,
                    max_new_tokens: int = 4) -> float:
    """Greedy-decode a few tokens after the generation prompt; score the first word vs `target`."""
    import torch

    rows = list(rows)
    if not rows:
        return 0.0
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    correct = 0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    [m for m in r["messages"] if m["role"] != "assistant"] if r["messages"][-1]["role"] == "assistant" else r["messages"],
                    tokenize=False, add_generation_prompt=True,
                )
                for r in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(first_word(t) == first_word(str(r["target"])) for t, r in zip(texts, chunk))
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return correct / len(rows)
