"""The report of `focusft experiment --task real` (docs/results-real.md), from its summary alone.

The goal is part of the report's text, fixed before any number exists (``GOAL``); `goal_check`
then reads it off the tables, and `verdict_lines` says which way it fell and what the inner
loss, the harm ratio and the leakage probe show about why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from focusft.experiments.long import reading, verdict
from focusft.experiments.plan import BASE
from focusft.experiments.report import (_pyplot, accuracy_table, cost_table, diagnostics_by_method,
                                        diagnostics_table, plot_accuracy, plot_diagnostics)
from focusft.experiments.tally import wilson

GOAL = [
    "Stated before the run, checked below against the numbers:",
    "",
    "1. accuracy: a FocuSFT method ahead of **both** SFT baselines (SFT-causal and SFT-GLM, each "
    "under its best inference mask) on held-out BABILong at **>= 2** of the held-out lengths, "
    "with non-overlapping 95% Wilson intervals;",
    "2. sink mass: the mean first-token mass of response queries after FocuSFT **<= half** of "
    "SFT-GLM's (final checkpoints, held-out probe rows, GLM mask, mean over layers);",
    "3. context engagement after FocuSFT **>= 1.5x** SFT-GLM's (same measurement).",
]
FOCUS = ("focusft", "focusft-context")
SFT = ("sft-causal", "sft-glm")


def _best(table: dict, method: str, masks: list[str], lengths: list[int]) -> str:
    """``"method [mask]"`` of the inference mask with the most points over ``lengths``."""
    keyed = [f"{method} [{m}]" for m in masks if f"{method} [{m}]" in table]
    if not keyed:
        return f"{method} [{masks[0]}]"
    return max(keyed, key=lambda k: sum(table[k]["counts"][n][0] for n in lengths))


def goal_check(summary: dict) -> tuple[list[str], dict]:
    """(lines, {goal: met?}) for the three goals of ``GOAL``."""
    cfg, lines, met = summary["config"], [], {}
    lengths, masks = cfg["real_eval_lengths"], cfg["inference_masks"]
    table = summary["accuracy"].get("babilong", {})
    refs = [_best(table, ref, masks, lengths) for ref in SFT]
    best = []
    for method in FOCUS:
        for mask in masks:
            key = f"{method} [{mask}]"
            ahead = [n for n in lengths if all(_ahead(table, key, ref, n) for ref in refs)]
            best.append(len(ahead) >= 2)
            lines.append(f"- goal 1, {key} vs {' and '.join(refs)}: ahead at {len(ahead)} "
                         f"length(s) {ahead or ''}: **{'met' if len(ahead) >= 2 else 'not met'}**.")
    met["accuracy"] = any(best)
    final = summary["attention"].get("trained", {})
    ref = final.get("sft-glm", {}).get("glm")
    sink_met, engage_met = [], []
    for method in FOCUS:
        run = final.get(method, {}).get("glm")
        if not run or not ref:
            continue
        sink, sink_ref = _mean(run["sink_first"]), _mean(ref["sink_first"])
        eng, eng_ref = _mean(run["context"]), _mean(ref["context"])
        sink_met.append(sink <= 0.5 * sink_ref)
        engage_met.append(eng >= 1.5 * eng_ref)
        lines.append(f"- goals 2-3, {method}: sink mass {sink:.4f} vs SFT-GLM {sink_ref:.4f} "
                     f"(ratio {sink / max(sink_ref, 1e-12):.2f}, goal <= 0.5: "
                     f"**{'met' if sink_met[-1] else 'not met'}**); engagement {eng:.4f} vs "
                     f"{eng_ref:.4f} (ratio {eng / max(eng_ref, 1e-12):.2f}, goal >= 1.5: "
                     f"**{'met' if engage_met[-1] else 'not met'}**).")
    met["sink"], met["engagement"] = any(sink_met), any(engage_met)
    return lines, met


def _ahead(table: dict, method: str, ref: str, n: int) -> bool:
    v = verdict(table, method, ref, n)
    return v is not None and v[1] == "ahead"


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _home(path: str) -> str:
    """A path under the home directory written as ~/... (reports name no user's home)."""
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + "/") else path


