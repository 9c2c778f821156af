"""Model directories, checked before anything is loaded or written: safetensors weights only.

``check_model_dir(path, flag)`` refuses, with one paragraph naming the flag and the file: a
path that is not a directory, an empty directory, no ``config.json`` (a PEFT adapter directory
has ``adapter_config.json`` and ``adapter_model.safetensors`` instead), weights only as pickles
(``pytorch_model.bin``: loading one runs arbitrary code), a ``.safetensors`` file that is empty
or not safetensors, and a directory without tokenizer files. A name that is not a local path is
left to transformers (a hub name). ``check_vocab_fits`` refuses a tokenizer with more tokens
than the model's embedding rows (every id >= rows would index out of range in the first
forward). ``load_tokenizer`` loads a local tokenizer without remote code. A ``.gguf`` file
(or a directory holding one) is checked and read by `focusft.sources.gguf_file` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from focusft.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def is_local(path: str) -> bool:
    """Whether ``path`` names something on disk (else it may be a hub name)."""
    return os.path.exists(os.path.expanduser(path))


def check_model_dir(path: str, flag: str = "--model") -> None:
    """Refuse a local model directory that cannot be loaded safely (see the module docstring)."""
    if not is_local(path):
        return
    from focusft.sources import gguf_file

    if (file := gguf_file.find(path, flag)) is not None:
        gguf_file.inspect(file, flag)
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a model directory (a directory written by "
                        "save_pretrained: config.json, *.safetensors, tokenizer files)")
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        raise UserError(f"{flag} {path}: the directory is empty; expected a model written by "
                        "save_pretrained (config.json, *.safetensors, tokenizer files)")
    _check_weights(folder, names, path, flag)
    check_tokenizer_files(path, flag, names)


def _check_weights(folder: Path, names: list[str], path: str, flag: str) -> None:
    if "adapter_config.json" in names:  # a PEFT adapter directory: adapter weights, base elsewhere
        if "adapter_model.safetensors" not in names:
            raise UserError(f"{flag} {path}: a PEFT adapter directory without "
                            f"adapter_model.safetensors (files: {_listing(names)}); safetensors "
                            "adapter weights are required")
        _check_safetensors(folder / "adapter_model.safetensors", path, flag)
        return
    if "config.json" not in names:
        raise UserError(f"{flag} {path}: no config.json (files: {_listing(names)}); expected a "
                        "model written by save_pretrained")
    tensors = [n for n in names if n.endswith(".safetensors")]
    if not tensors:
        pickles = [n for n in names if n in PICKLE_WEIGHTS or n.endswith((".bin", ".pt", ".pth"))]
        found = f"only pickle weights ({', '.join(pickles)}), which focusft does not load (a pickle " \
                "can run code); convert them with save_pretrained(..., safe_serialization=True)" \
            if pickles else f"no *.safetensors weights (files: {_listing(names)})"
        raise UserError(f"{flag} {path}: {found}; safetensors weights are required")
    for name in tensors:
        _check_safetensors(folder / name, path, flag)


def _check_safetensors(file: Path, path: str, flag: str) -> None:
    size = file.stat().st_size
    if size == 0:
        raise UserError(f"{flag} {path}: {file.name} is empty (0 bytes); the weights were not "
                        "written completely; save the model again")
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UserError(f"{flag} {path}: {file.name} ({size} bytes) is not a readable safetensors "
                        f"file ({exc}); save the model again") from None


def check_tokenizer_files(path: str, flag: str = "--model", names: list[str] | None = None) -> None:
    if not is_local(path):
        return
    folder = Path(path).expanduser()
    names = names if names is not None else sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a directory with a tokenizer in it")
    if not names:
        raise UserError(f"{flag} {path}: the directory is empty; expected a tokenizer written by "
                        "save_pretrained (tokenizer.json, tokenizer_config.json)")
    if not any(n in names for n in TOKENIZER_FILES):
        raise UserError(f"{flag} {path}: no tokenizer files ({' / '.join(TOKENIZER_FILES)}) in the "
                        f"directory (files: {_listing(names)}); save the tokenizer next to the model "
                        "(tokenizer.save_pretrained(dir))")


def load_tokenizer(path: str, flag: str = "--model", trust_remote_code: bool = False):
    """A local tokenizer (no download, no remote code unless asked)."""
    from transformers import AutoTokenizer

    from focusft.sources import gguf_file

    if (file := gguf_file.find(path, flag)) is not None:
        return gguf_file.load_tokenizer(file, flag)
    check_tokenizer_files(path, flag)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except Exception as exc:  # a broken tokenizer folder raises many types
        raise UserError(f"{flag} {path}: cannot load its tokenizer ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def check_vocab_fits(model, tokenizer, flag: str = "--model") -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 (zero.Init): the full shape
    if len(tokenizer) > rows:
        raise UserError(f"{flag}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
                        f"table has {rows} rows, so token ids {rows}..{len(tokenizer) - 1} have no "
                        "embedding; use the tokenizer the model was trained with, or resize the "
                        "embeddings (model.resize_token_embeddings(len(tokenizer))) and save it")


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} files)" if len(names) > limit else "")
