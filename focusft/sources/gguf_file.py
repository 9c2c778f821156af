"""GGUF models in: a ``.gguf`` file read by transformers' own GGUF loader, as a plain model.

``--model`` (and ``FocusTrainer(model=...)``) accepts a ``.gguf`` file, or a directory holding
exactly one ``.gguf`` file and no ``config.json``. transformers reads its config, tokenizer
(chat template included) and weights (``from_pretrained(folder, gguf_file=name)``; it needs the
``gguf`` package, ``pip install 'focusft[gguf]'``), dequantizing every tensor to the requested
dtype. The model transformers returns is marked as quantized with GGUF and refuses
``save_pretrained``; `load` therefore rebuilds a plain model from the same config (without
``quantization_config``) and copies the state dict into it, so what training saves is an ordinary
safetensors model.

Everything a load would refuse is refused first, from the file's metadata alone (`inspect`):
the ``gguf`` package missing, a file that is not GGUF (its first four bytes are not ``GGUF``),
an architecture the installed transformers cannot map, or a tensor type the installed ``gguf``
cannot dequantize. Each refusal is one paragraph naming the flag and the file (a `UserError`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from focusft.errors import UserError

logger = logging.getLogger("focusft")

MAGIC = b"GGUF"
PLAIN_TYPES = ("F32", "F16", "BF16", "F64")  # stored unquantized: nothing to dequantize


@dataclass
class GgufInfo:
    """What the file's metadata says: architecture, name, and the count of each tensor type."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int]

    @property
    def quantization(self) -> str:
        """The dominant quantized type (e.g. ``Q4_1``), or the float type if none is quantized."""
        quantized = {k: v for k, v in self.tensor_types.items() if k not in PLAIN_TYPES}
        counts = quantized or self.tensor_types
        return max(counts, key=counts.get) if counts else "none"

    def describe(self, dtype: str) -> str:
        """One line for logs and reports: what the weights are and that they were dequantized."""
        types = ", ".join(f"{k} x{v}" for k, v in sorted(self.tensor_types.items()))
        return (f"GGUF {self.path.name} ({self.architecture}, {self.quantization} quantization "
                f"dequantized to {dtype}; tensors: {types})")


