"""SFT vs FocuSFT in miniature (`focusft experiment`): same base, same data, same budget.

Pipeline (every step is an existing focusft function; nothing here re-implements the method):

1. base: ``--base DIR`` or a fresh `focusft.pretrain` checkpoint (out/base).
2. data: BABILong-style chat rows (`make_chat_rows(..., split="train")`) at the training noise
   lengths, written to out/data/train.jsonl. The same file trains every method and seed.
3. train: for every seed and method, `train_run.train(parse_config([...]))` from the base with
   identical outer hyper-parameters. Methods:
       sft-causal       plain SFT, causal mask
       sft-glm          plain SFT, GLM turn mask (the bidirectional-only ablation)
       focusft          bilevel, GLM mask, inner objective = response (the reference)
       focusft-context  bilevel, GLM mask, inner objective = context (the ablation)
4. evaluate: `eval_runner.evaluate` on the *test* split at the evaluation lengths (some longer
   than any training sample), causal inference mask; the base model is scored as a reference.
   95% confidence intervals: Wilson score interval on the correct / total counts pooled over
   seeds and samples (each (seed, sample) answer treated as one Bernoulli trial; between-seed
   variance is shown separately as the per-seed range).
5. leakage probe: for held-out *validation* rows with a WRONG answer put in the assistant turn,
   reset fast weights (`FastWeights`) on the trained model and adapt them for K inner SGD steps
   (`BilevelStep` / `inner_loop`, armed by `arm_inner`) on that sample, with the response
   objective (sees the wrong label) and with the context objective (does not). Reported: how
   often the model's greedy first answer token equals the wrong label before and after the
   adaptation, under the method's training mask, teacher-forced at the answer position.
6. report: out/experiment.json, and a markdown report (default docs/results.md) with the tables,
   the exact command and the git commit; plots next to it (accuracy vs length).
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


@dataclass
class ExperimentConfig:
    out: str = "runs/experiment"
    report: str = "docs/results.md"
    base: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    tasks: list[str] = field(default_factory=lambda: ["qa1"])
    train_lengths: list[int] = field(default_factory=lambda: [0, 128, 256])
    eval_lengths: list[int] = field(default_factory=lambda: [0, 256, 512, 1024])
    train_samples: int = 200  # per task and training length
    eval_samples: int = 30  # per task and evaluation length (per seed: the same test rows)
    few_shot: bool = True
    steps: int = 150  # outer optimizer steps per run
    batch_size: int = 8
    learning_rate: float = 1e-3
    pretrain_steps: int = 300
    pretrain_seq_len: int = 512
    pretrain_batch: int = 8
    probe_samples: int = 16
    probe_steps: int = 2
    probe_lr: float = 1.0
    data_seed: int = 0
    label: str = "full"


PRESETS = {
    "full": {},
    "quick": dict(seeds=[0], train_lengths=[0, 64], eval_lengths=[0, 64, 128, 256],
                  train_samples=48, eval_samples=10, few_shot=False, steps=16, batch_size=4,
                  pretrain_steps=30, pretrain_seq_len=192, pretrain_batch=4, probe_samples=8,
                  label="quick"),
    "smoke": dict(seeds=[0], train_lengths=[0], eval_lengths=[0, 32], train_samples=4,
                  eval_samples=2, few_shot=False, steps=1, batch_size=2, pretrain_steps=1,
                  pretrain_seq_len=64, pretrain_batch=2, probe_samples=2, label="smoke"),
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
    if cfg.base:
        return cfg.base
    from .pretrain import PretrainConfig, pretrain

    path = Path(cfg.out) / "base"
    if (path / "model.safetensors").exists():
        log(f"base: reusing {path}")
        return str(path)
    pretrain(PretrainConfig(output_dir=str(path), steps=cfg.pretrain_steps,
                            seq_len=cfg.pretrain_seq_len, batch_size=cfg.pretrain_batch,
                            seed=cfg.data_seed, warmup=max(1, cfg.pretrain_steps // 10)), log=log)
    return str(path)


def write_train_data(cfg: ExperimentConfig, tokenizer) -> tuple[str, int]:
    """Training rows to out/data/train.jsonl; returns the path and the longest row in tokens."""
    from .evaluation.chat import make_chat_rows

    rows = make_chat_rows("babilong", cfg.tasks, cfg.train_lengths, cfg.train_samples,
                          cfg.data_seed, split="train", tokenizer=tokenizer, few_shot=cfg.few_shot)
    path = Path(cfg.out) / "data" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    longest = 0
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({"messages": row["messages"]}) + "\n")
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
            longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return str(path), longest


def train_flags(cfg: ExperimentConfig, method: str, seed: int, base: str, data: str,
                max_length: int) -> list[str]:
    out = Path(cfg.out) / "runs" / f"{method}-seed{seed}"
    return ["--model", base, "--data", data, "--output_dir", str(out), *METHODS[method],
            "--max_length", str(max_length), "--truncation", "error",
            "--max_steps", str(cfg.steps), "--per_device_train_batch_size", str(cfg.batch_size),
            "--learning_rate", str(cfg.learning_rate), "--lr_scheduler_type", "cosine",
            "--warmup_steps", "0.1", "--weight_decay", "0.01", "--max_grad_norm", "1.0",
            "--logging_steps", str(max(1, cfg.steps // 10)), "--seed", str(seed),
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def train_all(cfg: ExperimentConfig, base: str, data: str, max_length: int, log) -> dict:
    from .config import parse_config
    from .train_run import train

    runs = {}
    for seed in cfg.seeds:
        for method in cfg.methods:
            flags = train_flags(cfg, method, seed, base, data, max_length)
            log(f"train {method} seed {seed}")
            start = time.perf_counter()
            result = train(parse_config(flags))
            result["wall_seconds"] = round(time.perf_counter() - start, 1)
            result["flags"] = flags
            runs[f"{method}|{seed}"] = result
            log(f"  {method} seed {seed}: loss {result['train_loss']:.4f}, "
                f"{result['wall_seconds']} s")
    return runs


def eval_spec(cfg: ExperimentConfig):
    from .eval_runner import EvalSpec

    return EvalSpec(suite="babilong", tasks=list(cfg.tasks), lengths=[str(x) for x in cfg.eval_lengths],
                    samples=cfg.eval_samples, seed=cfg.data_seed, masks=["causal"], batch_size=8,
                    few_shot=cfg.few_shot)


def evaluate_all(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    """{name: {"counts": {length: [correct, total]}, "per_seed": {seed: {length: acc}}, ...}}."""
    from .eval_runner import evaluate

    spec = eval_spec(cfg)
    models = [(BASE, None, base)] + [(k.split("|")[0], int(k.split("|")[1]), r["checkpoint"])
                                      for k, r in runs.items()]
    log(f"evaluate {len(models)} checkpoints on {cfg.tasks} at lengths {cfg.eval_lengths}")
    results = evaluate([path for _, _, path in models], spec)
    table: dict[str, dict] = {}
    for name, seed, path in models:
        entry = results["models"][f"{path} [causal]"]
        row = table.setdefault(name, {"counts": defaultdict(lambda: [0, 0]), "per_seed": {},
                                      "eval_seconds": 0.0})
        row["eval_seconds"] += entry["seconds"]
        per_len = defaultdict(lambda: [0, 0])
        for task, by_len in entry["scores"].items():
            for length, score in by_len.items():
                n = cfg.eval_samples
                correct = round(score * n / 100)
                per_len[int(length)][0] += correct
                per_len[int(length)][1] += n
        for length, (c, n) in per_len.items():
            row["counts"][length][0] += c
            row["counts"][length][1] += n
        row["per_seed"][seed] = {length: 100 * c / n for length, (c, n) in per_len.items()}
        row.setdefault("examples", entry["samples"][:3])
    for row in table.values():
        row["counts"] = {int(k): v for k, v in sorted(row["counts"].items())}
    return table


def probe_rows(cfg: ExperimentConfig, tokenizer) -> list[dict]:
    """Held-out (validation) rows whose assistant turn holds a WRONG answer."""
    from .evaluation.chat import make_chat_rows

    rows = make_chat_rows("babilong", cfg.tasks[:1], [cfg.train_lengths[-1]], cfg.probe_samples,
                          cfg.data_seed, split="validation", tokenizer=tokenizer,
                          few_shot=cfg.few_shot)
    from .default import PLACES

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
    targets = [(BASE, "causal", base)] + [
        (k.split("|")[0], METHODS[k.split("|")[0]][3], r["checkpoint"]) for k, r in runs.items()]
    wrong_rows = None
    for name, kind, path in targets:
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
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        from .errors import UserError

        raise UserError(f"unknown method(s) {unknown}; expected some of {list(METHODS)}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = make_base(cfg, log)
    pretrain_seconds = round(time.perf_counter() - t0, 1)
    _, tokenizer = load_checkpoint(base)
    data, longest = write_train_data(cfg, tokenizer)
    runs = train_all(cfg, base, data, longest + 8, log)
    table = evaluate_all(cfg, base, runs, log)
    probes = probe_all(cfg, base, runs, log)
    summary = {"config": asdict(cfg), "command": command, "commit": git_commit(),
               "dirty": git_dirty(), "base": base, "pretrain_seconds": pretrain_seconds,
               "longest_train_tokens": longest, "runs": runs, "accuracy": table,
               "probes": probes, "total_seconds": round(time.perf_counter() - start, 1)}
    base_meta = Path(base) / "pretrain.json"
    if base_meta.exists():
        meta = json.loads(base_meta.read_text())
        summary["pretrain"] = {k: meta.get(k) for k in ("steps", "final_loss", "seconds", "tokens",
                                                       "parameters", "config")}
    (Path(cfg.out) / "experiment.json").write_text(json.dumps(summary, indent=2, default=str))
    write_markdown(summary, Path(cfg.report))
    return summary


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _fmt_ci(c: int, n: int) -> str:
    lo, hi = wilson(c, n)
    return f"{100 * c / n:.1f} [{lo:.0f}, {hi:.0f}]" if n else "-"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = summary["config"]["eval_lengths"]
    for name, row in summary["accuracy"].items():
        counts = row["counts"]
        ys = [100 * counts[n][0] / counts[n][1] for n in lengths]
        cis = [wilson(*counts[n]) for n in lengths]
        xs = list(range(len(lengths)))
        ax.errorbar(xs, ys, yerr=[[y - lo for y, (lo, _) in zip(ys, cis)],
                                  [hi - y for y, (_, hi) in zip(ys, cis)]],
                    marker="o", capsize=3, label=name, linestyle="--" if name == BASE else "-")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.axvline(_train_edge(summary), color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("noise tokens (dotted line: longest training noise length)")
    ax.set_ylabel("accuracy (%), 95% Wilson CI")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_edge(summary: dict) -> float:
    lengths, longest = summary["config"]["eval_lengths"], max(summary["config"]["train_lengths"])
    inside = [i for i, n in enumerate(lengths) if n <= longest]
    return (max(inside) + 0.5) if inside else -0.5


def accuracy_table(summary: dict) -> list[str]:
    lengths = summary["config"]["eval_lengths"]
    longest = max(summary["config"]["train_lengths"])
    heads = [f"{n}{'*' if n > longest else ''}" for n in lengths]
    lines = ["| method | " + " | ".join(heads) + " | all lengths | per-seed mean (min-max) |",
             "|---|" + "---|" * (len(lengths) + 2)]
    for name, row in summary["accuracy"].items():
        counts = row["counts"]
        cells = [_fmt_ci(*counts[n]) for n in lengths]
        c, n = sum(counts[x][0] for x in lengths), sum(counts[x][1] for x in lengths)
        seeds = [sum(v.values()) / len(v) for v in row["per_seed"].values()]
        spread = (f"{min(seeds):.1f}-{max(seeds):.1f}" if len(seeds) > 1 else "1 seed")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt_ci(c, n)} | {spread} |")
    return lines


def cost_table(summary: dict) -> list[str]:
    per = defaultdict(list)
    for key, r in summary["runs"].items():
        per[key.split("|")[0]].append(r)
    lines = ["| method | runs | train wall-clock s / run (mean) | x sft-causal | final train loss (mean) | eval s (all seeds) |",
             "|---|---|---|---|---|---|"]
    ref = None
    for name, rs in per.items():
        wall = sum(r["wall_seconds"] for r in rs) / len(rs)
        ref = ref or (wall if name == "sft-causal" else None)
        loss = sum(r["train_loss"] for r in rs) / len(rs)
        ratio = f"{wall / ref:.2f}" if ref else "-"
        ev = summary["accuracy"].get(name, {}).get("eval_seconds", 0.0)
        lines.append(f"| {name} | {len(rs)} | {wall:.1f} | {ratio} | {loss:.4f} | {ev:.1f} |")
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


def reading(summary: dict) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims about them)."""
    out = []
    lengths = summary["config"]["eval_lengths"]
    longest = max(summary["config"]["train_lengths"])
    chance = 100 / 6  # qa1 answers are one of six places
    acc = {}
    for name, row in summary["accuracy"].items():
        counts = row["counts"]
        c, n = sum(counts[x][0] for x in lengths), sum(counts[x][1] for x in lengths)
        acc[name] = (c, n)
    for name, (c, n) in acc.items():
        lo, hi = wilson(c, n)
        where = ("indistinguishable from chance" if lo <= chance <= hi else
                 "above chance" if lo > chance else "below chance")
        out.append(f"- {name}: {100 * c / n:.1f}% over all lengths, 95% CI [{lo:.0f}, {hi:.0f}] "
                   f"({where}; chance on qa1 is about {chance:.0f}% if answers are spread over 6 places).")
    ref = acc.get("sft-causal")
    for name in ("sft-glm", "focusft", "focusft-context"):
        if ref is None or name not in acc:
            continue
        a, b = wilson(*acc[name]), wilson(*ref)
        overlap = a[0] <= b[1] and b[0] <= a[1]
        diff = 100 * (acc[name][0] / acc[name][1] - ref[0] / ref[1])
        out.append(f"- {name} vs sft-causal: {diff:+.1f} points; the 95% intervals "
                   f"{'overlap, so this run does not separate them' if overlap else 'do not overlap'}.")
    longer = [n for n in lengths if n > longest]
    if longer and ref is not None:
        for name, row in summary["accuracy"].items():
            c = sum(row["counts"][x][0] for x in longer)
            n = sum(row["counts"][x][1] for x in longer)
            out.append(f"- {name} beyond the training lengths ({', '.join(map(str, longer))}): "
                       f"{_fmt_ci(c, n)}.")
    for name, probes in summary["probes"].items():
        resp = [p for p in probes if p["objective"] == "response"]
        ctx = [p for p in probes if p["objective"] == "context"]
        if resp and ctx:
            fa = sum(p["after"]["follows_wrong"] for p in resp) / len(resp)
            ca = sum(p["after"]["follows_wrong"] for p in ctx) / len(ctx)
            out.append(f"- leakage, {name}: after {summary['config']['probe_steps']} inner steps the "
                       f"model follows a wrong label in {fa:.0f}% of probes with the response "
                       f"objective and {ca:.0f}% with the context objective.")
    return out


