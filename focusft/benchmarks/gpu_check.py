"""`python -m focusft.benchmarks.gpu_check`: the checks that need a GPU, in one short run.

    scripts/gpu_check.sh                 # all parts, about 8 minutes on one H100 -> docs/
    python -m focusft.benchmarks.gpu_check --parts equality --device cpu --out /tmp/x  # CPU part

Parts, in order (each one timed; one that fails is reported and the others still run; a part
or a benchmark cell that would start after the ``--budget`` is over is listed as not run)::

    equality  --attention_kernel flex (compiled FlexAttention) == the SDPA path: forward,
              backward, the inner loop's gradients, activation checkpointing, windows,
              soft-caps and sinks, in float32 and bfloat16 (`focusft.benchmarks.flex_equality`)
    train     `focusft train`, 3 steps in bf16 at 8K tokens, a random model of Qwen2.5-0.5B's
              shape (built from a config, no hub), with both kernels
    syncs     one FocuSFT step under torch.cuda.set_sync_debug_mode("warn"): the host-device
              synchronisations left, by the line that caused them, with both kernels
    bench     `focusft bench` of SFT-causal / SFT-GLM / FocuSFT at 4K, 16K, 32K with both
              kernels (and 1 and 64 turns where `focusft bench` has --turns): step time and
              peak GPU memory, on the same Qwen2.5-0.5B shape in bf16

Writes OUT/benchmark-gpu.json (every result, the device, torch's version) and
OUT/benchmark-gpu.md (`render_page`), after every part, so a run cut short still leaves a page.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PARTS = ("equality", "train", "syncs", "bench")
# Qwen2.5-0.5B's shape (its config.json): 24 layers, hidden 896, 14 heads of 64, 2 KV heads
QWEN05 = dict(family="qwen2", layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864,
              vocab=151936, tied=True)
TRAIN_TOKENS = 8192


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m focusft.benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for benchmark-gpu.md and benchmark-gpu.json")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: the equality part's forward checks only (FlexAttention has no CPU backward)")
    p.add_argument("--lengths", default="4k,16k,32k", help="bench lengths (1k = 1024)")
    p.add_argument("--turns", default="1,64", help="bench turn counts (needs `focusft bench --turns`)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds; nothing new starts after it")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; choose from {', '.join(PARTS)}")
    if args.device == "cpu" and args.parts != ["equality"]:
        p.error("--device cpu runs only --parts equality (the other parts need CUDA)")
    args.turns = [int(x) for x in args.turns.split(",") if x]
    return args


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        import platform

        info.update(cpu=platform.processor() or platform.machine())
    return info


# ------------------------------------------------------------------------------------ parts
def part_equality(args, deadline) -> dict:
    from focusft.benchmarks.flex_equality import run_all

    rows = run_all(args.device, deadline=deadline)
    return {"rows": rows, "passed": all(r["passed"] for r in rows)}


def _model_dir(root: Path) -> Path:
    """A random Qwen2.5-0.5B-shaped model (bf16) with the embedded default's tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from focusft.sources.default import load_default_tokenizer

    tok = load_default_tokenizer()
    tok.model_max_length = TRAIN_TOKENS
    cfg = Qwen2Config(vocab_size=QWEN05["vocab"], hidden_size=QWEN05["hidden"],
                      intermediate_size=QWEN05["intermediate"], num_hidden_layers=QWEN05["layers"],
                      num_attention_heads=QWEN05["heads"], num_key_value_heads=QWEN05["kv_heads"],
                      max_position_embeddings=32768, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def _train_data(root: Path) -> Path:
    from focusft.sources.default import default_training_rows, load_default_tokenizer

    rows = default_training_rows(4, seed=0, lengths=TRAIN_TOKENS - 256, tokenizer=load_default_tokenizer())
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_command(model: Path, data: Path, out: Path, kernel: str) -> list[str]:
    return [sys.executable, "-m", "focusft.cli", "train", "--model", str(model), "--data", str(data),
            "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "1",
            "--bf16", "true", "--max_length", str(TRAIN_TOKENS), "--truncation", "left",
            "--attention_kernel", kernel, "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "true", "--inner_lr", "0.1"]


def logged_losses(text: str) -> list[float]:
    """The 'loss' of every Trainer log line ({'loss': ..., ...}) printed in `text`."""
    losses = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and "'loss'" in line:
            try:
                losses.append(float(ast.literal_eval(line)["loss"]))
            except (ValueError, SyntaxError, KeyError):
                pass
    return losses


def run_losses(run_dir: Path, text: str) -> list[float]:
    """The logged losses of a finished run: its result.json's history, else its printed logs."""
    result = run_dir / "result.json"
    if result.exists():
        return [float(h["loss"]) for h in json.loads(result.read_text()).get("history", []) if "loss" in h]
    return logged_losses(text)


def part_train(args, deadline) -> dict:
    root = Path(tempfile.mkdtemp(prefix="gpu-check-train-"))
    model, data = _model_dir(root), _train_data(root)
    runs = {}
    for kernel in ("flex", "sdpa"):  # flex first: the run no GPU has made yet
        left = deadline - time.monotonic()
        if left < 30:
            runs[kernel] = {"status": "not run (time budget)"}
            continue
        cmd = train_command(model, data, root / f"run-{kernel}", kernel)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            text = proc.stdout + proc.stderr
            runs[kernel] = {"status": "ok" if proc.returncode == 0 else f"exit {proc.returncode}",
                            "losses": run_losses(root / f"run-{kernel}", text),
                            "tail": text[-1500:] if proc.returncode else ""}
        except subprocess.TimeoutExpired:
            runs[kernel] = {"status": "timed out (time budget)"}
        runs[kernel].update(wall_s=round(time.monotonic() - start, 1),
                            command="focusft train " + " ".join(cmd[4:]).replace(str(root) + "/", ""))
    return {"runs": runs, "passed": all(r["status"] == "ok" for r in runs.values())}


def sync_sites(kernel: str, seq_len: int = 2048) -> dict:
    """One warm FocuSFT step (tiny model, bf16, GLM, K = 2) under sync debug mode "warn": the
    number of synchronisations, and per causing line (the innermost focusft frame) how many."""
    import warnings

    import torch

    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
    from focusft.benchmarks.flex_equality import tiny_model

    model = tiny_model("cuda", torch.bfloat16).train()
    fast = FastWeights(model, rank=8, alpha=16.0)
    bilevel = BilevelStep(model, fast, InnerConfig(steps=2))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 512, (1, seq_len), generator=g)
    loss_mask = torch.zeros(1, seq_len, dtype=torch.bool)
    loss_mask[:, -64:] = True
    labels = torch.where(torch.roll(loss_mask, -1, 1), torch.roll(ids, -1, 1), -100)
    labels[:, -1] = -100
    batch = {k: v.cuda() for k, v in {"input_ids": ids, "loss_mask": loss_mask, "labels": labels,
             "attention_mask": torch.ones_like(ids), "sample_ids": torch.zeros(1, dtype=torch.long)}.items()}

    def step():
        layout = batch_layout(batch, "glm", kernel)
        arm_inner(fast, bilevel, batch, [1], "response", kernel)
        loss, _ = outer_loss(model, batch, layout, None)
        loss.backward()
        fast.clear()
        model.zero_grad(set_to_none=True)

    step()  # warm: compilation and lazy initialisation are not the step's
    torch.cuda.synchronize()
    from torch._dynamo.utils import counters

    compiled_before = counters["frames"]["ok"]  # a new batch's BlockMask must not recompile
    sites: dict[str, int] = {}
    shown = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "/focusft/" in f.filename]
        where = (f"{frames[-1].filename.split('/focusft/')[-1]}:{frames[-1].lineno} "
                 f"({frames[-1].name})") if frames else "outside focusft"
        sites[where] = sites.get(where, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown
    return {"total": sum(sites.values()), "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1])),
            "recompiled": counters["frames"]["ok"] - compiled_before}


def part_syncs(args, deadline) -> dict:
    kernels = {k: sync_sites(k) for k in ("sdpa", "flex")}
    return {"kernels": kernels, "passed": all(r["recompiled"] == 0 for r in kernels.values())}


def bench_has_turns() -> bool:
    out = subprocess.run([sys.executable, "-m", "focusft.cli", "bench", "--help"], capture_output=True,
                         text=True)
    return "--turns" in out.stdout


def bench_command(out: Path, lengths: str, kernel: str, turns: int | None, timeout: float) -> list[str]:
    cmd = [sys.executable, "-m", "focusft.cli", "bench", "--out", str(out), "--lengths", lengths,
           "--repeats", "1", "--warmup", "1", "--device", "cuda", "--attention-kernel", kernel,
           "--inline", "--dtype", "bfloat16", "--config-timeout", f"{max(timeout, 1):.0f}"]
    for key, value in QWEN05.items():
        cmd += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return cmd + ([] if turns is None else ["--turns", str(turns)])


def part_bench(args, deadline) -> dict:
    turns = args.turns if bench_has_turns() else [None]
    root = Path(tempfile.mkdtemp(prefix="gpu-check-bench-"))
    cells = []
    for turn in turns:
        for kernel in ("sdpa", "flex"):
            left = deadline - time.monotonic()
            label = {"kernel": kernel, "turns": turn if turn is not None else 1}
            if left < 30:
                cells.append({**label, "status": "not run (time budget)"})
                continue
            out = root / f"{kernel}-{turn}"
            cmd = bench_command(out, args.lengths, kernel, turn, left)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-600:]}"
            except subprocess.TimeoutExpired:
                status = "timed out (time budget)"
            found = out / "benchmark.json"
            results = json.loads(found.read_text())["results"] if found.exists() else []
            cells.append({**label, "status": status, "command": "focusft bench " + " ".join(cmd[4:]),
                          "results": [{k: r.get(k) for k in ("method", "seq_len", "status", "median_s",
                                                            "peak_mem_bytes")} for r in results]})
    note = None if turns != [None] else "`focusft bench` has no --turns yet: 1 turn only"
    return {"cells": cells, "note": note, "passed": all(c["status"] == "ok" for c in cells)}


