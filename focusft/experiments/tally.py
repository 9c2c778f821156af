"""Counting answers: per-method, per-length tallies pooled over seeds, Wilson intervals, JSONL.

A table is ``{method: {"counts": {length: [correct, total]}, "per_seed": {seed: {length: %}},
"eval_seconds": s}}``; each (seed, sample) answer is one Bernoulli trial.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import BASE


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoints(base: str, runs: dict) -> list[tuple[str, int | None, str]]:
    return [(BASE, None, base)] + [(k.split("|")[0], int(k.split("|")[1]), r["checkpoint"])
                                   for k, r in runs.items()]


def empty_row() -> dict:
    return {"counts": defaultdict(lambda: [0, 0]), "per_seed": {}, "eval_seconds": 0.0}


def finish(table: dict) -> dict:
    for row in table.values():
        row["counts"] = {int(k): v for k, v in sorted(row["counts"].items())}
    return table


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
