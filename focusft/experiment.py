"""SFT vs FocuSFT in miniature (`focusft experiment`): same base, same data, same budget.

Pipeline (every step is an existing focusft function; nothing here re-implements the method):

1. base: ``--base DIR``; else the embedded default model, randomly initialised from each
   training seed (``scratch``: every method of a seed starts from the same weights), saved for
   seed 0 as out/base for the reference rows; ``--base pretrain`` makes a `focusft.pretrain`
   checkpoint (out/base) instead.
2. data: the embedded default's task (one fact hidden in distractor prose, "Where is X?"),
   ``train_samples`` rows ordered from the shortest context to the longest (the curriculum the
   tiny model needs to learn at all), written to out/data/train.jsonl and trained in order.
   The same file trains every method and seed. Probe rows for the attention diagnostics:
   out/data/probe.jsonl (held-out rows at the longest training length).
3. train: for every seed and method, `train_run.train(parse_config([...]))` with identical outer
   hyper-parameters, attention diagnostics every ``diagnostics_steps`` steps. Methods:
       sft-causal       plain SFT, causal mask
       sft-glm          plain SFT, GLM turn mask (the bidirectional-only ablation)
       focusft          bilevel, GLM mask, inner objective = response (the reference)
       focusft-context  bilevel, GLM mask, inner objective = context (the ablation)
4. evaluate (causal inference mask, test splits): the task itself at ``heldout_lengths`` (some
   longer than any training sample); BABILong-style ``tasks`` at ``eval_lengths`` and a
   RULER-style subset (``ruler_tasks``, incl. CWE) as transfer tests; the base is scored too.
   95% confidence intervals: Wilson score interval on correct / total pooled over seeds and
   samples (each (seed, sample) answer one Bernoulli trial; the per-seed range is shown apart).
5. leakage probe: held-out rows with a WRONG answer in the assistant turn; fresh fast weights
   (`FastWeights`) on the trained model adapted for K inner SGD steps on that sample
   (`BilevelStep` / `inner_loop`, armed by `arm_inner`) with the response objective (sees the
   wrong label) and with the context objective (does not). Reported: how often the greedy first
   answer token equals the wrong label before and after, teacher-forced at the answer position.
6. report: out/experiment.json, and a markdown report (default docs/results.md) with the tables,
   the exact command and the git commit; plots next to it (accuracy vs length; sink mass and
   context engagement over training).
"""

from __future__ import annotations

import json
import math
import random
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

METHODS: dict[str, list[str]] = {
    "sft-causal": ["--method", "sft", "--attention", "causal"],
    "sft-glm": ["--method", "sft", "--attention", "glm"],
    "focusft": ["--method", "focusft", "--attention", "glm", "--inner_objective", "response"],
    "focusft-context": ["--method", "focusft", "--attention", "glm", "--inner_objective", "context"],
}
BASE = "base (no SFT)"


def all_methods(cfg) -> dict[str, list[str]]:
    """The main methods, plus the K / inner-lr sweep of --task long (first seed only)."""
    if cfg.task != "long" or not cfg.sweep:
        return METHODS
    from .experiment_long import sweep_methods

    return {**METHODS, **sweep_methods(cfg.sweep_objective)}


@dataclass
class ExperimentConfig:
    out: str = "runs/experiment"
    report: str = "docs/results.md"
    base: str | None = None  # None / "scratch": seeded default init; "pretrain"; or a directory
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # training task: the embedded default's, short-to-long curriculum
    train_lengths: list[int] = field(default_factory=lambda: [32, 32, 32, 64, 64, 128, 256])
    train_samples: int = 5600
    n_people: int = 1
    steps: int = 175  # outer optimizer steps per run (train_samples / batch_size: one pass)
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    diagnostics_steps: int = 25
    # evaluation
    heldout_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    heldout_samples: int = 64  # per length (the same test rows for every model)
    tasks: list[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"])  # BABILong
    eval_lengths: list[int] = field(default_factory=lambda: [0, 1024, 2048, 4096])
    eval_samples: int = 16  # per task and length
    ruler_tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "cwe"])
    # CWE with its worked example (as the official task) needs about 1.2K tokens of the embedded
    # default's tokenizer before any noise, so RULER transfer is measured at 2K
    ruler_lengths: list[int] = field(default_factory=lambda: [2048])
    ruler_samples: int = 10
    few_shot: bool = True
    pretrain_steps: int = 300
    pretrain_seq_len: int = 512
    pretrain_batch: int = 8
    probe_samples: int = 16
    probe_steps: int = 2
    probe_lr: float = 1.0
    data_seed: int = 0
    label: str = "full"
    # --task long (focusft.experiment_long): multi-token BABILong / RULER tasks, sink base
    task: str = "locate"  # "locate": the embedded default's task; "long": sft_tasks
    pretrain_recipe: str = "sinks"
    haystack: str | None = None  # None: the haystack books when present
    long_train_lengths: list[int] = field(default_factory=lambda: [0, 256, 512, 1024])
    # trained at 1K: CWE's worked example alone needs more than that (see ruler_lengths)
    long_ruler_tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "vt"])
    long_ruler_train_lengths: list[int] = field(default_factory=lambda: [1024])
    long_train_samples: int = 64  # per (task, length)
    long_eval_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    inference_masks: list[str] = field(default_factory=lambda: ["causal", "prefix"])
    sweep: bool = True  # K and inner-lr sweep on the first seed (--task long)
    sweep_objective: str = "context"