def part_deadline(parts: list[str], now: float, deadline: float) -> float:
    """When parts[0] must stop starting new work: its WEIGHT's share of the time left (time a
    part does not use goes to the ones after it; the last one gets all that is left).

    >>> part_deadline(["syncs", "bench"], 0.0, 60.0), part_deadline(["bench"], 0.0, 60.0)
    (15.0, 60.0)
    """
    weights = [WEIGHT[p] for p in parts]
    return now + (deadline - now) * weights[0] / sum(weights)


WEIGHT = {"equality": 3, "train": 3, "syncs": 1, "bench": 3}  # of the --budget, roughly
RUNNERS = {"equality": part_equality, "train": part_train, "syncs": part_syncs, "bench": part_bench}


# ------------------------------------------------------------------------------------ page
def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _sec(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_page(report: dict) -> str:
    """docs/benchmark-gpu.md from the report (`run` writes both)."""
    m = report["machine"]
    device = m.get("gpu") or m.get("cpu", "cpu")
    lines = ["# GPU check", "",
             f"Device: **{device}**" + (f" ({m['gpu_memory_gib']} GiB, compute capability "
                                        f"{m['capability']}, CUDA {m['cuda']})" if "gpu" in m else "")
             + f"; torch {m['torch']}. Written by `{report['command']}` on {report['created']} "
             f"in {report['wall_s']:.0f} s.", ""]
    parts = report["parts"]
    for name in PARTS:
        if name not in parts:
            continue
        part = parts[name]
        lines += [f"## {name}", ""]
        if "error" in part:
            lines += [f"Failed: `{part['error']}`", ""]
            continue
        if part.get("skipped"):
            lines += [f"Not run: {part['skipped']}", ""]
            continue
        lines += RENDER[name](part) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _equality_lines(part) -> list[str]:
    out = ["FlexAttention (`--attention_kernel flex`) against the SDPA path on the same model, batch "
           "and seeds (`focusft/benchmarks/flex_equality.py`): the largest relative error "
           "||flex - sdpa|| / ||sdpa|| over the outputs and over the gradients of each check.", "",
           "| check | dtype | outputs | gradients | tolerance (out / grad) | result |", "|---|---|---|---|---|---|"]
    for r in part["rows"]:
        if "error" in r:
            out.append(f"| {r['check']} | {r['dtype']} | - | - | - | error: {r['error']} |")
            continue
        tol = r["tolerance"]
        out.append(f"| {r['check']} | {r['dtype']} | {r['output']:.1e} | {r['grad']:.1e} | "
                   f"{tol['output']:.0e} / {tol['grad']:.0e} | {'pass' if r['passed'] else 'FAIL'} |")
    return out


def _train_lines(part) -> list[str]:
    out = ["`focusft train`, 3 steps, bf16, 8K tokens, a random Qwen2.5-0.5B-shaped model built from "
           "its config with the embedded default tokenizer and data rows of ~8K tokens.", "",
           "| kernel | status | logged losses | wall s |", "|---|---|---|---|"]
    for kernel, r in part["runs"].items():
        losses = ", ".join(f"{x:.3f}" for x in r.get("losses", [])) or "-"
        out.append(f"| {kernel} | {r['status']} | {losses} | {r.get('wall_s', '-')} |")
    for kernel, r in part["runs"].items():
        if r.get("tail"):
            out += ["", f"{kernel} output (end):", "", "```", r["tail"].strip(), "```"]
    return out


def _sync_lines(part) -> list[str]:
    out = ["One warm FocuSFT step (K = 2, GLM, bf16, 2048 tokens, tiny model) under "
           "`torch.cuda.set_sync_debug_mode(\"warn\")`: the synchronisations left, by the focusft line "
           "that caused them; frames compiled during that step (0: a new batch's BlockMask reuses "
           "the compiled kernels).", "", "| kernel | syncs | where (count) | compiled in the step |",
           "|---|---|---|---|"]
    for kernel, r in part["kernels"].items():
        where = "; ".join(f"`{k}` ({n})" for k, n in r["sites"].items()) or "-"
        out.append(f"| {kernel} | {r['total']} | {where} | {r.get('recompiled', '-')} |")
    return out


def _bench_lines(part) -> list[str]:
    out = ["`focusft bench`, Qwen2.5-0.5B shape, bf16, batch 1, 1 warm-up + 1 timed step per cell; "
           "peak = `torch.cuda.max_memory_allocated` above the model and optimizer state."]
    if part.get("note"):
        out += ["", part["note"] + "."]
    out += ["", "| kernel | turns | method | tokens | step s | peak GiB | status |", "|---|---|---|---|---|---|---|"]
    for cell in part["cells"]:
        if not cell.get("results"):
            out.append(f"| {cell['kernel']} | {cell['turns']} | - | - | - | - | {cell['status'][:200]} |")
        for r in cell.get("results", []):
            out.append(f"| {cell['kernel']} | {cell['turns']} | {r['method']} | {r['seq_len']} | "
                       f"{_sec(r['median_s'])} | {_gib(r['peak_mem_bytes'])} | {r['status']} |")
    commands = [c["command"] for c in part["cells"] if c.get("command")]
    if commands:
        out += ["", "Commands:", ""] + [f"    {c}" for c in commands]
    return out


RENDER = {"equality": _equality_lines, "train": _train_lines, "syncs": _sync_lines, "bench": _bench_lines}


# ------------------------------------------------------------------------------------ run
def run(args) -> dict:
    """Every part of `args.parts` within the budget; writes the page after each (docstring)."""
    start, deadline = time.monotonic(), time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python -m focusft.benchmarks.gpu_check " + " ".join(args.argv),
              "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine(args.device), "parts": {}, "wall_s": 0.0}
    for i, name in enumerate(args.parts):
        if time.monotonic() > deadline - 20:
            report["parts"][name] = {"skipped": "the time budget (--budget) was spent", "passed": False}
        else:
            began = time.monotonic()
            try:
                report["parts"][name] = RUNNERS[name](args, part_deadline(args.parts[i:], began, deadline))
            except Exception as err:  # one broken part must not hide the others' results
                report["parts"][name] = {"error": f"{type(err).__name__}: {err}"[:800], "passed": False,
                                         "trace": traceback.format_exc()[-3000:]}
            report["parts"][name]["wall_s"] = round(time.monotonic() - began, 1)
            print(f"gpu_check: {name} done in {report['parts'][name]['wall_s']} s", flush=True)
        report["wall_s"] = time.monotonic() - start
        (out / "benchmark-gpu.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "benchmark-gpu.md").write_text(render_page(report))
    return report


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = run(parse_args(argv))
    failed = [name for name, part in report["parts"].items() if not part.get("passed")]
    print("gpu_check: " + ("all parts passed" if not failed else f"not passed: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
