"""`focusft experiment --task long`: multi-token long-context tasks on a base with attention sinks.

Data (`focusft.experiments.sft_tasks`): train rows are BABILong-style qa1-qa5 with one-sentence answers at
``long_train_lengths`` (all <= 1K tokens) plus RULER NIAH / VT / CWE rows with RULER's answer
formats at ``long_ruler_train_lengths``; shuffled with the data seed. Test rows (test split,
never trained on) at ``long_eval_lengths`` (1K-4K). Probe rows for the attention diagnostics:
validation-split qa1-qa5 rows at the longest training length, with their evidence spans.

Scoring: greedy decoding (`eval_runner.generate_outputs`, max new tokens per suite) under each of
``inference_masks``: ``causal`` and ``prefix`` (the prompt prefilled under the GLM mask the
bidirectional methods train with, `focusft.evaluation.inference`); each output scored by its suite's
official rule (`sft_tasks.score`: BABILong's label rule, RULER's string_match_all).
Tables are keyed "method [mask]", with counts pooled over seeds (Wilson intervals as in
`focusft.experiments.experiment`).

Attention at the end of training: the base and every final checkpoint measured on the probe rows
under the causal mask and under the GLM mask (`focusft.diagnostics.measure`); the curve over
training is the training callback's, under each method's own training mask.

Sweeps (``sweep``, on the first seed only, scored under causal inference only): the FocuSFT inner loop with ``sweep_objective`` at
K in {1, 4} and inner lr in {0.3, 3.0}; K = 0 is SFT-GLM exactly and K = 2, lr = 1.0 is the main
run of that objective, so the sweep points complete those two curves.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import BASE, METHODS
from focusft.experiments.report import attention_table
from focusft.experiments.tally import checkpoints, empty_row, finish, wilson, write_jsonl


def _count(tokenizer, row: dict) -> int:
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_data(cfg, tokenizer) -> tuple[str, str, int]:
    """Train rows and probe rows as JSONL; returns both paths and the longest train row (tokens)."""
    from focusft.experiments.pretrain import resolve_haystack
    from focusft.experiments.sft_tasks import babi_rows, ruler_rows

    hay = resolve_haystack(cfg.haystack)
    rows = babi_rows(cfg.tasks, cfg.long_train_lengths, cfg.long_train_samples, cfg.data_seed,
                     "train", tokenizer, hay)
    if cfg.long_ruler_tasks:
        rows += ruler_rows(cfg.long_ruler_tasks, cfg.long_ruler_train_lengths,
                           cfg.long_train_samples, cfg.data_seed, "train", tokenizer, hay)
    random.Random(cfg.data_seed).shuffle(rows)
    probe = babi_rows(cfg.tasks, [max(cfg.long_train_lengths)], 2, cfg.data_seed, "validation",
                      tokenizer, hay)[:8]
    out = Path(cfg.out) / "data"
    write_jsonl(rows, out / "train.jsonl")
    write_jsonl(probe, out / "probe.jsonl")
    longest = max(_count(tokenizer, r) for r in rows + probe)
    return str(out / "train.jsonl"), str(out / "probe.jsonl"), longest


def heldout_rows(cfg, tokenizer) -> dict[str, list[dict]]:
    from focusft.experiments.pretrain import resolve_haystack
    from focusft.experiments.sft_tasks import babi_rows, ruler_rows

    hay = resolve_haystack(cfg.haystack)
    suites = {"babilong": babi_rows(cfg.tasks, cfg.long_eval_lengths, cfg.eval_samples,
                                    cfg.data_seed, "test", tokenizer, hay)}
    if cfg.long_ruler_tasks:
        suites["ruler"] = ruler_rows(cfg.long_ruler_tasks, cfg.long_eval_lengths, cfg.ruler_samples,
                                     cfg.data_seed, "test", tokenizer, hay)
    return suites


def evaluate(cfg, base: str, runs: dict, log) -> tuple[dict, dict]:
    """{suite: {"method [mask]": {"counts": {length: [points, samples]}, "per_seed": ...}}}."""
    from focusft.evaluation.runner import EvalSpec, generate_outputs, load_checkpoint
    from focusft.experiments.sft_tasks import score

    tables: dict[str, dict] = defaultdict(dict)
    suites = None
    for name, seed, path in checkpoints(base, runs):
        model, tokenizer = load_checkpoint(path)
        suites = suites or heldout_rows(cfg, tokenizer)  # one tokenizer for every model here
        for suite, rows in suites.items():
            spec = EvalSpec(suite=suite, batch_size=8)
            sweep = name not in METHODS and name != BASE  # sweep points: causal inference only
            for mask in (["causal"] if sweep else cfg.inference_masks):
                start = time.perf_counter()
                outputs = generate_outputs(model, tokenizer, rows, spec, mask)
                row = tables[suite].setdefault(f"{name} [{mask}]", empty_row())
                per_len = defaultdict(lambda: [0.0, 0])
                for r, out in zip(rows, outputs):
                    per_len[r["length"]][0] += score(r, out)
                    per_len[r["length"]][1] += 1
                for length, (c, n) in per_len.items():
                    row["counts"][length][0] += c
                    row["counts"][length][1] += n
                row["per_seed"][seed] = {k: 100 * c / n for k, (c, n) in per_len.items()}
                row["eval_seconds"] += time.perf_counter() - start
        log(f"  evaluated {name} seed {seed}")
    return {suite: finish(table) for suite, table in tables.items()}, {}  # no leakage probe


def verdict(table: dict, method: str, ref: str, n: int) -> tuple[float, str] | None:
    """(method - ref in points, "ahead" | "behind" | "intervals overlap") at length n, by their
    95% Wilson intervals; None when either row is missing.

    >>> t = {"a": {"counts": {1: [9, 10]}}, "b": {"counts": {1: [1, 10]}}}
    >>> verdict(t, "a", "b", 1)
    (80.0, 'ahead')
    """
    if method not in table or ref not in table:
        return None
    (c1, n1), (c2, n2) = table[method]["counts"][n], table[ref]["counts"][n]
    a, b = wilson(round(c1), n1), wilson(round(c2), n2)
    word = "ahead" if a[0] > b[1] else "behind" if a[1] < b[0] else "intervals overlap"
    return round(100 * (c1 / n1 - c2 / n2), 1), word


def _is_ahead(table: dict, method: str, ref: str, n: int) -> bool:
    v = verdict(table, method, ref, n)
    return v is not None and v[1] == "ahead"


def separation(table: dict, lengths: list[int], method: str, ref: str) -> list[str]:
    """Per length: method vs ref with their Wilson intervals; 'ahead' only if they do not overlap."""
    cells = [(n, verdict(table, method, ref, n)) for n in lengths]
    return [f"{n}: {v[0]:+.1f} points ({v[1]})" for n, v in cells if v]


def reading(summary: dict, lengths_key: str = "long_eval_lengths") -> list[str]:
    """Statements computed from the numbers: each method against both SFT baselines, at the
    held-out lengths named by ``lengths_key`` in the config."""
    cfg, lines = summary["config"], []
    for suite, table in summary["accuracy"].items():
        for mask in cfg["inference_masks"]:
            for method in ("focusft", "focusft-context", "sft-glm"):
                for ref in ("sft-causal", "sft-glm"):
                    if method == ref:
                        continue
                    cells = separation(table, cfg[lengths_key], f"{method} [{mask}]",
                                       f"{ref} [causal]")
                    if cells:
                        lines.append(f"- {suite}, {method} [{mask}] vs {ref} [causal]: "
                                     + "; ".join(cells) + ".")
    return lines


def goal_check(summary: dict, by_method: dict) -> list[str]:
    """The goal stated before the run, checked against the numbers: FocuSFT ahead of both SFT
    baselines on held-out BABILong at >= 2 lengths with non-overlapping Wilson intervals; its
    sink mass (first token) during training >= 10x below SFT-causal's and its context
    engagement >= 2x above it (end of training, each method's training mask)."""
    cfg, lines = summary["config"], []
    table = summary["accuracy"].get("babilong", {})
    for method in ("focusft", "focusft-context"):
        for mask in cfg["inference_masks"]:
            ahead = [n for n in cfg["long_eval_lengths"]
                     if all(_is_ahead(table, f"{method} [{mask}]", f"{ref} [causal]", n)
                            for ref in ("sft-causal", "sft-glm"))]
            met = "met" if len(ahead) >= 2 else "not met"
            lines.append(f"- accuracy, {method} [{mask}] ahead of both SFT baselines at "
                         f"{len(ahead)} length(s) {ahead or ''}: **{met}**.")
    ref = by_method.get("sft-causal")
    for method in ("focusft", "focusft-context"):
        run = by_method.get(method)
        if not run or not ref:
            continue
        end, ref_end = run[max(run)], ref[max(ref)]
        sink = ref_end["sink_first"] / max(end["sink_first"], 1e-12)
        engage = end["context"] / max(ref_end["context"], 1e-12)
        lines.append(f"- attention, {method} at the end of training vs sft-causal: sink mass "
                     f"{end['sink_first']:.4f} vs {ref_end['sink_first']:.4f} (sft-causal / "
                     f"{method} = {sink:.2f}, goal >= 10: **{'met' if sink >= 10 else 'not met'}**), "
                     f"context engagement {end['context']:.4f} vs {ref_end['context']:.4f} "
                     f"({method} / sft-causal = {engage:.2f}, goal >= 2: "
                     f"**{'met' if engage >= 2 else 'not met'}**).")
    return lines


def sink_table(pre: dict) -> list[str]:
    sinks = pre.get("sinks") or []
    if not sinks:
        return []
    lines = ["| pretraining step | first-token mass / uniform, per layer | middle layers |",
             "|---|---|---|"]
    for s in sinks:
        lines.append(f"| {s['step']} | {' / '.join(f'{r:.1f}' for r in s['ratio'])} | "
                     f"{s['middle_ratio']:.1f} |")
    return lines


def write_markdown(summary: dict, path: Path) -> None:
    from focusft.experiments.report import (
        accuracy_table,
        cost_table,
        diagnostics_by_method,
        diagnostics_table,
        plot_accuracy,
        plot_diagnostics,
    )

    cfg, pre = summary["config"], summary.get("pretrain") or {}
    label = f"long-{cfg['label']}"
    plots = {suite: Path("results") / f"{suite}_accuracy_vs_length_{label}.png"
             for suite in summary["accuracy"]}
    for suite, rel in plots.items():
        plot_accuracy(summary["accuracy"][suite], cfg["long_eval_lengths"], -1, path.parent / rel,
                      "context tokens")
    diag_plot = Path("results") / f"attention_over_training_{label}.png"
    by_method = diagnostics_by_method(summary)
    plot_diagnostics(by_method, path.parent / diag_plot)
    causal_plot = Path("results") / f"attention_over_training_causal_{label}.png"
    by_method_causal = diagnostics_by_method(summary, "causal")
    plot_diagnostics(by_method_causal, path.parent / causal_plot, "causal mask")
    lines = [f"# SFT vs FocuSFT on multi-token long-context tasks ({label} run)", ""]
    if cfg["label"] == "reduced":
        lines += ["> **This is a reduced run**: fewer seeds, steps, samples or tasks than the full "
                  "preset (`focusft experiment --task long`), see the settings below. It is not the "
                  "full experiment.", ""]
    elif cfg["label"] != "full":
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT.", ""]
    lines += ["## How these numbers were made", "",
              f"- command: `{summary['command']}`",
              f"- git commit: `{summary['commit']}`" + (" (working tree had uncommitted changes)"
                                                       if summary.get("dirty") else ""),
              f"- total wall-clock: {summary['total_seconds']:.0f} s on this machine (2 CPU cores)",
              f"- base: `{summary['base']}`" + (f", `focusft pretrain --recipe {pre.get('recipe')}` "
                                               f"{pre.get('steps')} steps, final loss "
                                               f"{pre.get('final_loss')}" if pre else ""),
              f"- training data: BABILong-style {', '.join(cfg['tasks'])} with one-sentence answers "
              f"at {cfg['long_train_lengths']} tokens and RULER {', '.join(cfg['long_ruler_tasks'])} "
              f"at {cfg['long_ruler_train_lengths']}, {cfg['long_train_samples']} rows per (task, "
              f"length), shuffled; longest training row {summary['longest_train_tokens']} tokens",
              f"- budget per run (same for every method): {cfg['steps']} optimizer steps x batch "
              f"{cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, cosine, {cfg['warmup_steps']} "
              f"warm-up; seeds {cfg['seeds']}; FocuSFT K=2, SGD lr 1.0, rank 32, top 35% MLPs"
              + (f"; sweep of the {cfg['sweep_objective']} objective on seed {cfg['seeds'][0]}"
                 if cfg["sweep"] else ""),
              f"- evaluation: test split, greedy, inference masks {cfg['inference_masks']}, at "
              f"{cfg['long_eval_lengths']} tokens ({cfg['eval_samples']} per BABILong task and "
              f"length, {cfg['ruler_samples']} per RULER task and length)", "",
              "Cells: score (%) pooled over seeds and samples, 95% Wilson interval in brackets; "
              "last column: per-seed spread.", ""]
    if pre.get("sinks"):
        lines += ["## The base's attention sinks over pretraining", "", *sink_table(pre), ""]
    for suite, table in summary["accuracy"].items():
        lines += [f"## {suite}, held out, by context length", "",
                  *accuracy_table(table, cfg["long_eval_lengths"], 10 ** 9), "",
                  f"![{suite} accuracy]({plots[suite].as_posix()})", ""]
    lines += ["## Attention", "",
              "Over training (training callback, 8 validation probe rows at the longest training "
              "length, each method's training mask, mean over layers and seeds):", "",
              *diagnostics_table(by_method), "", f"![attention]({diag_plot.as_posix()})", "",
              "The same probe rows over training under the causal mask (the same for every "
              "method):", "", *diagnostics_table(by_method_causal), "",
              f"![attention, causal mask]({causal_plot.as_posix()})", "",
              "At the end (base and final checkpoints, both masks):", "",
              *attention_table(summary["final_attention"]), "",
              "## Cost", "", *cost_table(summary), "",
              "## The goal stated before the run, checked", "", *goal_check(summary, by_method), "",
              "## Reading (computed from the tables above)", "", *reading(summary), ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
