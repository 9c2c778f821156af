"""PEFT adapter directories as models: ``adapter_config.json`` + adapter weights + tokenizer.

A run with ``--use_peft`` saves such a directory as ``final/``. Its ``adapter_config.json``
names the base (``base_model_name_or_path``): a model directory, a hub name, or, for a run
on ``--model FILE.gguf``, the folder holding that GGUF file, which transformers cannot open
itself; `load_base` reads it through `focusft.sources.gguf_file`, dequantized, as the run that
trained the adapter did. `load_merged` gives the plain model that evaluation and diagnostics
measure: the base with the adapter merged in. An adapter trained under ``--rope_scaling`` records it
in ``focusft_rope_scaling.json`` (the base's own config.json does not carry it), and its base
is loaded under it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from focusft.errors import UserError

ROPE_FILE = "focusft_rope_scaling.json"  # --rope_scaling of the run that trained the adapter


def is_adapter_dir(path: str | None) -> bool:
    return path is not None and (Path(path).expanduser() / "adapter_config.json").is_file()


def base_of_adapter(path: str) -> str:
    config = Path(path).expanduser() / "adapter_config.json"
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"--model {path}: {config.name} is not a JSON object ({err})") from None
    if not base:
        raise UserError(f"--model {path}: adapter_config.json names no base_model_name_or_path, so "
                        "the base model to load the adapter on is unknown")
    return base


def recorded_scaling(path: str) -> dict | None:
    """The RoPE scaling the adapter at `path` was trained under (``ROPE_FILE``), else None."""
    from focusft.sources.rope_scaling import parse

    file = Path(path).expanduser() / ROPE_FILE
    if not file.is_file():
        return None
    try:
        return parse(json.loads(file.read_text()), f"--model {path}: {ROPE_FILE}")
    except json.JSONDecodeError as err:
        raise UserError(f"--model {path}: {ROPE_FILE} is not valid JSON ({err})") from None


def load_base(path: str, rope_scaling: dict | None = None, **load_kwargs):
    """The adapter's base model (``load_kwargs`` go to ``from_pretrained``, ``dtype`` as a
    string; a GGUF base takes only the dtype: it cannot be quantized again), its config under
    `rope_scaling`, else the scaling the adapter recorded (``ROPE_FILE``)."""
    from transformers import AutoModelForCausalLM

    from focusft.sources import gguf_file, rope_scaling as rope

    base, flag = base_of_adapter(path), f"--model {path}: its base"
    scaling = rope_scaling or recorded_scaling(path)
    if (file := gguf_file.find(base, flag)) is None:
        if scaling:  # read and refused before any weight loads
            load_kwargs["config"] = rope.scaled(rope.config_of(
                base, flag, load_kwargs.get("trust_remote_code", False)), scaling)
        try:
            return AutoModelForCausalLM.from_pretrained(base, **load_kwargs)
        except (OSError, ValueError) as err:
            raise UserError(f"{flag} {base} (adapter_config.json's base_model_name_or_path) "
                            f"cannot be loaded: {str(err).splitlines()[0]}") from None
    if "quantization_config" in load_kwargs:  # the same refusal as for a GGUF --model
        raise UserError(f"--model {path}: its base is the GGUF file {file}, which "
                        "--load_in_4bit / --load_in_8bit cannot re-quantize; drop the flag")
    if scaling:
        rope.scaled(gguf_file.read_config(file, flag), scaling)
    return gguf_file.load(file, load_kwargs.get("dtype", "float32"), flag, rope_scaling=scaling)[0]


def load_merged(path: str, dtype: str = "float32"):
    """A plain model: the adapter at ``path`` merged into its base (loaded in ``dtype``)."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UserError(f"--model {path} is a PEFT adapter directory, which needs the peft "
                        "package: pip install 'focusft[peft]'")
    from peft import PeftModel

    base = load_base(path, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(base, str(Path(path).expanduser())).merge_and_unload()