PRESETS = {
    "full": {},
    "quick": dict(seeds=[0], train_lengths=[32, 32, 32, 64], train_samples=3200, steps=100,
                  warmup_steps=10, diagnostics_steps=25, heldout_lengths=[64, 128, 256],
                  heldout_samples=24, tasks=["qa1"], eval_lengths=[0], eval_samples=6,
                  ruler_tasks=["niah_single_1", "cwe"], ruler_lengths=[2048], ruler_samples=2,
                  few_shot=False, probe_samples=8, label="quick"),
    "smoke": dict(seeds=[0], train_lengths=[16], train_samples=4, steps=1, batch_size=2,
                  warmup_steps=0, diagnostics_steps=1, heldout_lengths=[16, 32],
                  heldout_samples=2, tasks=["qa1"], eval_lengths=[0], eval_samples=2,
                  ruler_tasks=["niah_single_1"], ruler_lengths=[512], ruler_samples=1,
                  few_shot=False, probe_samples=2, label="smoke"),
}
# --task long: per preset, what changes on top of the preset above (focusft.experiment_long).
LONG_PRESETS = {
    # sized to the 90-minute budget on 2 CPU cores (measured: docs/results-long.md, Cost)
    "full": dict(base="pretrain", steps=120, batch_size=8, warmup_steps=12, diagnostics_steps=20,
                 eval_samples=8, ruler_samples=4, pretrain_steps=1000),
    "quick": dict(long_train_lengths=[0, 256], long_ruler_tasks=["niah_single_1"],
                  long_ruler_train_lengths=[512], long_train_samples=8, steps=6, batch_size=8,
                  warmup_steps=1, diagnostics_steps=3, tasks=["qa1", "qa2"],
                  long_eval_lengths=[1024], eval_samples=4, ruler_samples=2, sweep=False,
                  pretrain_steps=30),
    "smoke": dict(long_train_lengths=[0], long_ruler_tasks=[], long_train_samples=2, steps=1,
                  batch_size=2, tasks=["qa1"], long_eval_lengths=[256], eval_samples=1,
                  inference_masks=["causal", "prefix"], sweep=False, pretrain_steps=2,
                  pretrain_seq_len=64, pretrain_batch=2),
}


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion, in percent.

    >>> [round(x, 1) for x in wilson(5, 10)]
    [23.7, 76.3]
    """
    if total == 0:
        return (0.0, 100.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------

def make_base(cfg: ExperimentConfig, log) -> str:
    """The reference base checkpoint (seed 0's starting weights), or the one given."""
    path = Path(cfg.out) / "base"
    if cfg.base not in (None, "scratch", "pretrain"):
        return cfg.base
    if (path / "model.safetensors").exists():
        log(f"base: reusing {path}")
        return str(path)
    if cfg.base == "pretrain":
        from .pretrain import pretrain, recipe_config

        pretrain(recipe_config(cfg.pretrain_recipe, str(path), steps=cfg.pretrain_steps,
                               seq_len=cfg.pretrain_seq_len, batch_size=cfg.pretrain_batch,
                               seed=cfg.data_seed, warmup=max(1, cfg.pretrain_steps // 20),
                               sink_every=max(1, cfg.pretrain_steps // 10),
                               haystack=cfg.haystack), log=log)
        return str(path)
    from . import default

    tokenizer = default.load_default_tokenizer()
    model = default.build_default_model(tokenizer, seed=cfg.seeds[0])
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_train_data(cfg: ExperimentConfig, tokenizer) -> tuple[str, str, int]:
    """Curriculum training rows and diagnostics probe rows; returns both paths and the longest
    training row in tokens."""
    from . import default

    rows = default.default_training_rows(cfg.train_samples, seed=cfg.data_seed,
                                         lengths=cfg.train_lengths, n_people=cfg.n_people,
                                         tokenizer=tokenizer, curriculum=True)
    probe = default.default_eval_rows(8, seed=cfg.data_seed, lengths=max(cfg.train_lengths),
                                      n_people=cfg.n_people, tokenizer=tokenizer)
    data, probe_path = Path(cfg.out) / "data" / "train.jsonl", Path(cfg.out) / "data" / "probe.jsonl"
    _write_jsonl(rows, data)
    _write_jsonl(probe, probe_path)
    longest = max(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                add_special_tokens=False)["input_ids"]) for r in rows[-64:])
    return str(data), str(probe_path), longest


def train_flags(cfg: ExperimentConfig, method: str, seed: int, data: str, probe: str,
                max_length: int) -> list[str]:
    out = Path(cfg.out) / "runs" / f"{method}-seed{seed}"
    model = [] if cfg.base in (None, "scratch") else ["--model", make_base(cfg, lambda *_: None)]
    flags = all_methods(cfg)[method]
    mask = flags[flags.index("--attention") + 1]  # attention measured under the training mask
    return [*model, "--data", data, "--output_dir", str(out), *flags,
            "--diagnostics_mask", mask,
            "--max_length", str(max_length), "--truncation", "error",
            "--max_steps", str(cfg.steps), "--per_device_train_batch_size", str(cfg.batch_size),
            "--train_sampling_strategy", "sequential",
            "--learning_rate", str(cfg.learning_rate), "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(cfg.warmup_steps), "--weight_decay", "0.01",
            "--max_grad_norm", "1.0", "--logging_steps", str(max(1, cfg.steps // 10)),
            "--seed", str(seed), "--diagnostics_steps", str(cfg.diagnostics_steps),
            "--eval_data", probe, "--diagnostics_samples", "8",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def train_all(cfg: ExperimentConfig, data: str, probe: str, max_length: int, log) -> dict:
    from .config import parse_config
    from .train_run import train

    runs = {}
    jobs = [(seed, method) for seed in cfg.seeds for method in cfg.methods]
    jobs += [(cfg.seeds[0], m) for m in all_methods(cfg) if m not in METHODS]
    for seed, method in jobs:
        flags = train_flags(cfg, method, seed, data, probe, max_length)
        log(f"train {method} seed {seed}")
        start = time.perf_counter()
        result = train(parse_config(flags))
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        result["flags"] = flags
        result["diagnostics"] = _read_jsonl(Path(flags[flags.index("--output_dir") + 1])
                                            / "diagnostics.jsonl")
        runs[f"{method}|{seed}"] = result
        log(f"  {method} seed {seed}: loss {result['train_loss']:.4f}, "
            f"{result['wall_seconds']} s")
    return runs


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _models(base: str, runs: dict) -> list[tuple[str, int | None, str]]:
    return [(BASE, None, base)] + [(k.split("|")[0], int(k.split("|")[1]), r["checkpoint"])
                                   for k, r in runs.items()]


def _empty_row() -> dict:
    return {"counts": defaultdict(lambda: [0, 0]), "per_seed": {}, "eval_seconds": 0.0}


def _finish(table: dict) -> dict:
    for row in table.values():
        row["counts"] = {int(k): v for k, v in sorted(row["counts"].items())}
    return table


def evaluate_task(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    """The trained task on held-out (test-split) rows, per length."""
    from . import default
    from .eval_runner import load_checkpoint

    table: dict[str, dict] = {}
    rows_by_length = None
    for name, seed, path in _models(base, runs):
        model, tokenizer = load_checkpoint(path)
        if rows_by_length is None:
            rows_by_length = {n: default.default_training_rows(
                cfg.heldout_samples, seed=cfg.data_seed * 1_000_003 + n, split="test", lengths=n,
                n_people=cfg.n_people, tokenizer=tokenizer) for n in cfg.heldout_lengths}
        row = table.setdefault(name, _empty_row())
        start, per_len = time.perf_counter(), {}
        for n, rows in rows_by_length.items():
            correct = round(default.answer_accuracy(model, tokenizer, rows) * len(rows))
            row["counts"][n][0] += correct
            row["counts"][n][1] += len(rows)
            per_len[n] = 100 * correct / len(rows)
        row["eval_seconds"] += time.perf_counter() - start
        row["per_seed"][seed] = per_len
    log(f"task evaluated at lengths {cfg.heldout_lengths}")
    return _finish(table)


def evaluate_suite(cfg: ExperimentConfig, base: str, runs: dict, suite: str, log) -> dict:
    """{name: {"counts": {length: [score points, samples]}, "per_seed": ...}} for a suite.
    Scores are the official per-sample scores (0/1 for BABILong; RULER CWE gives partial
    credit, counted as a fraction of a point)."""
    from .eval_runner import EvalSpec, evaluate

    tasks = cfg.tasks if suite == "babilong" else cfg.ruler_tasks
    lengths = cfg.eval_lengths if suite == "babilong" else cfg.ruler_lengths
    samples = cfg.eval_samples if suite == "babilong" else cfg.ruler_samples
    if not tasks or not lengths:
        return {}
    spec = EvalSpec(suite=suite, tasks=list(tasks), lengths=[str(x) for x in lengths],
                    samples=samples, seed=cfg.data_seed, masks=["causal"], batch_size=8,
                    few_shot=cfg.few_shot)
    models = _models(base, runs)
    log(f"evaluate {len(models)} checkpoints on {suite} {tasks} at {lengths}")
    results = evaluate([path for _, _, path in models], spec)
    table: dict[str, dict] = {}
    for name, seed, path in models:
        entry = results["models"][f"{path} [causal]"]
        row = table.setdefault(name, _empty_row())
        row["eval_seconds"] += entry["seconds"]
        per_len = defaultdict(lambda: [0.0, 0])
        for by_len in entry["scores"].values():
            for length, score in by_len.items():
                per_len[int(length)][0] += score * samples / 100
                per_len[int(length)][1] += samples
        for length, (c, n) in per_len.items():
            row["counts"][length][0] += c
            row["counts"][length][1] += n
        row["per_seed"][seed] = {length: 100 * c / n for length, (c, n) in per_len.items()}
    return _finish(table)


def probe_rows(cfg: ExperimentConfig, tokenizer) -> list[dict]:
    """Held-out (validation) rows of the trained task whose assistant turn is a WRONG place."""
    from .default import PLACES, default_eval_rows

    rows = default_eval_rows(cfg.probe_samples, seed=cfg.data_seed + 1,
                             lengths=max(cfg.train_lengths), n_people=cfg.n_people,
                             tokenizer=tokenizer)
    rng = random.Random(cfg.data_seed)
    return [{"messages": [r["messages"][0], {"role": "assistant", "content": rng.choice(
        [p for p in PLACES if p != r["target"]])}]} for r in rows]


def leakage_probe(model, tokenizer, wrong_rows: list[dict], attention_kind: str,
                  cfg: ExperimentConfig, objective: str) -> dict:
    """Adapt fresh fast weights on a WRONG label; does the model then answer with it?"""
    import datasets
    import torch

    from . import attention
    from .data import Collator, tokenize_rows
    from .fast_weights import FastWeights
    from .inner import InnerConfig
    from .step import BilevelStep, arm_inner, batch_layout

    attention.use_focusft_attention(model)
    data, _ = tokenize_rows(datasets.Dataset.from_list(wrong_rows), tokenizer, 1_000_000,
                            "error", "leakage probe")
    batch = Collator(pad_id=tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    layout = batch_layout(batch, attention_kind)
    first = (batch["labels"] != -100).int().argmax(1)  # position predicting the first answer token
    rows_idx = torch.arange(len(first))
    wrong_tok = batch["labels"][rows_idx, first]
    fast = FastWeights(model)  # the paper's defaults: rank 32, alpha 64, top 35% MLPs
    step = BilevelStep(model, fast, InnerConfig(steps=cfg.probe_steps, lr=cfg.probe_lr,
                                                objective=objective))

    def answer_logits():
        out = model(input_ids=batch["input_ids"], layout=layout, use_cache=False)
        return out.logits[rows_idx, first].float()

    try:
        with torch.no_grad():
            fast.clear()
            before = answer_logits()
            arm_inner(fast, step, batch, seeds=list(range(len(first))), objective=objective)
            after = answer_logits()  # the inner loop runs inside this forward; logits are adapted
    finally:
        step.remove()
        fast.strip()

    def stats(logits):
        nll = torch.nn.functional.cross_entropy(logits, wrong_tok, reduction="none")
        return {"follows_wrong": 100 * (logits.argmax(-1) == wrong_tok).float().mean().item(),
                "wrong_label_nll": nll.mean().item()}

    inner = step.stats
    return {"objective": objective, "samples": len(first), "before": stats(before),
            "after": stats(after),
            "inner_losses": [float(x) for x in inner.losses] if inner else []}


def probe_all(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    from .eval_runner import load_checkpoint

    probes: dict[str, list] = defaultdict(list)
    wrong_rows = None
    for name, _, path in _models(base, runs):
        kind = "causal" if name == BASE else METHODS[name][3]
        model, tokenizer = load_checkpoint(path)
        wrong_rows = wrong_rows or probe_rows(cfg, tokenizer)
        for objective in ("response", "context"):
            probes[name].append(leakage_probe(model, tokenizer, wrong_rows, kind, cfg, objective))
    log("leakage probe done")
    return dict(probes)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_dirty() -> bool:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=True).stdout
        return bool(out.strip())
    except (OSError, subprocess.CalledProcessError):
        return False


def run_experiment(cfg: ExperimentConfig, command: str, log=print) -> dict:
    from .eval_runner import load_checkpoint

    start = time.perf_counter()
    from .errors import UserError

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method(s) {unknown}; expected some of {list(METHODS)}")
    if cfg.task not in ("locate", "long"):
        raise UserError(f"--task {cfg.task!r}: expected 'locate' or 'long'")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = make_base(cfg, log)
    pretrain_seconds = round(time.perf_counter() - t0, 1)
    _, tokenizer = load_checkpoint(base)
    long = cfg.task == "long"
    if long:
        from . import experiment_long

        data, probe, longest = experiment_long.write_data(cfg, tokenizer)
    else:
        data, probe, longest = write_train_data(cfg, tokenizer)
    runs = train_all(cfg, data, probe, longest + 8, log)
    if long:
        accuracy, probes = experiment_long.evaluate(cfg, base, runs, log), {}
    else:
        accuracy = {"task": evaluate_task(cfg, base, runs, log),
                    "babilong": evaluate_suite(cfg, base, runs, "babilong", log),
                    "ruler": evaluate_suite(cfg, base, runs, "ruler", log)}
        probes = probe_all(cfg, base, runs, log)
    from .experiment_long import final_attention

    summary = {"config": asdict(cfg), "command": command, "commit": git_commit(),
               "dirty": git_dirty(), "base": base, "pretrain_seconds": pretrain_seconds,
               "longest_train_tokens": longest, "runs": runs, "accuracy": accuracy,
               "probes": probes, "final_attention": final_attention(cfg, base, runs, probe),
               "total_seconds": round(time.perf_counter() - start, 1)}
    base_meta = Path(base) / "pretrain.json"
    if base_meta.exists():
        meta = json.loads(base_meta.read_text())
        summary["pretrain"] = {k: meta.get(k) for k in ("recipe", "steps", "final_loss", "seconds",
                                                       "tokens", "parameters", "config", "sinks")}
    text = json.dumps(summary, indent=2, default=str)
    (Path(cfg.out) / "experiment.json").write_text(text)
    report = Path(cfg.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(text)  # every number of the report, machine-readable
    (experiment_long.write_markdown if long else write_markdown)(summary, report)
    return summary


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _fmt_ci(c: float, n: int) -> str:
    lo, hi = wilson(round(c), n)
    return f"{100 * c / n:.1f} [{lo:.0f}, {hi:.0f}]" if n else "-"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(table: dict, lengths: list[int], longest: int, path: Path, xlabel: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(lengths)))
    for name, row in table.items():
        counts = row["counts"]
        ys = [100 * counts[n][0] / counts[n][1] for n in lengths]
        cis = [wilson(round(counts[n][0]), counts[n][1]) for n in lengths]
        ax.errorbar(xs, ys, yerr=[[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis)],
                                  [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis)]],
                    marker="o", capsize=3, label=name, linestyle="--" if name == BASE else "-")
    ax.set_xticks(xs, [str(n) for n in lengths])
    inside = [i for i, n in enumerate(lengths) if n <= longest]
    ax.axvline((max(inside) + 0.5) if inside else -0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel + " (dotted line: longest training length)")
    ax.set_ylabel("accuracy (%), 95% Wilson CI")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def diagnostics_by_method(summary: dict) -> dict:
    """{method: {step: {metric: mean over seeds}}} from each run's diagnostics.jsonl."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for key, run in summary["runs"].items():
        for record in run.get("diagnostics", []):
            for metric, value in record["mean"].items():
                if value is not None:
                    acc[key.split("|")[0]][record["step"]][metric].append(value)
    return {m: {step: {k: sum(v) / len(v) for k, v in metrics.items()}
                for step, metrics in sorted(steps.items())} for m, steps in acc.items()}


def plot_diagnostics(by_method: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (metric, title) in zip(axes, (("sink_first", "sink mass (first token)"),
                                          ("context", "context engagement"),
                                          ("evidence", "evidence mass"))):
        for name, steps in by_method.items():
            xs = list(steps)
            ax.plot(xs, [steps[x].get(metric, float("nan")) for x in xs], marker=".", label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
    axes[0].legend(fontsize=7)
    fig.suptitle("response-query attention on held-out probe rows, training mask, mean of "
                 "layers and seeds", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_table(table: dict, lengths: list[int], longest: int) -> list[str]:
    heads = [f"{n}{'*' if n > longest else ''}" for n in lengths]
    lines = ["| method | " + " | ".join(heads) + " | all lengths | per-seed mean (min-max) |",
             "|---|" + "---|" * (len(lengths) + 2)]
    for name, row in table.items():
        counts = row["counts"]
        cells = [_fmt_ci(*counts[n]) for n in lengths]
        c, n = sum(counts[x][0] for x in lengths), sum(counts[x][1] for x in lengths)
        seeds = [sum(v.values()) / len(v) for v in row["per_seed"].values()]
        spread = (f"{min(seeds):.1f}-{max(seeds):.1f}" if len(seeds) > 1 else "1 seed")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt_ci(c, n)} | {spread} |")
    return lines


def diagnostics_table(by_method: dict) -> list[str]:
    lines = ["| method | sink@1 start -> end | sink@4 start -> end | engagement start -> end | "
             "evidence mass start -> end | evidence rank start -> end |", "|---|---|---|---|---|---|"]
    for name, steps in by_method.items():
        first, last = steps[min(steps)], steps[max(steps)]
        cells = [f"{first.get(k, float('nan')):.4f} -> {last.get(k, float('nan')):.4f}"
                 for k in ("sink_first", "sink", "context", "evidence")]
        cells.append(f"{first.get('evidence_rank', float('nan')):.1f} -> "
                     f"{last.get('evidence_rank', float('nan')):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cost_table(summary: dict) -> list[str]:
    per = defaultdict(list)
    for key, r in summary["runs"].items():
        per[key.split("|")[0]].append(r)
    lines = ["| method | runs | train wall-clock s / run (mean) | x sft-causal | final train loss (mean) |",
             "|---|---|---|---|---|"]
    ref = None
    for name, rs in per.items():
        wall = sum(r["wall_seconds"] for r in rs) / len(rs)
        ref = ref or (wall if name == "sft-causal" else None)
        loss = sum(r["train_loss"] for r in rs) / len(rs)
        ratio = f"{wall / ref:.2f}" if ref else "-"
        lines.append(f"| {name} | {len(rs)} | {wall:.1f} | {ratio} | {loss:.4f} |")
    return lines


def probe_table(summary: dict) -> list[str]:
    lines = ["| model | inner objective | samples | follows wrong label before -> after (%) | wrong-label NLL before -> after |",
             "|---|---|---|---|---|"]
    for name, probes in summary["probes"].items():
        merged = defaultdict(list)
        for p in probes:
            merged[p["objective"]].append(p)
        for objective, ps in merged.items():
            n = sum(p["samples"] for p in ps)
            fb = sum(p["before"]["follows_wrong"] * p["samples"] for p in ps) / n
            fa = sum(p["after"]["follows_wrong"] * p["samples"] for p in ps) / n
            nb = sum(p["before"]["wrong_label_nll"] * p["samples"] for p in ps) / n
            na = sum(p["after"]["wrong_label_nll"] * p["samples"] for p in ps) / n
            lines.append(f"| {name} | {objective} | {n} | {fb:.1f} -> {fa:.1f} | {nb:.2f} -> {na:.2f} |")
    return lines


def _pooled(row: dict, lengths: list[int]) -> tuple[float, int]:
    return (sum(row["counts"][x][0] for x in lengths), sum(row["counts"][x][1] for x in lengths))


def reading(summary: dict) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims about them)."""
    cfg, out = summary["config"], []
    chance = 100 / 6  # the task's answers are one of six places
    longest = max(cfg["train_lengths"])
    for suite, lengths, what in (("task", cfg["heldout_lengths"], "the trained task"),
                                 ("babilong", cfg["eval_lengths"], "BABILong transfer"),
                                 ("ruler", cfg["ruler_lengths"], "RULER transfer")):
        table = summary["accuracy"].get(suite) or {}
        acc = {name: _pooled(row, lengths) for name, row in table.items()}
        ref = acc.get("sft-causal")
        for name, (c, n) in acc.items():
            if not n:
                continue
            lo, hi = wilson(round(c), n)
            extra = ""
            if suite == "task":
                extra = (" (chance about 17%: " + ("indistinguishable from chance" if lo <= chance <= hi
                         else "above chance" if lo > chance else "below chance") + ")")
            out.append(f"- {what}, {name}: {100 * c / n:.1f}% [{lo:.0f}, {hi:.0f}]{extra}.")
        for name in ("sft-glm", "focusft", "focusft-context"):
            if ref is None or name not in acc or not ref[1]:
                continue
            a, b = wilson(round(acc[name][0]), acc[name][1]), wilson(round(ref[0]), ref[1])
            overlap = a[0] <= b[1] and b[0] <= a[1]
            diff = 100 * (acc[name][0] / acc[name][1] - ref[0] / ref[1])
            out.append(f"- {what}, {name} vs sft-causal: {diff:+.1f} points; the 95% intervals "
                       f"{'overlap, so this run does not separate them' if overlap else 'do not overlap'}.")
        if suite == "task":
            longer = [n for n in lengths if n > longest]
            for name, row in table.items():
                if longer:
                    out.append(f"- {name} beyond the training lengths ({', '.join(map(str, longer))}): "
                               f"{_fmt_ci(*_pooled(row, longer))}.")
    for name, probes in summary["probes"].items():
        resp = [p for p in probes if p["objective"] == "response"]
        ctx = [p for p in probes if p["objective"] == "context"]
        if resp and ctx:
            fa = sum(p["after"]["follows_wrong"] for p in resp) / len(resp)
            ca = sum(p["after"]["follows_wrong"] for p in ctx) / len(ctx)
            out.append(f"- leakage, {name}: after {cfg['probe_steps']} inner steps the model "
                       f"follows a wrong label in {fa:.0f}% of probes with the response objective "
                       f"and {ca:.0f}% with the context objective.")
    by_method = diagnostics_by_method(summary)
    for name, steps in by_method.items():
        first, last = steps[min(steps)], steps[max(steps)]
        if first.get("sink_first") and last.get("sink_first") is not None:
            out.append(f"- attention, {name}: first-token sink mass {first['sink_first']:.4f} -> "
                       f"{last['sink_first']:.4f} (x{last['sink_first'] / first['sink_first']:.2f}), "
                       f"evidence mass {first.get('evidence', float('nan')):.4f} -> "
                       f"{last.get('evidence', float('nan')):.4f} over training.")
    return out


def write_markdown(summary: dict, path: Path) -> None:
    from .experiment_long import attention_table

    cfg = summary["config"]
    longest = max(cfg["train_lengths"])
    plots = Path("results")
    task_plot = plots / f"task_accuracy_vs_length_{cfg['label']}.png"
    babi_plot = plots / f"babilong_accuracy_vs_length_{cfg['label']}.png"
    diag_plot = plots / f"attention_over_training_{cfg['label']}.png"
    plot_accuracy(summary["accuracy"]["task"], cfg["heldout_lengths"], longest,
                  path.parent / task_plot, "context tokens")
    if summary["accuracy"].get("babilong"):
        plot_accuracy(summary["accuracy"]["babilong"], cfg["eval_lengths"], -1,
                      path.parent / babi_plot, "noise tokens")
    by_method = diagnostics_by_method(summary)
    plot_diagnostics(by_method, path.parent / diag_plot)
    pre = summary.get("pretrain") or {}
    quick = cfg["label"] != "full"
    lines = [f"# SFT vs FocuSFT in miniature ({cfg['label']} run)", ""]
    if cfg["label"] == "reduced":
        lines += ["> **This is a reduced run** (fewer seeds, steps, samples, tasks or methods than "
                  "`focusft experiment`); it is not the full experiment.", ""]
    elif quick:
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT. The full configuration is "
                  "`focusft experiment` without `--quick`.", ""]
    base = (f"`{summary['base']}`, pretrained {pre.get('steps')} steps ({pre.get('parameters')} "
            f"parameters, final loss {pre.get('final_loss')})" if pre else
            "the embedded default model (6 layers, hidden 128), randomly initialised from each "
            f"training seed; `{summary['base']}` holds seed {cfg['seeds'][0]}'s for the reference rows"
            if cfg["base"] in (None, "scratch") else f"`{summary['base']}`")
    lines += ["## How these numbers were made", "",
              f"- command: `{summary['command']}`",
              f"- git commit: `{summary['commit']}`" + (" (working tree had uncommitted changes)"
                                                       if summary.get("dirty") else ""),
              f"- total wall-clock: {summary['total_seconds']:.0f} s on this machine (2 CPU cores)",
              f"- base: {base}",
              f"- training data: the embedded default's task (one fact hidden in distractor prose, "
              f"'Where is X?', {cfg['n_people']} person(s)), {cfg['train_samples']} rows ordered "
              f"from short to long contexts (lengths drawn from {cfg['train_lengths']} tokens), "
              f"trained in order; longest training sample {summary['longest_train_tokens']} tokens",
              f"- budget per run (same for every method): {cfg['steps']} optimizer steps x batch "
              f"{cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, cosine, {cfg['warmup_steps']} "
              f"warm-up steps; seeds {cfg['seeds']}; FocuSFT inner loop at the paper's defaults "
              "(K=2, SGD lr 1.0, rank 32, alpha 64, top 35% of layers, MLP projections)",
              f"- evaluation: greedy, causal inference mask, test splits; the task at "
              f"{cfg['heldout_lengths']} tokens ({cfg['heldout_samples']} rows each); BABILong "
              f"{', '.join(cfg['tasks'])} at noise {cfg['eval_lengths']} ({cfg['eval_samples']} "
              f"each); RULER {', '.join(cfg['ruler_tasks'])} at {cfg['ruler_lengths']} "
              f"({cfg['ruler_samples']} each)",
              "",
              "Cells: accuracy (%) pooled over seeds and samples, with the 95% **Wilson score** "
              "interval in brackets (each (seed, sample) answer one Bernoulli trial; seed-to-seed "
              "spread in the last column). `*`: longer than any training sample.", "",
              "## The trained task, held out, by context length", "",
              *accuracy_table(summary["accuracy"]["task"], cfg["heldout_lengths"], longest), "",
              f"![task accuracy vs length]({task_plot.as_posix()})", ""]
    if summary["accuracy"].get("babilong"):
        lines += ["## Transfer: BABILong-style (never trained on), by noise length", "",
                  *accuracy_table(summary["accuracy"]["babilong"], cfg["eval_lengths"], 10 ** 9), "",
                  f"![babilong accuracy vs length]({babi_plot.as_posix()})", ""]
    if summary["accuracy"].get("ruler"):
        lines += ["## Transfer: RULER-style subset (official scores; CWE gives partial credit)", "",
                  *accuracy_table(summary["accuracy"]["ruler"], cfg["ruler_lengths"], 10 ** 9), ""]
    lines += ["## Attention during training", "",
              "Measured by the training callback (`--diagnostics_steps`) on 8 held-out probe rows "
              "at the longest training length, under each method's training mask (causal for "
              "sft-causal, GLM otherwise), mean over layers and seeds "
              "(definitions: docs/diagnostics.md). Step 0 is the base model.", "",
              *diagnostics_table(by_method), "",
              f"![attention over training]({diag_plot.as_posix()})", "",
              "The base and the final checkpoints on the same probe rows, under each mask "
              "(mean over layers and seeds):", "", *attention_table(summary["final_attention"]), "",
              "## Cost", "", *cost_table(summary), "",
              "## Leakage probe", "",
              f"Held-out rows with a WRONG answer in the assistant turn; fresh fast weights "
              f"adapted for {cfg['probe_steps']} SGD steps (lr {cfg['probe_lr']}, per-tensor clip 1.0) "
              "on that sample with the given inner objective, under the model's training mask. "
              "`follows wrong label`: greedy first answer token (teacher-forced at the answer "
              "position) equals the wrong label. A large rise with the response objective means the "
              "inner loop can write the label into the fast weights, so the outer loss can be "
              "lowered without reading the context.", "", *probe_table(summary), "",
              "## Reading (computed from the tables above)", "", *reading(summary), "",
              "## What this run does not cover", "",
              "- no sweeps of K, inner lr or fast-layer fraction; no validation-split tuning;",
              "- Wilson intervals treat seeds x samples as independent trials; with few seeds they "
              "understate between-seed variance.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def config_from_args(args) -> ExperimentConfig:
    preset = "smoke" if getattr(args, "smoke", False) else "quick" if args.quick else "full"
    cfg = replace(ExperimentConfig(), **PRESETS[preset])
    task = getattr(args, "task", None) or "locate"
    if task == "long":
        cfg = replace(cfg, task="long", **LONG_PRESETS[preset])
    updates = {"out": args.out, "report": args.report, "base": args.base,
               "haystack": getattr(args, "haystack", None)}
    if args.seeds:
        updates["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.methods:
        updates["methods"] = args.methods.split(",")
    if args.tasks:
        updates["tasks"] = args.tasks.split(",")
    for name in ("steps", "eval_samples"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                from .errors import UserError

                raise UserError(f"--{name} must be >= 1, got {value}")
            updates[name] = value
    if getattr(args, "no_sweep", False):
        updates["sweep"] = False
    reduced = {"steps", "eval_samples", "seeds", "sweep", "tasks", "methods"} & set(updates)
    if preset == "full" and reduced:
        updates["label"] = "reduced"  # never presented as the full run
    return replace(cfg, **{k: v for k, v in updates.items() if v is not None})


def command_line() -> str:
    return "focusft " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "focusft"
