"""PEFT adapter directories as models: ``adapter_config.json`` + adapter weights + tokenizer.

A run with ``--use_peft`` saves such a directory as ``final/``. Its ``adapter_config.json``
names the base (``base_model_name_or_path``): a model directory, a hub name, or, for a run
on ``--model FILE.gguf``, the folder holding that GGUF file, which transformers cannot open
itself; `load_base` reads it through `focusft.sources.gguf_file`, dequantized, as the run that
trained the adapter did. `load_merged` gives the plain model that evaluation and diagnostics
measure: the base with the adapter merged in.
"""

from __future__ import annotations

import json
from pathlib import Path

from focusft.errors import UserError


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


def load_base(path: str, **load_kwargs):
    """The adapter's base model (``load_kwargs`` go to ``from_pretrained``, ``dtype`` as a
    string; a GGUF base takes only the dtype: it cannot be quantized again)."""
    from transformers import AutoModelForCausalLM

    from focusft.sources import gguf_file

    base, flag = base_of_adapter(path), f"--model {path}: its base"
    if (file := gguf_file.find(base, flag)) is None:
        try:
            return AutoModelForCausalLM.from_pretrained(base, **load_kwargs)
        except (OSError, ValueError) as err:
            raise UserError(f"{flag} {base} (adapter_config.json's base_model_name_or_path) "
                            f"cannot be loaded: {str(err).splitlines()[0]}") from None
    if "quantization_config" in load_kwargs:  # the same refusal as for a GGUF --model
        raise UserError(f"--model {path}: its base is the GGUF file {file}, which "
                        "--load_in_4bit / --load_in_8bit cannot re-quantize; drop the flag")
    return gguf_file.load(file, load_kwargs.get("dtype", "float32"), flag)[0]


def load_merged(path: str, dtype: str = "float32"):
    """A plain model: the adapter at ``path`` merged into its base (loaded in ``dtype``)."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UserError(f"--model {path} is a PEFT adapter directory, which needs the peft "
                        "package: pip install 'focusft[peft]'")
    from peft import PeftModel

    base = load_base(path, dtype=dtype, use_safetensors=True)
    return PeftModel.from_pretrained(base, str(Path(path).expanduser())).merge_and_unload()
