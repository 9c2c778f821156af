"""`focusft diagnose`: where do a model's response tokens look? Sink mass, context engagement,
evidence mass and rank, per layer, under the GLM mask and/or causal.

    focusft diagnose --model runs/sft --model runs/focusft --data eval.jsonl --samples 16 \\
        --mask both --out diag/

Each ``--model`` is a local Hugging Face checkpoint directory (model + tokenizer; nothing is
downloaded, no remote code runs). Rows are chat rows (``messages``), optionally with
``evidence``: character spans of the supporting facts in the first user message. Writes to
``--out``: ``table.md`` (also printed), ``metrics.json``, ``layers.png`` (per-layer sink mass
and engagement bars, models side by side) and ``strip.png`` (attention received over the
positions of one sample, evidence marked). Metric definitions: docs/diagnostics.md.
"""

from __future__ import annotations

import os
import sys

from focusft.errors import UserError
from focusft.commands.lists import list_flag

MASK_CHOICES = {"glm": ["glm"], "causal": ["causal"], "both": ["glm", "causal"]}
DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers) -> None:
    p = subparsers.add_parser("diagnose", help="attention-sink / context-engagement diagnostics",
                              description=__doc__.split("\n\n")[0].replace("\n", " "))
    list_flag(p, "--model", required=True, keep_paths=True, metavar="PATH",
              help="local checkpoint directories or .gguf files (several: compared side by side)")
    list_flag(p, "--data", required=True, metavar="FILE", join=",",
              help="chat rows: .jsonl/.json/.parquet files, globs, or a save_to_disk directory")
    p.add_argument("--samples", type=int, default=8, help="first N rows to measure (>= 1)")
    p.add_argument("--mask", choices=tuple(MASK_CHOICES), default="both",
                   help="attention layout: glm (as FocuSFT trains), causal, or both")
    p.add_argument("--out", default="diagnostics", metavar="DIR", help="output directory")
    p.add_argument("--sink_k", type=int, default=4, help="the first k tokens count as sinks (>= 1)")
    p.add_argument("--chunk_size", type=int, default=None,
                   help="response queries per chunk (default: sized to ~64 MiB of scores)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.set_defaults(func=run)


def run(args) -> int:
    _check_flags(args)
    from focusft.data.pipeline import load_rows
    from focusft.diagnostics.report import (
        markdown_table,
        plot_layers,
        plot_strip,
        to_json,
        write_json,
        write_text,
    )

    rows = load_rows(args.data)
    rows = [rows[i] for i in range(min(args.samples, len(rows)))]
    masks = MASK_CHOICES[args.mask]
    results, strip_sample = {}, None
    for label, path in _labels(args.model):
        results[label], has_evidence = _measure_model(path, rows, masks, args)
        strip_sample = strip_sample if strip_sample is not None else _first(has_evidence)
    table = markdown_table(results, args.sink_k)
    print(table, end="")
    os.makedirs(args.out, exist_ok=True)
    write_text(os.path.join(args.out, "table.md"), table)
    meta = {"data": args.data, "samples": len(rows), "sink_k": args.sink_k, "masks": masks,
            "model_paths": dict(_labels(args.model)), "weights": _weights(args)}
    write_json(os.path.join(args.out, "metrics.json"), to_json(results, meta))
    plot_layers(os.path.join(args.out, "layers.png"), results, args.sink_k)
    plot_strip(os.path.join(args.out, "strip.png"), results, masks[0], strip_sample or 0)
    print(f"wrote {args.out}/table.md, metrics.json, layers.png, strip.png", file=sys.stderr)
    return 0


def _check_flags(args) -> None:
    for flag, value in (("--samples", args.samples), ("--sink_k", args.sink_k)):
        if value < 1:
            raise UserError(f"{flag} is {value}; expected an integer >= 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UserError(f"--chunk_size is {args.chunk_size}; expected an integer >= 1")
    from focusft.sources.model_dir import check_model_dir

    from focusft.sources import gguf_file

    for path in args.model:
        if not os.path.isdir(path) and gguf_file.find(path) is None:
            raise UserError(f"--model {path}: not a local checkpoint directory; pass a directory "
                            "written by save_pretrained (or a .gguf file)")
        check_model_dir(path, "--model")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")


def _weights(args) -> dict[str, str]:
    """What each model's weights are, where it records it (a GGUF quantization dequantized)."""
    from focusft.sources.pretrained import provenance

    notes = {label: provenance(path, args.dtype) for label, path in _labels(args.model)}
    for label, note in notes.items():
        if note:
            print(f"{label}: {note}", file=sys.stderr)
    return {label: note for label, note in notes.items() if note}


def _labels(paths: list[str]) -> list[tuple[str, str]]:
    """A short, unique label per model: its directory name, or parent/name where names repeat
    (runs/a/final, runs/b/final -> a/final, b/final); #2, #3 ... on exact repeats."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    names = [p[-1] for p in parts]
    out, seen = [], {}
    for path, part, name in zip(paths, parts, names):
        if names.count(name) > 1 and len(part) > 1:
            name = "/".join(part[-2:])
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", path))
    return out


def _first(flags: list[bool]) -> int | None:
    return next((i for i, flag in enumerate(flags) if flag), None)


def _load(path: str, args):
    import torch
    from transformers import AutoModelForCausalLM

    from focusft.sources.model_dir import check_model_dir, check_vocab_fits, load_tokenizer

    from focusft.sources import adapter_dir, gguf_file

    check_model_dir(path, "--model")
    if (file := gguf_file.find(path, "--model")) is not None:
        model, tokenizer, _ = gguf_file.load(file, args.dtype, "--model")
        return _placed(model, tokenizer, path, args)
    tokenizer = load_tokenizer(path, "--model")
    if adapter_dir.is_adapter_dir(path):  # a --use_peft run's final/: measured merged
        return _placed(adapter_dir.load_merged(path, args.dtype), tokenizer, path, args)
    try:  # safetensors only: a pickled checkpoint is refused above and never read here
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                     use_safetensors=True, dtype=getattr(torch, args.dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--model {path}: cannot load the checkpoint ({exc})") from exc
    return _placed(model, tokenizer, path, args)


def _placed(model, tokenizer, path: str, args):
    import torch

    from focusft.sources.model_dir import check_vocab_fits

    check_vocab_fits(model, tokenizer, f"--model {path}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tokenizer, model.to(device)


def _measure_model(path: str, rows: list[dict], masks: list[str], args):
    """{mask: Diagnostics} over the rows, one row per forward (no padding, bounded memory)."""
    from focusft.diagnostics import Diagnostics, measure
    from focusft.diagnostics.evidence import render_sample

    tokenizer, model = _load(path, args)
    if "glm" in masks:  # measured under the training mask: focusft's attention path
        from focusft.core import models
        from focusft.core.selfcheck import check_attention

        models.prepare(model)  # layers that drop layout= get it passed on, as in training
        check_attention(model, "glm", where=f"--model {path}: ")
    samples = [render_sample(tokenizer, row, f"{args.data} row {i}") for i, row in enumerate(rows)]
    if not any(sum(s.loss_mask) for s in samples):
        raise UserError(f"{args.data}: none of the first {len(rows)} rows has an assistant token")
    out = {}
    for mask in masks:
        parts = []
        for i, sample in enumerate(samples):
            print(f"{path}: {mask} mask, row {i + 1}/{len(samples)} ({len(sample.input_ids)} tokens)",
                  file=sys.stderr)
            try:
                parts.append(measure(model, sample.batch(), mask, args.sink_k, args.chunk_size))
            except RuntimeError as exc:
                if "AttentionInterface" not in str(exc):
                    raise
                raise UserError(f"--model {path}: {exc}") from exc
        out[mask] = Diagnostics.cat(parts)
    return out, [s.evidence is not None and any(s.evidence) for s in samples]
