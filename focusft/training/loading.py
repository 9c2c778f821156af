"""The model to train and its tokenizer, from what the user named.

``--model`` may be a local model directory, a hub name, a PEFT adapter directory (its base is
loaded under it), a GGUF file (``focusft.sources.gguf_file``: dequantized, trained and saved as a
plain model), or nothing: the embedded default (``focusft.sources.default``). Directories
are checked before loading (``focusft.sources.model_dir``): safetensors weights only, the
tokenizer's vocabulary must fit the embedding. ``--rope_scaling`` is applied to the model's
config before the model is built, read and refused before any weight loads
(``focusft.sources.rope_scaling``).
"""

from __future__ import annotations

from pathlib import Path

from focusft.errors import UserError
from focusft.sources import rope_scaling
from focusft.sources.adapter_dir import is_adapter_dir, recorded_scaling
from focusft.training import adapters
from focusft.training.config import FocusConfig


def load_model_and_tokenizer(cfg: FocusConfig):
    """The model to train: a local directory / hub name / adapter directory, or the embedded default."""
    quantization = adapters.quantization_config(cfg)  # validates the PEFT / k-bit flags
    if cfg.model is None:
        from focusft.sources import default

        tokenizer = default.load_default_tokenizer()
        model = default.build_default_model(tokenizer, seed=cfg.seed, rope_scaling=cfg.rope_scaling)
        return _scaled(model, cfg), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from focusft.sources import gguf_file
    from focusft.sources.model_dir import check_model_dir, check_vocab_fits

    if (file := gguf_file.find(cfg.model, "--model")) is not None:
        return _load_gguf(file, cfg, quantization)
    # an adapter directory (PEFT) holds adapter weights and the tokenizer, not the base model
    check_model_dir(cfg.model, "--model")
    if is_adapter_dir(cfg.model) and cfg.rope_scaling is None:  # continue under its scaling
        cfg.rope_scaling = recorded_scaling(cfg.model)
    kwargs = dict(trust_remote_code=cfg.trust_remote_code, use_safetensors=True,
                  dtype="bfloat16" if cfg.bf16 else "float32")
    if cfg.rope_scaling and not is_adapter_dir(cfg.model):  # the scaled config, read before weights
        kwargs["config"] = rope_scaling.scaled(
            rope_scaling.config_of(cfg.model, "--model", cfg.trust_remote_code), cfg.rope_scaling)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        if is_adapter_dir(cfg.model):
            model = adapters.load_adapter_model(cfg.model, cfg, rope_scaling=cfg.rope_scaling,
                                                **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except (OSError, ValueError) as err:
        local = "" if Path(cfg.model).expanduser().exists() else "no such local directory, and "
        raise UserError(f"--model {cfg.model}: cannot load a causal LM with its tokenizer "
                        f"(safetensors weights required): {local}{str(err).splitlines()[0]}") from None
    if quantization is not None:
        adapters.keep_4bit_differentiable(model)
    check_vocab_fits(model, tokenizer, f"--model {cfg.model}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return _scaled(model, cfg), tokenizer


def _scaled(model, cfg: FocusConfig):
    """The model, once its rotary modules are seen to use --rope_scaling (when given)."""
    if cfg.rope_scaling:
        rope_scaling.check_applied(model, cfg.rope_scaling)
    return model


def _load_gguf(file, cfg: FocusConfig, quantization):
    """A GGUF file, dequantized to the run's dtype: trained (and saved) as a plain model."""
    from focusft.sources import gguf_file
    from focusft.sources.model_dir import check_vocab_fits

    if quantization is not None:
        raise UserError(f"--model {cfg.model}: --load_in_4bit / --load_in_8bit cannot re-quantize "
                        "a GGUF file; train it dequantized (drop the flag), or write it out first "
                        "with focusft model convert FILE --out DIR and quantize that")
    if cfg.rope_scaling:  # refused from the file's metadata, before any weight is read
        rope_scaling.scaled(gguf_file.read_config(file, "--model"), cfg.rope_scaling)
    model, tokenizer, _ = gguf_file.load(file, "bfloat16" if cfg.bf16 else "float32", "--model",
                                         rope_scaling=cfg.rope_scaling)
    check_vocab_fits(model, tokenizer, f"--model {cfg.model}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return _scaled(model, cfg), tokenizer
