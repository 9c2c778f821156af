"""Paired comparison of two models scored on the same rows.

For rows i = 1..n scored by models A and B (values a_i, b_i: accuracy 0/1, or gold NLL), in
strata (e.g. training seeds; one stratum when none is given):

    difference  = mean_i (a_i - b_i)
    interval    = percentile bootstrap, 95 %: rows resampled with replacement within each
                  stratum (stratum sizes kept), ``rounds`` times; the 2.5th and 97.5th
                  percentiles of the resampled mean differences
    McNemar     = exact two-sided p of the discordant pairs (a right, b wrong: n10; a wrong,
                  b right: n01) under Binomial(n10 + n01, 1/2): min(1, 2 P[X <= min(n10, n01)])

>>> d = paired_difference([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0], rounds=2000)
>>> round(d["difference"], 3), d["n"], d["n10"], d["n01"]
(0.5, 6, 3, 0)
>>> round(mcnemar_exact(3, 0), 3)
0.25
>>> mcnemar_exact(0, 0)
1.0
>>> round(mcnemar_exact(10, 2), 4)  # 2 * P[X <= 2], X ~ Bin(12, 1/2)
0.0386
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Sequence


def mcnemar_exact(n10: int, n01: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts."""
    n, k = n10 + n01, min(n10, n01)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_interval(diffs: Sequence[float], strata: Sequence[Hashable] | None = None,
                       rounds: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs``, rows resampled within strata."""
    import numpy as np

    groups: dict = defaultdict(list)
    for d, s in zip(diffs, strata if strata is not None else [0] * len(diffs)):
        groups[s].append(d)
    rng, total = np.random.default_rng(seed), np.zeros(rounds)
    for values in groups.values():
        values = np.asarray(values, dtype=float)
        total += values[rng.integers(0, len(values), size=(rounds, len(values)))].sum(1)
    means = np.sort(total / len(diffs))
    lo = float(means[int((1 - level) / 2 * rounds)])
    hi = float(means[min(rounds - 1, int((1 + level) / 2 * rounds))])
    return lo, hi


def paired_difference(a: Sequence[float], b: Sequence[float],
                      strata: Sequence[Hashable] | None = None, rounds: int = 4000,
                      seed: int = 0) -> dict:
    """Mean paired difference a - b, its bootstrap interval, and (for 0/1 values) McNemar."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs the same non-empty rows: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    lo, hi = bootstrap_interval(diffs, strata, rounds, seed)
    out = {"difference": sum(diffs) / len(diffs), "interval": [lo, hi], "n": len(diffs)}
    if all(v in (0, 1) for v in (*a, *b)):
        n10 = sum(1 for x, y in zip(a, b) if x > y)
        n01 = sum(1 for x, y in zip(a, b) if x < y)
        out.update(n10=n10, n01=n01, mcnemar_p=mcnemar_exact(n10, n01))
    return out


def interaction(a: Sequence[float], b: Sequence[float], c: Sequence[float], d: Sequence[float],
                strata: Sequence[Hashable] | None = None, rounds: int = 4000,
                seed: int = 0) -> dict:
    """(a - b) - (c - d) over the same rows (a 2x2's interaction), with its bootstrap interval.

    >>> r = interaction([1, 1], [0, 1], [1, 0], [1, 0], rounds=200)
    >>> r["difference"]
    0.5
    """
    diffs = [(w - x) - (y - z) for w, x, y, z in zip(a, b, c, d)]
    lo, hi = bootstrap_interval(diffs, strata, rounds, seed)
    return {"difference": sum(diffs) / len(diffs), "interval": [lo, hi], "n": len(diffs)}


def comparison_table(records: dict[str, list[dict]], metrics=("acc", "gold_nll"),
                     strata_key: str | None = None) -> list[dict]:
    """Every pair of models (in the given order) over the rows both scored: one entry per pair
    and metric. ``records[name]`` is a list of per-row dicts with a ``key`` (the row's identity)
    and the metrics; ``strata_key`` names the field that holds a row's stratum."""
    names, out = list(records), []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            by_key = {r["key"]: r for r in records[second]}
            pairs = [(r, by_key[r["key"]]) for r in records[first] if r["key"] in by_key]
            if not pairs:
                continue
            strata = [r.get(strata_key) for r, _ in pairs] if strata_key else None
            for metric in metrics:
                cmp = paired_difference([r[metric] for r, _ in pairs],
                                        [s[metric] for _, s in pairs], strata)
                out.append({"a": first, "b": second, "metric": metric, **cmp})
    return out


def comparison_markdown(table: list[dict]) -> str:
    """The comparison section of a results page."""
    lines = ["## Paired comparison", "",
             "Same rows, per-row differences A - B; 95 % percentile bootstrap over rows; "
             "McNemar's exact p on the discordant pairs (A right / B wrong: n10, the reverse: "
             "n01). acc in points; gold NLL in nats per token (lower is better).", "",
             "| A | B | rows | acc A - B [95 %] | n10 / n01 | McNemar p | gold NLL A - B [95 %] |",
             "|---|---|---|---|---|---|---|"]
    by_pair: dict = defaultdict(dict)
    for entry in table:
        by_pair[(entry["a"], entry["b"])][entry["metric"]] = entry
    for (a, b), metrics in by_pair.items():
        acc, nll = metrics.get("acc") or metrics.get("score"), metrics.get("gold_nll")
        acc_cell = (f"{100 * acc['difference']:+.1f} [{100 * acc['interval'][0]:+.1f}, "
                    f"{100 * acc['interval'][1]:+.1f}]") if acc else "-"
        disc = f"{acc['n10']} / {acc['n01']}" if acc and "n10" in acc else "-"
        p = f"{acc['mcnemar_p']:.3g}" if acc and "mcnemar_p" in acc else "-"
        nll_cell = (f"{nll['difference']:+.3f} [{nll['interval'][0]:+.3f}, "
                    f"{nll['interval'][1]:+.3f}]") if nll else "-"
        rows = (acc or nll)["n"]
        lines.append(f"| {a} | {b} | {rows} | {acc_cell} | {disc} | {p} | {nll_cell} |")
    return "\n".join(lines) + "\n"