# --------------------------------------------------------------------------- tables
def selection_table(selection: dict) -> list[str]:
    if not any(sel["points"] for sel in selection.values()):
        return ["Not selected in this run: " + "; ".join(
            f"{objective} at K {sel['chosen'][0]}, inner lr {sel['chosen'][1]:g}"
            for objective, sel in selection.items()) + " (the first point of the grid)."]
    lines = ["| inner objective | K | inner lr | validation loss (saved model) | train loss | "
             "inner harm (last logged) | wall-clock s | chosen |", "|---|---|---|---|---|---|---|---|"]
    for objective, sel in selection.items():
        for point in sel["points"].values():
            harm = [h.get("inner_harm") for h in point.get("history", []) if "inner_harm" in h]
            chosen = [point["k"], point["lr"]] == list(sel["chosen"])
            loss = point["eval_loss"]
            lines.append(f"| {objective} | {point['k']} | {point['lr']:g} | "
                         f"{'-' if loss is None else f'{loss:.4f}'} | {point['train_loss']:.4f} | "
                         f"{f'{harm[-1]:.2f}' if harm else '-'} | {point.get('wall_seconds') or 0:.0f} | "
                         f"{'**yes**' if chosen else ''} |")
    return lines


def inner_table(summary: dict) -> list[str]:
    """Per FocuSFT run: inner losses by inner step, the outer loss with the adapted fast
    weights, and the harm ratio, first and last logged window."""
    lines = ["| run | logged steps | inner loss per inner step (first window -> last) | outer loss "
             "(first -> last) | inner harm (first -> last) |", "|---|---|---|---|---|"]
    for key, run in summary["runs"].items():
        hist = [h for h in run.get("history", []) if "inner_loss_1" in h]
        if not hist:
            continue
        first, last = hist[0], hist[-1]
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in first if k.startswith("inner_loss_"))
        inner = " / ".join(f"{first[f'inner_loss_{k}']:.2f} -> {last[f'inner_loss_{k}']:.2f}"
                           for k in ks)
        harm = (f"{first['inner_harm']:.2f} -> {last['inner_harm']:.2f}" if "inner_harm" in first
                and "inner_harm" in last else "-")
        outer = (f"{first['outer_loss']:.2f} -> {last['outer_loss']:.2f}" if "outer_loss" in first
                 else "-")
        lines.append(f"| {key.replace('|', ' seed ')} | {len(hist)} | {inner} | {outer} | {harm} |")
    return lines


def attention_layers_table(final: dict, mask: str) -> list[str]:
    """Per model: the mean over layers, then the per-layer sink mass / engagement."""
    lines = ["| model | sink mass (mean) | engagement (mean) | sink mass per layer | engagement per layer |",
             "|---|---|---|---|---|"]
    for name, masks in final.items():
        m = masks.get(mask)
        if not m:
            continue
        per = lambda vs: " ".join(f"{v:.3f}" for v in vs)  # noqa: E731
        lines.append(f"| {name} | {_mean(m['sink_first']):.4f} | {_mean(m['context']):.4f} | "
                     f"{per(m['sink_first'])} | {per(m['context'])} |")
    return lines


def leakage_table(leak: dict) -> list[str]:
    lines = ["| model | inner objective (K, lr) | wrong-answer NLL before -> after K inner steps | drop |",
             "|---|---|---|---|"]
    for name, by_objective in leak.items():
        for objective, r in by_objective.items():
            lines.append(f"| {name} | {objective} ({r['k']}, {r['lr']:g}) | {r['before']:.3f} -> "
                         f"{r['after']:.3f} | {r['before'] - r['after']:+.3f} |")
    return lines


