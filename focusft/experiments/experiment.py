"""SFT vs FocuSFT in miniature (`focusft experiment`): same base, same data, same budget.

Pipeline (every step is an existing focusft function; nothing here re-implements the method):

1. base: ``--base DIR``; else the embedded default model, randomly initialised from each
   training seed (``scratch``: every method of a seed starts from the same weights), saved for
   seed 0 as out/base for the reference rows.
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
   context engagement over training): `focusft.experiments.report`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from focusft.errors import UserError
from focusft.experiments import locate
from focusft.experiments import real, real_report
from focusft.experiments import report
from focusft.experiments.plan import METHODS, ExperimentConfig
from focusft.experiments.runs import final_attention, make_base, train_all


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
    from focusft.evaluation.runner import load_checkpoint

    start = time.perf_counter()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method(s) {unknown}; expected some of {list(METHODS)}")
    if cfg.task not in ("locate", "real"):
        raise UserError(f"--task {cfg.task!r}: expected 'locate' or 'real'")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if cfg.task == "real":
        return run_real(cfg, command, log)
    base = make_base(cfg, log)
    _, tokenizer = load_checkpoint(base)
    data, probe, longest = locate.write_data(cfg, tokenizer)
    runs = train_all(cfg, data, probe, longest + 8, log)
    accuracy, probes = locate.evaluate(cfg, base, runs, log)
    summary = {"config": asdict(cfg), "command": command, "commit": git_commit(),
               "dirty": git_dirty(), "base": base,
               "longest_train_tokens": longest, "runs": runs, "accuracy": accuracy,
               "probes": probes, "final_attention": final_attention(cfg, base, runs, probe),
               "total_seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(summary, indent=2, default=str)
    (Path(cfg.out) / "experiment.json").write_text(text)
    path = Path(cfg.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(text)  # every number of the report, machine-readable
    report.write_markdown(summary, path)
    return summary


def run_real(cfg: ExperimentConfig, command: str, log=print) -> dict:
    """`--task real` (focusft.experiments.real): the 2x2 of mask x inner loop, scored by
    likelihood; every stage reuses what a previous run finished."""
    from focusft.evaluation.runner import load_checkpoint
    from focusft.experiments import factorial

    start = time.perf_counter()
    base = real.resolve_base(cfg, log)
    cfg = replace(cfg, base=base)
    _, tokenizer = load_checkpoint(base)
    data, probe, longest = real.write_data(cfg, tokenizer)
    selection = (real.select_inner(cfg, data, probe, longest + 8, log) if cfg.select
                 else {"chosen": list(cfg.select_grid[0]), "points": {}})
    runs, done = real.run_cells(cfg, base, data, probe, longest + 8, selection, tokenizer, log)
    scores, eval_seconds, attention, leakage = real.collect(done)
    summary = {"config": asdict(cfg), "command": command, "commit": git_commit(),
               "dirty": git_dirty(), "base": base, "base_source": real.base_source(base),
               "longest_train_tokens": longest, "selection": selection, "runs": runs,
               "cells": factorial.cell_table(scores),
               "decomposition": factorial.decomposition(scores, cfg.real_eval_lengths),
               "discordance": factorial.discordance(scores), "eval_seconds": eval_seconds,
               "attention": attention, "leakage": leakage,
               "total_seconds": round(time.perf_counter() - start, 1)}
    summary["cumulative_seconds"] = real.cumulative_seconds(summary)
    text = json.dumps(summary, indent=2, default=str)
    (Path(cfg.out) / "experiment.json").write_text(text)
    path = Path(cfg.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(text)
    real_report.write_markdown(summary, path)
    return summary


def command_line() -> str:
    return "focusft " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "focusft"