def write_markdown(summary: dict, path: Path) -> None:
    cfg = summary["config"]
    plot_rel = Path("results") / f"accuracy_vs_length_{cfg['label']}.png"
    plot(summary, path.parent / plot_rel)
    pre = summary.get("pretrain") or {}
    quick = cfg["label"] != "full"
    lines = [f"# SFT vs FocuSFT in miniature — {cfg['label']} run", ""]
    if quick:
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT, especially where they are "
                  "at chance. The full configuration is `focusft experiment` without `--quick`.", ""]
    lines += ["## How these numbers were made", "",
              f"- command: `{summary['command']}`",
              f"- git commit: `{summary['commit']}`" + (" (working tree had uncommitted changes)"
                                                       if summary.get("dirty") else ""),
              f"- total wall-clock: {summary['total_seconds']:.0f} s on this machine (2 shared CPU cores)",
              f"- base: `{summary['base']}`"
              + (f", pretrained {pre.get('steps')} steps x {pre['config']['batch_size']} rows x "
                 f"{pre['config']['seq_len']} tokens ({pre.get('parameters')} parameters, final "
                 f"loss {pre.get('final_loss')}, {pre.get('seconds')} s)" if pre else ""),
              f"- training data: BABILong-style {', '.join(cfg['tasks'])}, split=train, noise lengths "
              f"{cfg['train_lengths']} tokens, {cfg['train_samples']} samples per task and length, "
              f"few-shot prompt {'on' if cfg['few_shot'] else 'off'}; longest training sample "
              f"{summary['longest_train_tokens']} tokens",
              f"- budget per run (same for every method): {cfg['steps']} optimizer steps x batch "
              f"{cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, cosine, 10% warm-up; seeds "
              f"{cfg['seeds']}; FocuSFT inner loop at the paper's defaults (K=2, SGD lr 1.0, rank 32, "
              "alpha 64, top 35% of layers)",
              f"- evaluation: test split, {cfg['eval_samples']} samples per task and length, greedy, "
              "causal inference mask, BABILong scoring rule",
              "", "## Accuracy (%) by noise length", "",
              "Cells: accuracy pooled over seeds and samples, with the 95% **Wilson score** interval "
              "in brackets (each (seed, sample) answer counted as one Bernoulli trial; seed-to-seed "
              "spread is the last column). `*` marks lengths longer than any training sample's noise.",
              "", *accuracy_table(summary), "",
              f"![accuracy vs length]({plot_rel.as_posix()})", "",
              "## Cost", "", *cost_table(summary), "",
              "## Leakage probe", "",
              f"Held-out validation rows with a WRONG answer in the assistant turn; fresh fast weights "
              f"adapted for {cfg['probe_steps']} SGD steps (lr {cfg['probe_lr']}, per-tensor clip 1.0) "
              "on that sample with the given inner objective, under the model's training mask. "
              "`follows wrong label`: greedy first answer token (teacher-forced at the answer "
              "position) equals the wrong label. A large rise with the response objective means the "
              "inner loop can write the label into the fast weights, so the outer loss can be "
              "lowered without reading the context.", "", *probe_table(summary), "",
              "## Reading (computed from the tables above)", "", *reading(summary), "",
              "## What this run does not cover", "",
              "- one task (qa1) unless `--tasks` says otherwise; no RULER subset (CWE) yet;",
              "- no attention diagnostics (sink mass / engagement over training) in this report;",
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
    updates = {"out": args.out, "report": args.report, "base": args.base}
    if args.seeds:
        updates["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.methods:
        updates["methods"] = args.methods.split(",")
    if args.tasks:
        updates["tasks"] = args.tasks.split(",")
    return replace(cfg, **{k: v for k, v in updates.items() if v is not None})


def command_line() -> str:
    return "focusft " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "focusft"