def plot_layers(final: dict, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (metric, label) in zip(axes, (("sink_first", "sink mass (first token)"),
                                          ("context", "context engagement"))):
        for name, masks in final.items():
            values = masks.get("glm", {}).get(metric)
            if values:
                ax.plot(range(len(values)), values, marker=".", label=name,
                        linestyle="--" if name == BASE else "-")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict_lines(summary: dict, met: dict) -> list[str]:
    if all(met.values()):
        return ["**Verdict: the goal is met on all three counts.**"]
    missed = [k for k, v in met.items() if not v]
    return [f"**Verdict: the goal is not met** ({', '.join(missed)} not met). What the numbers "
            "say about why:", "", *why_lines(summary)]


def smallest_separable_gap(n: int) -> float | None:
    """The smallest score gap (points) that non-overlapping Wilson intervals can show at n
    samples per cell: k/n against 0/n for the least k whose interval clears 0/n's.

    >>> smallest_separable_gap(6)
    83.3
    >>> smallest_separable_gap(40)
    20.0
    >>> smallest_separable_gap(2) is None  # 2/2 and 0/2 overlap
    True
    """
    zero_top = wilson(0, n)[1]
    k = next((k for k in range(1, n + 1) if wilson(k, n)[0] > zero_top), None)
    return None if k is None else round(100 * k / n, 1)


def _cell_size(table: dict) -> int | None:
    sizes = [total for row in table.values() for _, total in row["counts"].values()]
    return min(sizes) if sizes else None


def _fast_weight_effect(summary: dict, method: str) -> str | None:
    """How far the inner loop moved its own loss, and what the adapted fast weights did to the
    outer loss (inner harm), in the last logged window; with what that pattern means."""
    hist = [h for key, run in summary["runs"].items() if key.split("|")[0] == method
            for h in run.get("history", []) if "inner_loss_1" in h]
    if not hist:
        return None
    last = hist[-1]
    ks = sorted(int(k.rsplit("_", 1)[1]) for k in last if k.startswith("inner_loss_"))
    first, final = last["inner_loss_1"], last[f"inner_loss_{ks[-1]}"]
    drop, harm = (first - final) / max(first, 1e-12), last.get("inner_harm")
    text = (f"inner loss {first:.2f} -> {final:.2f} over its {ks[-1]} inner step(s) "
            f"({100 * drop:.0f}% lower)" + (f", inner harm {harm:.2f}" if harm is not None else ""))
    if harm is not None and abs(harm - 1) < 0.02 and drop < 0.02:
        text += " (the fast weights barely change the model: this run is SFT-GLM in effect)"
    elif harm is not None and harm < 0.8:
        text += (" (the adapted fast weights make the outer loss lower than the model's own: "
                 "they carry part of the answer, so the slow weights that are saved get less of its gradient)")
    elif harm is not None and harm > 1.5:
        text += " (the adapted fast weights make the outer loss worse: the inner lr overshoots)"
    return text


def _attention_gap(final: dict, method: str, ref: str = "sft-glm") -> tuple[float, float] | None:
    a, b = final.get(method, {}).get("glm"), final.get(ref, {}).get("glm")
    if not a or not b:
        return None
    return (abs(_mean(a["sink_first"]) - _mean(b["sink_first"])),
            abs(_mean(a["context"]) - _mean(b["context"])))


def why_lines(summary: dict) -> list[str]:
    """Readings that explain the verdict, each computed from the summary: what the sample size
    can separate, what the causal -> GLM mask alone does to the sink, how much each FocuSFT
    inner loop changed the model, and what the leakage probe shows."""
    lines = []
    n = _cell_size(summary["accuracy"].get("babilong", {}))
    if n:
        gap = smallest_separable_gap(n)
        lines.append(f"- sample size: {n} held-out rows per (method, length) cell; at that size "
                     + ("no score gap gives Wilson intervals that do not overlap, so goal 1 "
                        "cannot be met." if gap is None else
                        f"only a gap of >= {gap:g} points gives Wilson intervals that do not "
                        "overlap (against a score of 0), so goal 1 asks for a large win."))
    final = summary["attention"].get("trained", {})
    base = final.get(BASE, {})
    if base.get("glm") and base.get("causal"):
        causal, glm = _mean(base["causal"]["sink_first"]), _mean(base["glm"]["sink_first"])
        lines.append(f"- the mask alone: on the untouched base the mean sink mass of response "
                     f"queries is {causal:.4f} under the causal mask and {glm:.4f} under the GLM "
                     "mask, before any training; goal 2 compares against SFT-GLM under the GLM "
                     "mask, where little sink is left to halve.")
    for method in FOCUS:
        effect, gaps = _fast_weight_effect(summary, method), _attention_gap(final, method)
        if effect is None:
            continue
        text = f"- {method}: {effect}"
        if gaps:
            text += (f"; its final attention differs from SFT-GLM's by {gaps[0]:.1e} in mean "
                     f"sink mass and {gaps[1]:.1e} in mean engagement")
        lines.append(text + ".")
    for objective in ("response", "context"):
        drops = [by[objective]["before"] - by[objective]["after"]
                 for by in summary.get("leakage", {}).values() if objective in by]
        if not drops:
            continue
        learns = objective == "response" and min(drops) > 0.05
        lines.append(f"- leakage, {objective} objective: K inner steps lower a wrong answer's NLL "
                     f"by {min(drops):+.3f} to {max(drops):+.3f} across the checkpoints"
                     + (" (the fast weights learn whatever answer the row shows)." if learns else "."))
    return lines


# --------------------------------------------------------------------------- the page
def write_markdown(summary: dict, path: Path) -> None:
    cfg, source = summary["config"], summary.get("base_source") or {}
    label = f"real-{cfg['label']}"
    lengths = cfg["real_eval_lengths"]
    plots = {suite: Path("results") / f"{suite}_accuracy_vs_length_{label}.png"
             for suite in summary["accuracy"]}
    for suite, rel in plots.items():
        plot_accuracy(summary["accuracy"][suite], lengths, -1, path.parent / rel, "context tokens")
    by_method = diagnostics_by_method(summary)
    diag_plot = Path("results") / f"attention_over_training_{label}.png"
    plot_diagnostics(by_method, path.parent / diag_plot)
    layer_plots = {}
    for probe, final in summary["attention"].items():
        layer_plots[probe] = Path("results") / f"attention_per_layer_{probe}_{label}.png"
        plot_layers(final, path.parent / layer_plots[probe], f"final checkpoints, {probe} probe "
                    "rows, GLM mask")
    checks, met = goal_check(summary)
    quant = source.get("quantization")
    lines = [f"# SFT vs FocuSFT on a real pretrained base ({label} run)", ""]
    if cfg["label"] == "reduced":
        lines += ["> **This is a reduced run** (fewer seeds, steps, samples or tasks than the full "
                  "preset); it is not the full experiment.", ""]
    elif cfg["label"] != "full":
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT.", ""]
    lines += [f"> The base's weights are **a {quant or '4-bit'} quantization, dequantized** to "
              "float32 (the only copy of this model on the package index); every number here is "
              "of that model, not of the original bf16 checkpoint." if source else
              f"> Base: `{summary['base']}` (no source record).", "",
              "## The goal", "", *GOAL, "",
              "## How these numbers were made", "",
              f"- command: `{summary['command']}`; resumable: a rerun with the same `--out` "
              "continues from every finished run and evaluation",
              f"- git commit: `{summary['commit']}`" + (" (working tree had uncommitted changes)"
                                                       if summary.get("dirty") else ""),
              f"- compute: {summary['cumulative_seconds']:.0f} s of training, selection and "
              f"evaluation over all invocations; this invocation {summary['total_seconds']:.0f} s "
              "wall-clock (2 CPU cores)",
              f"- base: `{_home(summary['base'])}`" + (f" = {source.get('model') or source.get('name')} from the package "
                                               f"`{source.get('package')}=={source.get('version')}` "
                                               f"({source.get('license')})" if source else ""),
              f"- training data: BABILong-style {', '.join(cfg['tasks'])} with one-sentence "
              f"answers at {cfg['real_train_lengths']} tokens, {cfg['real_train_samples']} rows per "
              f"(task, length)" + (f"; agentic {', '.join(cfg['agentic_tasks'])} at "
                                   f"{cfg['agentic_train_lengths']}" if cfg["agentic_train_lengths"]
                                   and cfg["agentic_tasks"] else "")
              + f"; shuffled; longest training row {summary['longest_train_tokens']} tokens",
              f"- budget per run (every method): {cfg['steps']} optimizer steps x batch "
              f"{cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, cosine, "
              f"{cfg['warmup_steps']} warm-up steps; seeds {cfg['seeds']}; fast weights rank 32, "
              "alpha 64, top 35% MLPs",
              f"- evaluation: test split, BABILong "
              f"{', '.join(t for t in cfg['tasks'] if t in cfg.get('real_eval_tasks', cfg['tasks']))}"
              + (f" and agentic {', '.join(cfg['agentic_tasks'])}" if cfg["agentic_tasks"] else "")
              + f", greedy, inference masks {cfg['inference_masks']}, at {lengths} tokens, "
              f"{cfg['eval_samples']} samples per task and length", "",
              "## The inner loop, chosen on validation data", "",
              *([f"Short FocuSFT runs ({cfg['select_steps']} steps, seed {cfg['seeds'][0]}) per "
                 "(K, inner lr); the validation loss is the saved model's (no fast weights) on "
                 "validation rows at the longest trained length. The main runs use the chosen "
                 "point of each objective.", ""] if cfg.get("select", True) else []),
              *selection_table(summary["selection"]), ""]
    for suite, table in summary["accuracy"].items():
        lines += [f"## {suite}, held out, by context length", "",
                  "Score (%) pooled over seeds and samples, 95% Wilson interval; last column: "
                  "per-seed spread.", "", *accuracy_table(table, lengths, 10 ** 9), "",
                  f"![{suite}]({plots[suite].as_posix()})", ""]
    lines += ["## Attention", ""]
    for probe, final in summary["attention"].items():
        where = ("the longest trained length" if probe == "trained"
                 else f"{cfg['attention_length']} tokens")
        for mask in ("glm", "causal"):
            lines += [f"Final checkpoints and the base, held-out probe rows at {where}, {mask} "
                      "mask (response queries; per layer, bottom to top):", "",
                      *attention_layers_table(final, mask), ""]
        lines += [f"![per layer]({layer_plots[probe].as_posix()})", ""]
    lines += ["Over training (callback, probe rows at the longest trained length, each "
              "method's training mask, mean over layers and seeds):", "",
              *diagnostics_table(by_method), "", f"![over training]({diag_plot.as_posix()})", "",
              "## The inner loop during training", "", *inner_table(summary), "",
              "## Leakage probe", "",
              "Validation rows whose answer names a wrong place; mean NLL of that wrong answer "
              "before and after K inner steps on fresh fast weights (seed "
              f"{cfg['seeds'][0]} checkpoints).", "", *leakage_table(summary["leakage"]), "",
              "## Cost", "", *cost_table(summary), "",
              "## The goal, checked", "", *checks, "", *verdict_lines(summary, met), "",
              "## Reading (computed from the tables above)", "", *reading(summary, "real_eval_lengths"), ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


# --------------------------------------------------------------------------- from the .json
def _key(key: str):
    """A JSON object key as the summary had it: lengths and seeds are ints, the base's seed None."""
    return int(key) if key.lstrip("-").isdigit() else None if key == "null" else key


def read_summary(path: Path) -> dict:
    """The summary as the experiment held it, from the report's .json (JSON made every key a
    string; lengths and seeds are turned back into ints)."""
    return json.loads(Path(path).read_text(), object_hook=lambda d: {_key(k): v for k, v in d.items()})


def main(argv: list[str] | None = None) -> int:
    """``python -m focusft.experiments.real_report docs/results-real.json``: the page (and its
    plots) written again from the numbers beside it, after a change to this module."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].endswith(".json") or not Path(args[0]).is_file():
        print("usage: python -m focusft.experiments.real_report REPORT.json (the .json that "
              "`focusft experiment --task real` wrote beside its report)", file=sys.stderr)
        return 2
    path = Path(args[0])
    write_markdown(read_summary(path), path.with_suffix(".md"))
    print(path.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
