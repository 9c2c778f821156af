"""The 2x2 of `focusft experiment --task real`: mask {causal, GLM} x inner loop {off, on}.

Four trained cells, each scored by likelihood (`focusft.evaluation.loglik`) on held-out rows
under its own training mask (GLM-trained cells with prefix inference), plus the untouched base
under both masks:

    SC = sft-causal [causal]      FC = focusft-causal [causal]
    SG = sft-glm [prefix]         FG = focusft-glm [prefix]

Every trained cell of seed s is scored on seed s's own test rows (the base on every seed's), so
a row pairs the cells of one seed; seeds are the bootstrap's strata (`evaluation.paired`). The
effects, per length and pooled over lengths, each a paired difference with a 95 % interval:

    mask effect            SG - SC
    inner loop, GLM mask   FG - SG
    inner loop, causal     FC - SC
    interaction            (FG - SG) - (FC - SC)
    the whole method       FG - SC

Rows per length come from a power calculation fixed before the run (`power_table`): a paired
accuracy difference over n rows with discordant fraction d has a 95 % half-width of about
1.96 sqrt(d / n) (../shared/EVAL.md).

>>> round(half_width(0.2, 120), 3), round(half_width(0.2, 360), 3)
(0.08, 0.046)
>>> rows_needed(0.2, 0.08), rows_needed(0.2, 0.05)
(121, 308)
"""

from __future__ import annotations

import math
from collections import defaultdict

CELLS = {"SC": "sft-causal [causal]", "SG": "sft-glm [prefix]",
         "FC": "focusft-causal [causal]", "FG": "focusft-glm [prefix]"}
EFFECTS = {  # name: (terms with signs); an effect is sum(sign * cell) per row
    "mask effect (SFT-GLM - SFT-causal)": (("SG", 1), ("SC", -1)),
    "inner loop under GLM (FocuSFT-GLM - SFT-GLM)": (("FG", 1), ("SG", -1)),
    "inner loop under causal (FocuSFT-causal - SFT-causal)": (("FC", 1), ("SC", -1)),
    "interaction ((FG - SG) - (FC - SC))": (("FG", 1), ("SG", -1), ("FC", -1), ("SC", 1)),
    "the whole method (FocuSFT-GLM - SFT-causal)": (("FG", 1), ("SC", -1)),
}
Z = 1.959963984540054


def half_width(d: float, n: int) -> float:
    """95 % half-width of a paired accuracy difference (fractions), normal approximation."""
    return Z * math.sqrt(d / n)


def rows_needed(d: float, target: float) -> int:
    """Rows for a half-width <= ``target`` at discordant fraction ``d``."""
    return math.ceil(d * (Z / target) ** 2)


def power_table(per_length: int, lengths: int, discordance=(0.1, 0.2, 0.3)) -> list[dict]:
    """Expected half-widths (points) per length and pooled for rows per length ``per_length``."""
    return [{"d": d, "per_length": 100 * half_width(d, per_length),
             "pooled": 100 * half_width(d, per_length * lengths)} for d in discordance]


def _index(records: dict) -> dict:
    """{seed: {key: record}} from {seed: [records]} (JSON may have made seeds strings)."""
    return {int(seed): {r["key"]: r for r in rows} for seed, rows in records.items()}


def paired_rows(scores: dict, terms, length=None) -> tuple[list[dict], list]:
    """Rows that every cell of ``terms`` scored (seed, key), each {cell: record}; strata."""
    cells = {code: _index(scores[CELLS[code]]) for code, _ in terms}
    first = cells[terms[0][0]]
    rows, strata = [], []
    for seed in sorted(first):
        for key, rec in first[seed].items():
            if length is not None and rec["length"] != length:
                continue
            if all(key in cells[c].get(seed, {}) for c, _ in terms):
                rows.append({c: cells[c][seed][key] for c, _ in terms})
                strata.append((seed, rec["length"]))
    return rows, strata


def effect(scores: dict, terms, metric: str, length=None, rounds: int = 4000) -> dict | None:
    """One effect on one metric: the paired mean, its interval, McNemar for two-cell acc."""
    from focusft.evaluation.paired import bootstrap_interval, paired_difference

    rows, strata = paired_rows(scores, terms, length)
    if not rows:
        return None
    if len(terms) == 2:
        (a, _), (b, _) = terms
        return paired_difference([r[a][metric] for r in rows], [r[b][metric] for r in rows],
                                 strata, rounds)
    diffs = [sum(sign * r[c][metric] for c, sign in terms) for r in rows]
    lo, hi = bootstrap_interval(diffs, strata, rounds)
    return {"difference": sum(diffs) / len(diffs), "interval": [lo, hi], "n": len(diffs)}


def decomposition(scores: dict, lengths: list[int]) -> dict:
    """{effect: {"pooled" | length: {"acc": ..., "gold_nll": ...}}} (see the module docstring)."""
    out: dict = {}
    for name, terms in EFFECTS.items():
        out[name] = {}
        for where in ["pooled", *lengths]:
            length = None if where == "pooled" else where
            out[name][where] = {m: effect(scores, terms, m, length) for m in ("acc", "gold_nll")}
    return out


def cell_table(scores: dict) -> dict:
    """{cell: {length: {"acc", "acc_norm", "gold_nll", "n"}}} pooled over seeds, plus "all"."""
    out: dict = {}
    for cell, by_seed in scores.items():
        groups = defaultdict(list)
        for rows in by_seed.values():
            for r in rows:
                groups[r["length"]].append(r)
                groups["all"].append(r)
        out[cell] = {length: {"n": len(rs), **{m: sum(r[m] for r in rs) / len(rs)
                                               for m in ("acc", "acc_norm", "gold_nll")}}
                     for length, rs in groups.items()}
    return out


def discordance(scores: dict) -> float | None:
    """The observed discordant fraction of the inner-loop comparison under GLM (the one the
    power calculation assumed d for), pooled."""
    rows, _ = paired_rows(scores, EFFECTS["inner loop under GLM (FocuSFT-GLM - SFT-GLM)"])
    if not rows:
        return None
    return sum(r["FG"]["acc"] != r["SG"]["acc"] for r in rows) / len(rows)
