"""The report of `focusft experiment`: Wilson intervals, markdown tables, plots, the reading.

Everything here is computed from the run's summary (out/experiment.json, also written next to
the report as .json); nothing is measured here. `write_markdown` writes the report atomically.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import BASE, training_mask
from focusft.experiments.tally import wilson

# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------




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


def diagnostics_by_method(summary: dict, mask: str = "training") -> dict:
    """{method: {step: {metric: mean over seeds}}} from each run's diagnostics.jsonl, measured
    under each method's training mask (``mask="training"``) or under ``mask`` for all."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for key, run in summary["runs"].items():
        wanted = training_mask(run["flags"]) if mask == "training" else mask
        for record in run.get("diagnostics", []):
            if record.get("mask", wanted) != wanted:
                continue
            for metric, value in record["mean"].items():
                if value is not None:
                    acc[key.split("|")[0]][record["step"]][metric].append(value)
    return {m: {step: {k: sum(v) / len(v) for k, v in metrics.items()}
                for step, metrics in sorted(steps.items())} for m, steps in acc.items()}


def plot_diagnostics(by_method: dict, path: Path, mask: str = "training mask") -> None:
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
    fig.suptitle(f"response-query attention on held-out probe rows, {mask}, mean of "
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


def attention_table(final: dict) -> list[str]:
    lines = ["| model | mask | sink@1 | sink@4 | context engagement | evidence mass |",
             "|---|---|---|---|---|---|"]
    for name, masks in final.items():
        for mask, m in masks.items():
            lines.append(f"| {name} | {mask} | {m['sink_first']:.4f} | {m['sink']:.4f} | "
                         f"{m['context']:.4f} | {m.get('evidence', float('nan')):.4f} |")
    return lines


def write_markdown(summary: dict, path: Path) -> None:
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
    quick = cfg["label"] != "full"
    lines = [f"# SFT vs FocuSFT in miniature ({cfg['label']} run)", ""]
    if cfg["label"] == "reduced":
        lines += ["> **This is a reduced run** (fewer seeds, steps, samples, tasks or methods than "
                  "`focusft experiment`); it is not the full experiment.", ""]
    elif quick:
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT. The full configuration is "
                  "`focusft experiment` without `--quick`.", ""]
    base = ("the embedded default model (6 layers, hidden 128), randomly initialised from each "
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