def find(path: str | None, flag: str = "--model") -> Path | None:
    """The GGUF file `path` names (a ``.gguf`` file, or a folder with exactly one), else None."""
    if not path:
        return None
    target = Path(path).expanduser()
    if target.is_file():
        return target if target.suffix.lower() == ".gguf" or _has_magic(target) else None
    if not target.is_dir() or (target / "config.json").exists():
        return None
    files = sorted(p for p in target.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(files) > 1:
        raise UserError(f"{flag} {path}: the directory holds {len(files)} GGUF files "
                        f"({', '.join(p.name for p in files)}); pass the one to load as "
                        f"{flag} {Path(path) / files[0].name}")
    return files[0] if files else None


def _has_magic(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


def require_gguf(flag: str, file: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f"{flag} {file}: reading a GGUF file needs the 'gguf' package, which is "
                        "not installed; install it with pip install 'focusft[gguf]' (or pip "
                        "install gguf), or pass a model directory written by save_pretrained "
                        "instead") from None


def _check_magic(file: Path, flag: str) -> None:
    with open(file, "rb") as handle:
        head = handle.read(4)
    if head != MAGIC:
        raise UserError(f"{flag} {file}: not a GGUF file (it starts with {head!r}, a GGUF file "
                        f"starts with {MAGIC!r}); pass a .gguf model file or a model directory "
                        "written by save_pretrained")


def _field_text(reader, key: str) -> str:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return ""
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def inspect(file: Path, flag: str = "--model") -> GgufInfo:
    """Read the metadata and refuse what the installed transformers / gguf cannot load."""
    require_gguf(flag, file)
    _check_magic(file, flag)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(file))
    except Exception as exc:  # a truncated or corrupt file raises several types
        raise UserError(f"{flag} {file}: cannot read it as GGUF ({type(exc).__name__}: {exc}); "
                        "the file may be truncated, download it again") from None
    info = GgufInfo(file, _field_text(reader, "general.architecture"),
                    _field_text(reader, "general.name"),
                    dict(Counter(t.tensor_type.name for t in reader.tensors)))
    _check_architecture(info, flag)
    _check_tensor_types(info, flag)
    return info


def _check_architecture(info: GgufInfo, flag: str) -> None:
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    known = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # not models
    # transformers renames some llama.cpp spellings (qwen2moe -> qwen2_moe, gpt-oss -> gpt_oss,
    # t5encoder -> t5): compare without separators, and any T5 variant as t5
    canon = {_canon(k) for k in known}
    if _canon(info.architecture) not in canon and "t5" not in info.architecture:
        raise UserError(f"{flag} {info.path}: its architecture {info.architecture!r} is not one "
                        f"transformers {transformers.__version__} can load from GGUF (it can: "
                        f"{', '.join(known)}); convert the model to a Hugging Face directory with "
                        "another tool, or upgrade transformers")


def _canon(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _check_tensor_types(info: GgufInfo, flag: str) -> None:
    import importlib.metadata

    from gguf import quants

    known = {t.name for t in quants._type_traits} | set(PLAIN_TYPES)
    unknown = sorted(t for t in info.tensor_types if t not in known)
    if unknown:
        version = importlib.metadata.version("gguf")
        raise UserError(f"{flag} {info.path}: tensor type(s) {', '.join(unknown)} cannot be "
                        f"dequantized by the installed gguf {version} (it handles "
                        f"{', '.join(sorted(known))}); use a file with another quantization, "
                        "or upgrade gguf")


def _from_file(auto, what: str, file: Path, flag: str):
    """``auto.from_pretrained`` of the GGUF file's ``what``, a UserError where transformers
    cannot read it."""
    inspect(file, flag)
    try:
        return auto.from_pretrained(str(file.parent), gguf_file=file.name)
    except (ValueError, NotImplementedError, KeyError, OSError) as err:
        raise UserError(f"{flag} {file}: transformers cannot read the {what} of this GGUF file "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        ) from None


def load_tokenizer(file: Path, flag: str = "--model"):
    """The tokenizer (with the chat template) stored in a GGUF file."""
    from transformers import AutoTokenizer

    return _from_file(AutoTokenizer, "tokenizer", file, flag)


def read_config(file: Path, flag: str = "--model"):
    """The model config stored in the file's metadata (no tensor is read)."""
    from transformers import AutoConfig

    return _from_file(AutoConfig, "config", file, flag)


def load(file: Path, dtype: str = "float32", flag: str = "--model", rope_scaling: dict | None = None):
    """(plain model, tokenizer, info) from a GGUF file, dequantized to `dtype` (see docstring);
    `rope_scaling` (``focusft.sources.rope_scaling``) goes into the plain model's config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect(file, flag)
    logger.warning("focusft: loading %s", info.describe(dtype))
    folder, name = str(file.parent), file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                         dtype=getattr(torch, dtype))
    except (ValueError, NotImplementedError, KeyError, OSError) as err:
        raise UserError(f"{flag} {file}: transformers cannot load this GGUF file "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        ) from None
    return plain_model(quantized, dtype, rope_scaling), tokenizer, info


def plain_model(quantized, dtype: str = "float32", rope_scaling: dict | None = None):
    """The same weights in a model built from the config without ``quantization_config``
    (and with `rope_scaling` in it, when given)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if rope_scaling:
        from focusft.sources.rope_scaling import scaled

        config = scaled(config, rope_scaling)
    config.name_or_path = str(quantized.config.name_or_path or "")
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not match the rebuilt model: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    model.tie_weights()
    if quantized.generation_config is not None:
        model.generation_config = quantized.generation_config
    return model.eval()


def save_plain(file: Path, out: Path, dtype: str = "float32", flag: str = "--model") -> Path:
    """Write the GGUF model as a plain directory at `out` (atomically), with its provenance."""
    import json
    import os
    import shutil
    import tempfile

    model, tokenizer, info = load(file, dtype, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"_{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {"gguf_file": str(file), "architecture": info.architecture, "name": info.name,
                  "quantization": info.quantization, "gguf_tensor_types": info.tensor_types,
                  "dtype": dtype, "weights": info.describe(dtype)}
        (tmp / "focusft_source.json").write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
