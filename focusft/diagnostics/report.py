"""Reports of measured diagnostics: a per-layer markdown table, JSON, and two PNG plots.

Every file is written atomically (a temporary file in the same directory, then `os.replace`),
so a reader never sees half a report, and an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Callable

import torch

from focusft.diagnostics.mass import Diagnostics

# Table columns: (metric, header). Ranks are integers; masses are fractions of 1.
COLUMNS = (("sink_first", "sink@1"), ("sink", "sink@k"), ("context", "engage"),
           ("evidence", "evid"), ("evidence_rank", "rank"))

# results[model label][mask] -> Diagnostics
Results = dict[str, dict[str, Diagnostics]]


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a fresh temporary file next to `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    write_atomic(path, write)


def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if metric == "evidence_rank" else f"{value:.4f}"


def markdown_table(results: Results, sink_k: int) -> str:
    """One table per mask: a row per layer (and the mean), a column group per model."""
    out = [f"sink@1: mass on the first token; sink@k: on the first {sink_k}; engage: on the other "
           "context tokens; evid: on evidence tokens; rank: best rank of an evidence token among "
           "context tokens (1 = most attended). Means over response queries, heads and samples."]
    masks = list(dict.fromkeys(mask for per_mask in results.values() for mask in per_mask))
    for mask in masks:
        models = [(label, per_mask[mask]) for label, per_mask in results.items() if mask in per_mask]
        header = ["layer"] + [f"{label} {name}" for label, _ in models for _, name in COLUMNS]
        out += ["", f"### mask: {mask}", "", "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header)]
        layer_means = [d.layer_means() for _, d in models]
        # Models may differ in depth: a shallower model's missing layers print as "-".
        for i in range(max(len(d.layers) for _, d in models)):
            cells = [str(i)] + [_fmt(m, lm[m][i] if i < len(lm[m]) else math.nan)
                                for lm in layer_means for m, _ in COLUMNS]
            out.append("| " + " | ".join(cells) + " |")
        means = [d.averaged() for _, d in models]
        out.append("| mean | " + " | ".join(_fmt(m, a[m]) for a in means for m, _ in COLUMNS) + " |")
    return "\n".join(out) + "\n"


def _clean(value: float) -> float | None:
    """JSON has no NaN: undefined values are null."""
    return None if math.isnan(value) else value


def to_json(results: Results, meta: dict) -> dict:
    """Everything measured, per model and mask: per-layer means, overall means, per-sample values."""
    models = {}
    for label, per_mask in results.items():
        models[label] = {}
        for mask, diag in per_mask.items():
            models[label][mask] = {
                "layers": diag.layers,
                "mean": {m: _clean(v) for m, v in diag.averaged().items()},
                "per_layer": {m: [_clean(v) for v in vs] for m, vs in diag.layer_means().items()},
                "per_sample": {m: [[_clean(x) for x in row] for row in v.T.tolist()]
                               for m, v in diag.per_sample.items()},
                "response_queries": diag.num_queries.int().tolist(),
            }
    return {**meta, "models": models}


def write_json(path: str, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_layers(path: str, results: Results, sink_k: int) -> None:
    """Per-layer bars of sink@k mass and context engagement; models side by side; a column per mask."""
    plt = _pyplot()
    masks = list(dict.fromkeys(mask for per_mask in results.values() for mask in per_mask))
    rows = (("sink", f"sink mass (first {sink_k} tokens)"), ("context", "context engagement"))
    fig, axes = plt.subplots(len(rows), len(masks), figsize=(6 * len(masks), 6.5), squeeze=False)
    width = 0.8 / max(1, len(results))
    depth = max(len(d.layers) for per_mask in results.values() for d in per_mask.values())
    for c, mask in enumerate(masks):
        for r, (metric, title) in enumerate(rows):
            ax, top = axes[r][c], 0.0
            for i, (label, per_mask) in enumerate(results.items()):
                if mask not in per_mask:
                    continue
                values = [0.0 if math.isnan(v) else v for v in per_mask[mask].layer_means()[metric]]
                x = torch.arange(len(values)).float() + (i - (len(results) - 1) / 2) * width
                ax.bar(x.tolist(), values, width=width, label=label)
                top = max([top, *values])
            ax.set_title(f"{title} - {mask} mask")
            ax.set_xlabel("layer")
            ax.set_xticks(range(depth))
            # Same scale for every model in a panel; zoomed in when the masses are all small.
            ax.set_ylim(0, min(1.0, 1.15 * top) if top > 0 else 1.0)
            ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path, plt)


def plot_strip(path: str, results: Results, mask: str, sample: int) -> None:
    """Mass each position receives (mean over layers, response queries, heads), one panel per model.

    Evidence tokens are shaded green, response tokens grey. Log scale: sinks dwarf the rest.
    """
    plt = _pyplot()
    models = [(label, per_mask[mask]) for label, per_mask in results.items() if mask in per_mask]
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 2.6 * len(models)), squeeze=False)
    for ax, (label, diag) in zip(axes[:, 0], models):
        mass = diag.received[sample].mean(dim=0)
        # Positions no response query can see (e.g. after the last response) get no point.
        mass = torch.where(mass > 0, mass, torch.full_like(mass, float("nan")))
        classes = diag.classes[sample]
        _shade(ax, classes[:, 3] > 0, "grey", "response")
        _shade(ax, classes[:, 4] > 0, "green", "evidence")
        ax.plot(range(mass.numel()), mass.tolist(), lw=0.8, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(f"{label} - {mask} mask - sample {sample}: attention received per position")
        ax.set_xlabel("position")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    _save(fig, path, plt)


def _shade(ax, flags: torch.Tensor, color: str, label: str) -> None:
    """One axvspan per maximal run of True positions."""
    runs, start = [], None
    for pos, on in enumerate(flags.tolist() + [False]):
        if on and start is None:
            start = pos
        elif not on and start is not None:
            runs.append((start, pos))
            start = None
    for i, (a, b) in enumerate(runs):
        ax.axvspan(a - 0.5, b - 0.5, color=color, alpha=0.25, lw=0, label=label if i == 0 else None)


def _save(fig, path: str, plt) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
