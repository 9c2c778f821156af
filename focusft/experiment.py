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
   context engagement over training): `focusft.experiment_report`.
"""

from __future__ import annotations

import json
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


def training_mask(flags: list[str]) -> str:
    return flags[flags.index("--attention") + 1]


def train_flags(cfg: ExperimentConfig, method: str, seed: int, data: str, probe: str,
                max_length: int) -> list[str]:
    out = Path(cfg.out) / "runs" / f"{method}-seed{seed}"
    model = [] if cfg.base in (None, "scratch") else ["--model", make_base(cfg, lambda *_: None)]
    flags = all_methods(cfg)[method]
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
    from .experiment_report import write_markdown

    (experiment_long.write_markdown if long else write_markdown)(summary, report)
    return summary


def config_from_args(args) -> ExperimentConfig:
    preset = "smoke" if getattr(args, "smoke", False) else "quick" if args.quick else "full"
    cfg = replace(ExperimentConfig(), **PRESETS[preset])
    task = getattr(args, "task", None) or "locate"
    if task == "long":  # its own report, so it never overwrites the default task's
        cfg = replace(cfg, task="long", report="docs/results-long.md", out="runs/experiment-long",
                      **LONG_PRESETS[preset])
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
