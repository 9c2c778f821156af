"""The report of `focusft experiment --task real` (docs/results-real.md), from its summary alone.

The goal, the decision rule and the power calculation are part of the page's text, fixed
before any number exists (``GOAL``, ``RULES``, `power_lines` from the configuration alone);
`verdict` then reads the decomposition (`focusft.experiments.factorial`) and says which way it
fell and what a user should run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from focusft.experiments.factorial import CELLS, EFFECTS, power_table
from focusft.experiments.plan import BASE
from focusft.experiments.report import (_pyplot, cost_table, diagnostics_by_method,
                                        diagnostics_table, plot_diagnostics)

MASK_EFFECT, INNER_GLM, INNER_CAUSAL, INTERACTION, WHOLE = EFFECTS
GOAL = [
    "Stated before the run. FocuSFT changes two things at once: the attention mask (context "
    "bidirectional, responses causal) and the bilevel inner loop (per-sample fast weights). "
    "SFT-GLM costs about 1/1.5 of a FocuSFT step (docs/benchmark.md). The question: **does the "
    "inner loop earn its cost, or does the mask alone do the work?** Held-out accuracy (acc, "
    "likelihood-scored) pooled over the three lengths decides; gold NLL is reported beside it.",
]
RULES = [
    "Decision rule, fixed before the numbers (intervals: 95 % paired bootstrap):",
    "",
    "1. **the inner loop earns its cost** if the inner-loop effect under GLM (FocuSFT-GLM - "
    "SFT-GLM) has its interval above 0: the default stays FocuSFT;",
    "2. else, **the mask does the work** if the mask effect (SFT-GLM - SFT-causal) has its "
    "interval above 0: the recommendation becomes SFT-GLM (the mask without the inner loop);",
    "3. else **neither beats plain SFT at this scale**: the recommendation is SFT-causal (the "
    "cheapest), FocuSFT kept for users who want to try it;",
    "4. in every case an interval below 0 is reported as harm.",
]


def _effect(summary: dict, name: str, where="pooled", metric="acc") -> dict | None:
    return summary["decomposition"].get(name, {}).get(where, {}).get(metric)


def above(e: dict | None) -> bool:
    return e is not None and e["interval"][0] > 0


def below(e: dict | None) -> bool:
    return e is not None and e["interval"][1] < 0


def verdict(summary: dict) -> tuple[str, str]:
    """(rule that applied, the method a user should run) from the pooled accuracy effects."""
    if above(_effect(summary, INNER_GLM)):
        return "1", "focusft"
    if above(_effect(summary, MASK_EFFECT)):
        return "2", "sft-glm"
    return "3", "sft-causal"


# --------------------------------------------------------------------------- tables
def power_lines(cfg: dict) -> list[str]:
    """The power calculation: from the configuration only (rows per length and seed)."""
    tasks = [t for t in cfg["tasks"] if t in cfg["real_eval_tasks"]] or cfg["tasks"]
    per_length = cfg["eval_samples"] * len(tasks) * len(cfg["seeds"])
    lengths = len(cfg["real_eval_lengths"])
    lines = [f"Rows: {cfg['eval_samples']} per task and length for each of {len(cfg['seeds'])} "
             f"seed(s), each seed its own rows: **{per_length} paired rows per length, "
             f"{per_length * lengths} pooled**. The 95 % half-width of a paired accuracy "
             "difference is about 1.96 sqrt(d / n) at a discordant fraction d (../shared/EVAL.md); "
             "the target was +-8 points per length and +-5 pooled at d = 0.2:", "",
             "| discordant fraction d | half-width per length (points) | pooled (points) |",
             "|---|---|---|"]
    for row in power_table(per_length, lengths):
        lines.append(f"| {row['d']:.1f} | +-{row['per_length']:.1f} | +-{row['pooled']:.1f} |")
    return lines


def _diff_cell(e: dict | None, scale: float, digits: int, p: bool = True) -> str:
    if e is None:
        return "-"
    lo, hi = e["interval"]
    text = f"{scale * e['difference']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
    if p and "mcnemar_p" in e:
        text += f" p={e['mcnemar_p']:.2g}"
    return text


def decomposition_table(summary: dict, metric: str) -> list[str]:
    lengths = summary["config"]["real_eval_lengths"]
    scale, digits = (100, 1) if metric == "acc" else (1, 3)
    lines = ["| effect | " + " | ".join(str(n) for n in lengths) + " | pooled |",
             "|---|" + "---|" * (len(lengths) + 1)]
    for name in EFFECTS:
        cells = [_diff_cell(_effect(summary, name, n, metric), scale, digits)
                 for n in [*lengths, "pooled"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cells_table(summary: dict) -> list[str]:
    lengths = summary["config"]["real_eval_lengths"]
    lines = ["| model [inference mask] | " + " | ".join(f"{n}: acc / acc_norm / NLL" for n in lengths)
             + " | all: acc / acc_norm / NLL | rows |", "|---|" + "---|" * (len(lengths) + 2)]
    order = [f"{BASE} [causal]", f"{BASE} [prefix]", *CELLS.values()]
    for name in [n for n in order if n in summary["cells"]]:
        per = summary["cells"][name]
        fmt = lambda c: f"{100 * c['acc']:.1f} / {100 * c['acc_norm']:.1f} / {c['gold_nll']:.3f}"  # noqa: E731
        cols = [fmt(per[n]) if n in per else "-" for n in [*lengths, "all"]]
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {per['all']['n']} |")
    return lines


def selection_table(selection: dict) -> list[str]:
    if not selection["points"]:
        k, lr = selection["chosen"]
        return [f"Not selected in this run: K {k}, inner lr {lr:g} (the first point of the grid)."]
    lines = ["| K | inner lr | validation loss (saved model) | train loss | inner harm (last "
             "logged) | wall-clock s | chosen |", "|---|---|---|---|---|---|---|"]
    for point in selection["points"].values():
        harm = [h.get("inner_harm") for h in point.get("history", []) if "inner_harm" in h]
        chosen = [point["k"], point["lr"]] == list(selection["chosen"])
        loss = point["eval_loss"]
        lines.append(f"| {point['k']} | {point['lr']:g} | "
                     f"{'-' if loss is None else f'{loss:.4f}'} | {point['train_loss']:.4f} | "
                     f"{f'{harm[-1]:.2f}' if harm else '-'} | {point.get('wall_seconds') or 0:.0f} | "
                     f"{'**yes**' if chosen else ''} |")
    return lines


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


def attention_table(final: dict) -> list[str]:
    lines = ["| model | sink mass, causal | sink mass, GLM | engagement, causal | engagement, GLM |",
             "|---|---|---|---|---|"]
    for name, masks in final.items():
        get = lambda mask, metric: _mean(masks.get(mask, {}).get(metric, []))  # noqa: E731
        lines.append(f"| {name} | {get('causal', 'sink_first'):.4f} | {get('glm', 'sink_first'):.4f} "
                     f"| {get('causal', 'context'):.4f} | {get('glm', 'context'):.4f} |")
    return lines


def inner_table(summary: dict) -> list[str]:
    """Per FocuSFT run: inner losses per inner step, outer loss, inner harm (first -> last)."""
    lines = ["| run | inner loss per inner step (first window -> last) | outer loss (first -> "
             "last) | inner harm (first -> last) |", "|---|---|---|---|"]
    for key, run in summary["runs"].items():
        hist = [h for h in run.get("history", []) if "inner_loss_1" in h]
        if not hist:
            continue
        first, last = hist[0], hist[-1]
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in first if k.startswith("inner_loss_"))
        inner = " / ".join(f"{first[f'inner_loss_{k}']:.2f} -> {last[f'inner_loss_{k}']:.2f}"
                           for k in ks)
        pair = lambda m: (f"{first[m]:.2f} -> {last[m]:.2f}" if m in first and m in last  # noqa: E731
                          else "-")
        lines.append(f"| {key.replace('|', ' seed ')} | {inner} | {pair('outer_loss')} | "
                     f"{pair('inner_harm')} |")
    return lines


def leakage_table(leak: dict) -> list[str]:
    lines = ["| model | K, inner lr | wrong-answer NLL before -> after K inner steps | drop |",
             "|---|---|---|---|"]
    for name, by_objective in leak.items():
        r = by_objective["response"]
        lines.append(f"| {name} | {r['k']}, {r['lr']:g} | {r['before']:.3f} -> {r['after']:.3f} "
                     f"| {r['before'] - r['after']:+.3f} |")
    return lines


def plot_cells(summary: dict, path: Path) -> None:
    plt = _pyplot()
    lengths = summary["config"]["real_eval_lengths"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, per in summary["cells"].items():
        style = "--" if name.startswith(BASE) else "-"
        for ax, metric, scale in ((axes[0], "acc", 100), (axes[1], "gold_nll", 1)):
            ax.plot(range(len(lengths)), [scale * per[n][metric] if n in per else float("nan")
                                          for n in lengths], marker="o", linestyle=style, label=name)
    for ax, label in zip(axes, ("acc (%), likelihood-scored", "gold NLL (nats / token)")):
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("context tokens")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the verdict
def _say(e: dict | None, scale: float = 100, unit: str = " points") -> str:
    if e is None:
        return "not measured"
    lo, hi = e["interval"]
    sign = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
    return (f"{scale * e['difference']:+.{1 if scale == 100 else 3}f}{unit} "
            f"[{scale * lo:+.{1 if scale == 100 else 3}f}, {scale * hi:+.{1 if scale == 100 else 3}f}]"
            f" ({sign})")


RECOMMEND = {"1": "FocuSFT (`--method focusft`, GLM mask)",
             "2": "SFT-GLM (`--method sft --attention glm`): the mask without the inner loop",
             "3": "plain SFT (`--method sft --attention causal`)"}


def verdict_lines(summary: dict) -> list[str]:
    rule, _ = verdict(summary)
    lines = [f"**Verdict: rule {rule} applies; what to run on this evidence: {RECOMMEND[rule]}.**",
             "", "Pooled over lengths (acc in points, gold NLL in nats per token; lower NLL is "
             "better):", ""]
    for name in EFFECTS:
        acc, nll = _effect(summary, name), _effect(summary, name, metric="gold_nll")
        lines.append(f"- {name}: acc {_say(acc)}; gold NLL {_say(nll, 1, '')}")
    harm = [name for name in EFFECTS if below(_effect(summary, name))]
    if harm:
        lines += ["", f"Harm (acc interval below 0): {'; '.join(harm)}."]
    return lines


def why_lines(summary: dict) -> list[str]:
    """Readings computed from the summary: the observed discordance against the power
    calculation's assumption, the mask's effect on the untouched base's sink, the inner loop's
    own movement and harm, and the leakage probe."""
    lines = []
    d = summary.get("discordance")
    if d is not None:
        lines.append(f"- discordance: FocuSFT-GLM and SFT-GLM disagree on {100 * d:.1f}% of the "
                     "paired rows (the power calculation assumed 10-30%).")
    base = summary["attention"].get("trained", {}).get(BASE, {})
    if base.get("glm") and base.get("causal"):
        lines.append(f"- the mask alone: on the untouched base the mean sink mass of response "
                     f"queries is {_mean(base['causal']['sink_first']):.4f} under the causal mask "
                     f"and {_mean(base['glm']['sink_first']):.4f} under the GLM mask, before any "
                     "training: sink mass is a property of the mask.")
    for key, run in summary["runs"].items():
        hist = [h for h in run.get("history", []) if "inner_harm" in h]
        if hist and key.endswith(f"|{summary['config']['seeds'][0]}"):
            harms = [h["inner_harm"] for h in hist]
            lines.append(f"- {key.split('|')[0]}: inner harm (outer loss with the adapted fast "
                         f"weights / without) {harms[0]:.2f} -> {harms[-1]:.2f} over training"
                         + (" (< 1: the fast weights carry part of the answer)" if harms[-1] < 0.9
                            else " (> 1: the inner step hurts)" if harms[-1] > 1.1 else ""))
    drops = [by["response"]["before"] - by["response"]["after"]
             for name, by in summary.get("leakage", {}).items() if name != BASE]
    if drops:
        lines.append(f"- leakage: K inner steps lower a wrong answer's NLL by {min(drops):+.3f} to "
                     f"{max(drops):+.3f} on the trained checkpoints"
                     + (" (the fast weights learn whatever answer the row shows)" if min(drops) > 0.05
                        else "") + ".")
    return lines


# --------------------------------------------------------------------------- the page
def _how(summary: dict) -> list[str]:
    cfg, source = summary["config"], summary.get("base_source") or {}
    k, lr = summary["selection"]["chosen"]
    return [
        f"- command: `{summary['command']}`; resumable: a rerun with the same `--out` continues "
        "from every finished run and scored model",
        f"- git commit: `{summary['commit']}`" + (" (working tree had uncommitted changes)"
                                                 if summary.get("dirty") else ""),
        f"- compute: {summary['cumulative_seconds']:.0f} s of training, selection and scoring "
        f"over all invocations ({summary['cumulative_seconds'] / 3600:.2f} h); this invocation "
        f"{summary['total_seconds']:.0f} s wall-clock (2 CPU cores)",
        f"- base: {source.get('model') or source.get('name')} from the package "
        f"`{source.get('package')}=={source.get('version')}` ({source.get('license')})"
        if source else f"- base: `{Path(summary['base']).name}`",
        f"- training data: BABILong {', '.join(cfg['tasks'])} with one-sentence answers at "
        f"{cfg['real_train_lengths']} tokens, {cfg['real_train_samples']} rows per (task, length), "
        f"shuffled; longest training row {summary['longest_train_tokens']} tokens",
        f"- budget per run (every cell): {cfg['steps']} optimizer steps x batch "
        f"{cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, cosine, {cfg['warmup_steps']} "
        f"warm-up steps, the same row order per seed; seeds {cfg['seeds']}; FocuSFT: response "
        f"objective, K {k}, inner lr {lr:g}, fast weights rank 32 / alpha 64 on the top 35% MLPs",
        f"- evaluation: held-out BABILong {', '.join(t for t in cfg['tasks'] if t in cfg['real_eval_tasks'])}"
        f" at {cfg['real_eval_lengths']} tokens (trained at <= {max(cfg['real_train_lengths'])}), "
        "likelihood-scored over each task's closed answer set (lm-eval multiple_choice: acc, "
        "acc_norm by characters; gold NLL per token); each trained model under its training mask "
        "(GLM-trained: prefix inference), the base under both",
    ]


def write_markdown(summary: dict, path: Path) -> None:
    cfg, source = summary["config"], summary.get("base_source") or {}
    label = f"real-{cfg['label']}"
    cell_plot = Path("results") / f"cells_vs_length_{label}.png"
    plot_cells(summary, path.parent / cell_plot)
    by_method = diagnostics_by_method(summary)
    diag_plot = Path("results") / f"attention_over_training_{label}.png"
    plot_diagnostics(by_method, path.parent / diag_plot)
    lines = [f"# Mask or inner loop? A paired 2x2 on a real pretrained base ({label} run)", ""]
    if cfg["label"] == "reduced":
        lines += ["> **This is a reduced run** (fewer seeds, steps, samples or tasks than the full "
                  "preset); it is not the full experiment.", ""]
    elif cfg["label"] != "full":
        lines += [f"> **This is the `{cfg['label']}` run: a tiny budget meant as a smoke test.** "
                  "Its numbers are not evidence for or against FocuSFT.", ""]
    if source:
        lines += [f"> The base's weights are **a {source.get('quantization') or '4-bit'} "
                  "quantization, dequantized** to float32 (the only copy of this model on the "
                  "package index); every number here is of that model.", ""]
    lines += ["## The goal", "", *GOAL, "", *RULES, "",
              "## The power calculation", "", *power_lines(cfg), "",
              "## How these numbers were made", "", *_how(summary), "",
              "## The inner lr, chosen on validation data", "",
              f"Short FocuSFT-GLM runs ({cfg['select_steps']} steps, seed {cfg['seeds'][0]}) per "
              "(K, inner lr); the validation loss is the saved model's (no fast weights). Both "
              "FocuSFT cells use the chosen point.", "", *selection_table(summary["selection"]), "",
              "## The decomposition", "",
              "Paired differences over the same held-out rows (each seed's cells on that seed's "
              "rows; 95 % bootstrap over rows with seeds and lengths as strata; McNemar's exact p "
              "for two-cell accuracy differences).", "",
              "Accuracy (points):", "", *decomposition_table(summary, "acc"), "",
              "Gold NLL (nats per token; negative = the first cell is better):", "",
              *decomposition_table(summary, "gold_nll"), "",
              "## The cells", "", "acc and acc_norm (%), gold NLL (nats per token), pooled over "
              "seeds:", "", *cells_table(summary), "", f"![cells]({cell_plot.as_posix()})", "",
              "## Verdict", "", *verdict_lines(summary), "",
              "What the numbers say about why (computed from the tables):", "",
              *why_lines(summary), "",
              "## Attention", ""]
    for probe, final in summary["attention"].items():
        where = ("the longest trained length" if probe == "trained"
                 else f"{cfg['attention_length']} tokens")
        lines += [f"Held-out probe rows at {where}; response queries; mean over layers and seeds:",
                  "", *attention_table(final), ""]
    lines += ["Over training (callback, probe rows at the longest trained length, each cell's "
              "training mask, mean over layers and seeds):", "", *diagnostics_table(by_method), "",
              f"![over training]({diag_plot.as_posix()})", "",
              "## The inner loop during training", "", *inner_table(summary), "",
              "## Leakage probe", "",
              "Validation rows whose answer names a wrong place; mean NLL of that wrong answer "
              "before and after K inner steps (response objective) on fresh fast weights (seed "
              f"{cfg['seeds'][0]} checkpoints).", "", *leakage_table(summary["leakage"]), "",
              "## Cost", "", *cost_table(summary), "",
              "Scoring, seconds per model and mask: " + ", ".join(
                  f"{k} {v:.0f}" for k, v in summary["eval_seconds"].items()) + ".", ""]
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
