"""The shared steps of every experiment task: the base, one `focusft train` run per method and
seed, and the attention of every final checkpoint.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import METHODS, ExperimentConfig, training_mask
from focusft.experiments.tally import checkpoints, read_jsonl


def make_base(cfg: ExperimentConfig, log) -> str:
    """The reference base checkpoint (seed 0's starting weights), or the one given."""
    path = Path(cfg.out) / "base"
    if cfg.base not in (None, "scratch"):
        return cfg.base
    if (path / "model.safetensors").exists():
        log(f"base: reusing {path}")
        return str(path)
    from focusft.sources import default

    tokenizer = default.load_default_tokenizer()
    model = default.build_default_model(tokenizer, seed=cfg.seeds[0])
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def train_flags(cfg: ExperimentConfig, method: str, seed: int, data: str, probe: str,
                max_length: int, flags: list[str] | None = None) -> list[str]:
    """`focusft train` flags of one run: the method's ``flags`` (default: its entry in the
    plan) on top of the budget every method shares."""
    out = Path(cfg.out) / "runs" / f"{method}-seed{seed}"
    model = [] if cfg.base in (None, "scratch") else ["--model", make_base(cfg, lambda *_: None)]
    flags = METHODS[method] if flags is None else flags
    mask = training_mask(flags)  # attention measured under the training mask, then causal
    masks = mask if mask == "causal" else f"{mask},causal"
    return [*model, "--data", data, "--output_dir", str(out), *flags,
            "--diagnostics_mask", masks,
            "--max_length", str(max_length), "--truncation", "error",
            "--max_steps", str(cfg.steps), "--per_device_train_batch_size", str(cfg.batch_size),
            # the default task is a curriculum (in order); otherwise each seed draws its own
            # order, so seeds differ even from one pretrained base
            "--train_sampling_strategy", "sequential" if cfg.task == "locate" else "random",
            "--learning_rate", str(cfg.learning_rate), "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(cfg.warmup_steps), "--weight_decay", "0.01",
            "--max_grad_norm", "1.0", "--logging_steps", str(max(1, cfg.steps // 10)),
            "--seed", str(seed), "--diagnostics_steps", str(cfg.diagnostics_steps),
            "--eval_data", probe, "--diagnostics_samples", "8",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def train_one(flags: list[str], log) -> dict:
    """One `focusft train` run, resumable at the run level: a run whose ``result.json`` and
    ``final/`` exist is read back, not retrained; a run cut off before it finished (its output
    directory without them) is started again from scratch."""
    import json
    import shutil

    from focusft.training.config import parse_config
    from focusft.training.run import train

    out = Path(flags[flags.index("--output_dir") + 1])
    done = out / "result.json"
    if done.exists() and (out / "final").is_dir():
        result = json.loads(done.read_text())
        log(f"  reusing the finished run {out}")
    else:
        if out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        result = train(parse_config(flags))
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        done.write_text(json.dumps(result, indent=2))
    result["flags"] = flags
    result["diagnostics"] = read_jsonl(out / "diagnostics.jsonl")
    return result


def train_all(cfg: ExperimentConfig, data: str, probe: str, max_length: int, log) -> dict:
    """Every (seed, method) of the plan."""
    runs = {}
    for seed, method in ((seed, method) for seed in cfg.seeds for method in cfg.methods):
        flags = train_flags(cfg, method, seed, data, probe, max_length)
        log(f"train {method} seed {seed}")
        result = train_one(flags, log)
        runs[f"{method}|{seed}"] = result
        log(f"  {method} seed {seed}: loss {result['train_loss']:.4f}, "
            f"{result.get('wall_seconds')} s")
    return runs


def final_attention(cfg, base: str, runs: dict, probe_path: str) -> dict:
    """{model: {mask: averaged metrics}} of the base and final checkpoints on the probe rows."""
    from focusft.diagnostics import measure
    from focusft.diagnostics.evidence import probe_batch
    from focusft.evaluation.runner import load_checkpoint

    rows = read_jsonl(Path(probe_path))
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for name, _, path in checkpoints(base, runs):
        model, tokenizer = load_checkpoint(path)
        batch = probe_batch(tokenizer, rows, "probe", tokenizer.pad_token_id)
        for mask in ("causal", "glm"):
            for metric, value in measure(model, batch, mask).averaged().items():
                acc[name][mask][metric].append(value)
    return {name: {mask: {k: sum(v) / len(v) for k, v in metrics.items()}
                   for mask, metrics in masks.items()} for name, masks in acc.items()}
