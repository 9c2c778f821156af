"""Outer PEFT: LoRA (or QLoRA on a 4-/8-bit base) as what the outer loop trains.

With ``--use_peft`` the outer optimizer trains LoRA adapters instead of the full model::

    y = W x  +  (lora_alpha / lora_r) * B_o A_o x  +  (fast_alpha / fast_rank) * B_n A_n x
        |        outer LoRA (trained, saved)           inner fast weights (per sample, never saved)
        base: frozen, optionally 4-bit / 8-bit (bitsandbytes)

Both may sit on the same Linear: the fast-weight hook then wraps PEFT's LoRA layer as a whole
(its output already holds base + outer LoRA) and reads the layer's shape from
``in_features`` / ``out_features``, never from the (packed) base weight. The flags are TRL's
(``ModelConfig``): ``--use_peft --lora_r --lora_alpha --lora_dropout --lora_target_modules
--load_in_4bit --load_in_8bit --bnb_4bit_quant_type --use_bnb_nested_quant``.

A k-bit base goes through PEFT's ``prepare_model_for_kbit_training`` (frozen base, fp32
norms, activation checkpointing when ``--gradient_checkpointing`` asks for it). The run saves
the adapter (``adapter_config.json`` + ``adapter_model.safetensors``); ``--merge_adapter``
saves a plain model instead, merged into an unquantized copy of the base. An adapter
directory given as ``--model`` is loaded trainable on its base and training continues.
"""

from __future__ import annotations

from pathlib import Path

import torch

from focusft.errors import UserError
from focusft.sources.adapter_dir import is_adapter_dir, load_base


def require(module: str, flag: str) -> None:
    """`module` importable, else a UserError naming the flag and the install command."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{flag} needs the {module} package: pip install 'focusft[peft]'")


def quantization_config(cfg):
    """bitsandbytes config for --load_in_4bit / --load_in_8bit, else None."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise UserError("--load_in_4bit and --load_in_8bit exclude each other; pick one")
    if not (cfg.use_peft or is_adapter_dir(cfg.model)):
        raise UserError("--load_in_4bit / --load_in_8bit need --use_peft true: a quantized base "
                        "cannot be trained itself, only LoRA adapters on it")
    if cfg.model is None:
        raise UserError("--load_in_4bit / --load_in_8bit need --model (a saved model to quantize "
                        "while loading); the embedded default is built in memory")
    require("bitsandbytes", "--load_in_4bit / --load_in_8bit")
    require("peft", "--load_in_4bit / --load_in_8bit")
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=cfg.use_bnb_nested_quant,
                              bnb_4bit_compute_dtype=torch.bfloat16 if cfg.bf16 else torch.float32)


def keep_4bit_differentiable(model) -> None:
    """Keep bitsandbytes' 4-bit layers differentiable through their input on CPU.

    On a CPU with AVX512-BF16, a ``Linear4bit`` repacks its weight for inference the first time
    it runs in eval mode without grad (a self-check, an evaluation), and from then on computes
    with a kernel that has no backward through its input: the inner loop (and every outer
    LoRA below such a layer) would get no gradient through it. Turn the repacking off, and undo
    it where it already happened.
    """
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)


def lora_config(cfg):
    """PEFT LoraConfig from the TRL-named flags (None without --use_peft)."""
    if not cfg.use_peft:
        return None
    require("peft", "--use_peft")
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=lora_targets(cfg.lora_target_modules),
                      bias="none")


def lora_targets(names: list[str] | None) -> list[str] | str | None:
    """The module names as PEFT takes them: ``all-linear`` alone is PEFT's shorthand, which PEFT
    recognises only as a string (in a list it would be looked up as a module name)."""
    if names and len(names) == 1 and names[0].lower() == "all-linear":
        return "all-linear"
    return names


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def load_adapter_model(path: str, cfg, rope_scaling: dict | None = None, **load_kwargs):
    """An adapter directory, loaded trainable on its base (quantized as the flags ask; its
    config under `rope_scaling`, else the scaling the adapter recorded)."""
    require("peft", f"--model {path} (a PEFT adapter directory)")
    from peft import PeftModel

    base = load_base(path, rope_scaling, **load_kwargs)
    if getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False):
        base = _prepare_kbit(base, cfg)
    return PeftModel.from_pretrained(base, path, is_trainable=True)


def wrap(model, peft_config, cfg):
    """Put trainable LoRA adapters on `model` (a k-bit base is prepared first)."""
    from peft import get_peft_model

    if is_peft_model(model):
        raise UserError("the model already carries PEFT adapters; pass it without peft_config / "
                        "--use_peft to continue training them, or merge them first")
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = _prepare_kbit(model, cfg)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. a target module the model does not have
        raise UserError(f"--lora_target_modules {getattr(peft_config, 'target_modules', None)}: PEFT "
                        f"cannot place LoRA on this model: {str(err).splitlines()[0]}") from None


def _prepare_kbit(model, cfg):
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs=cfg.gradient_checkpointing_kwargs)


def save_merged(model, directory: str, rope_scaling: dict | None = None) -> None:
    """A plain model: the adapter merged into the base (an unquantized copy of it if k-bit,
    loaded under `rope_scaling` as the quantized base was)."""
    import copy

    if _is_quantized(model):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from focusft.sources import rope_scaling as rope

        base_path = model.peft_config[model.active_adapter].base_model_name_or_path
        adapter = Path(directory) / "_adapter"
        model.save_pretrained(str(adapter))
        scaled = {"config": rope.scaled(rope.config_of(base_path), rope_scaling)} if rope_scaling else {}
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, **scaled)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        import shutil

        shutil.rmtree(adapter)
    else:
        merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(directory)


def _is_quantized(model) -> bool:
    base = model.get_base_model() if is_peft_model(model) else model
    return bool(getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False))
