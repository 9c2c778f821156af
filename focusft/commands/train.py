"""`focusft train`: train with FocuSFT (or plain SFT) from a YAML config and/or flags.

With no arguments it trains the embedded default (a tiny Qwen2, a locally trained tokenizer and
generated long-context QA data; see `focusft.sources.default`) with the packaged `tiny_default.yaml`.
At the end it prints a short summary (`summary`): what was trained, the held-out score, the inner
loop's health and where final/, result.json (the full record) and the logs are; under a launcher
the main process alone prints it.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources
from pathlib import Path

from focusft.errors import UserError

logger = logging.getLogger("focusft")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", add_help=False, help="train with FocuSFT or SFT (see `focusft train --help`)",
        description="Flags are the fields of focusft.training.config.FocusConfig; --config FILE.yaml first.")
    parser.set_defaults(func=run, passthrough=True)


def packaged_config(name: str) -> str:
    return str(resources.files("focusft") / "configs" / name)


def run(args) -> int:
    from focusft.core.distributed import adopt_slurm
    from focusft.training.config import parse_config
    from focusft.training.run import train

    adopt_slurm()  # srun without torchrun: the rank and world before anything reads them

    flags = list(args.flags)
    if "--config" not in flags and "--model" not in flags and not _wants_help(flags):
        flags = ["--config", packaged_config("tiny_default.yaml"), *flags]
    config = parse_config(flags)
    result = train(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print("\n".join(summary(result, config)), flush=True)
    return 0


def summary(result: dict, cfg) -> list[str]:
    """At most 10 lines: what was trained, how it scored, the inner loop's health, the files."""
    out = Path(cfg.output_dir)
    method = f"{cfg.method}, {cfg.attention} mask"
    if cfg.bilevel:
        method += f", {cfg.inner_objective} inner objective ({cfg.inner_steps} inner steps)"
    lines = [f"focusft train: done, {result['steps']} steps in {result['train_seconds']:g} s",
             f"  model:       {cfg.model or 'embedded default (tiny Qwen2, generated QA data)'}",
             f"  method:      {method}",
             f"  train loss:  {result['train_loss']:.4g}"]
    if "heldout_accuracy" in result:
        lines.append(f"  held-out:    {result['heldout_accuracy']}% answer accuracy on "
                     f"{result['heldout_samples']} rows (chance {result['chance_accuracy']}%)")
    evals = {k: v for k, v in result.items() if k in ("eval_loss", "eval_focus_loss")}
    if evals:
        lines.append("  eval:        " + ", ".join(f"{k} {v:.4g}" for k, v in evals.items()))
    if cfg.bilevel:
        lines.append(f"  inner loop:  {inner_health(result.get('history') or [], cfg)}")
    lines += [f"  final model: {result['checkpoint']}",
              f"  result:      {out / 'result.json'} (every logged step)"]
    logs = [str(out / "data_report.json")]
    if cfg.diagnostics_steps:
        logs.append(str(out / "diagnostics.jsonl"))
    for name in cfg.report_to or []:  # the Trainer's integrations (a list once parsed)
        logs.append(f"{os.environ.get('TENSORBOARD_LOGGING_DIR', out / 'runs')} (tensorboard)"
                    if name == "tensorboard" else name)
    lines.append("  logs:        " + ", ".join(logs))
    return lines


def inner_health(history: list[dict], cfg) -> str:
    """One line from the last logged step: inner harm, and label leakage (response objective)."""
    last = history[-1] if history else {}
    if "inner_harm" not in last:
        return f"no logged step to judge it by (--logging_steps {cfg.logging_steps:g})"
    harm = last["inner_harm"]
    verdict = "overshooting" if harm > cfg.harm_warn_ratio else "ok"
    text = (f"harm {harm:.3g} ({verdict}; adapted / no fast weights, warned above "
            f"{cfg.harm_warn_ratio:g})")
    if cfg.inner_objective != "response":
        return text + f", leakage: none possible ({cfg.inner_objective} objective)"
    ratio = last["outer_loss"] / max(last["inner_loss_1"], 1e-12)
    verdict = "LEAKING: the inner loop learns the answer" if ratio < cfg.leak_warn_ratio else "ok"
    return text + f", leakage {ratio:.3g} ({verdict}; outer / base loss, warned below {cfg.leak_warn_ratio:g})"


def _wants_help(flags: list[str]) -> bool:
    return "-h" in flags or "--help" in flags
