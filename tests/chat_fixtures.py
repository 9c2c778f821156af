"""Offline chat tokenizers for tests: two chat templates and a tiny byte-level BPE built locally.

``chatml_tokenizer()``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; injects the default system
prompt "You are a helpful assistant." when the first message is not a system message, and lists
the tools (one JSON object per line) in the system turn when tools are given. Assistant tool calls
render as ``<tool_call>{function json}</tool_call>``.

``llama3_tokenizer()``: ``<|begin_of_text|>`` then
``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`` per message.

``prefix_breaking_template()``: renders assistant content only for the final message, the way
reasoning-stripping templates rewrite history; tokenize_conversation must reject it.

Every call returns a fresh tokenizer (tests may mutate them); training the BPE is cached.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system = messages[0].content -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = 'You are a helpful assistant.' -%}{%- set rest = messages -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system -}}"
    "{%- if tools -%}{{- '\\n\\n# Tools' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in rest -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content -%}{{- message.content -}}{%- endif -%}"
    "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}"
    "{{- '<tool_call>' + (call.function | tojson) + '</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' -}}"
    "{{- message.content | trim -}}{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# ChatML, but earlier assistant turns lose their content once a later message exists.
PREFIX_BREAKING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.role != 'assistant' or loop.last -%}{{- message.content -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

_CORPUS = [
    "You are a helpful assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "And of Italy? Rome. And of Spain? Madrid.",
    "What is the weather in Paris today? It is sunny and 21 degrees.",
    "get_weather city name arguments function type object properties string",
    "system user assistant tool",
]


@functools.lru_cache(maxsize=None)
def _backend_json(specials: tuple[str, ...]) -> str:
    """Train a byte-level BPE (so any text is encodable) and return it serialized."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer.to_str()


def _wrap(specials: list[str], template: str, **tokens: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(_backend_json(tuple(specials)))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **tokens)


def chatml_tokenizer(template: str = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """ChatML tokenizer; pass ``template`` to swap the chat template (same vocabulary)."""
    return _wrap(CHATML_SPECIALS, template, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3-style header tokenizer with bos ``<|begin_of_text|>``."""
    return _wrap(
        LLAMA3_SPECIALS,
        LLAMA3_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )


def prefix_breaking_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML vocabulary with PREFIX_BREAKING_TEMPLATE."""
    return chatml_tokenizer(PREFIX_BREAKING_TEMPLATE)


# ---------------------------------------------------------------------------- any template

# Control-token shapes used by chat templates: <|x|>, <｜x｜>, <x>, </x>, <x|>, <|x>, [INST].
_CONTROL = r"<\|[^|<>\s'\"]+\|>|<｜[^｜]+｜>|</?[a-z_]+>|<[a-z_]+\|>|<\|[a-z_]+>|\[/?[A-Z_]+\]"


def template_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``template`` as its chat template and every control token
    the template's text spells out added as a special token (so each renders as one token, as
    in the real model's tokenizer)."""
    import re

    specials = sorted(set(re.findall(_CONTROL, template)) | {"<|bos|>", "<|eos|>", "<|pad|>"})
    backend = Tokenizer.from_str(_backend_json(tuple(CHATML_SPECIALS)))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template,
                                  bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


# ---------------------------------------------------------------------------- model dirs

def save_chat_model(path, tokenizer=None, seed: int = 0, layers: int = 4, hidden: int = 32,
                    intermediate: int = 48, positions: int = 512):
    """A seeded tiny Qwen2 for ``tokenizer`` (default: a fresh ChatML one), saved with it under
    ``path`` (a model directory as `focusft train --model` takes it); returns the path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or chatml_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=positions, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
