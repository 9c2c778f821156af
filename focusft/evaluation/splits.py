"""Train / validation / test partition of generated samples.

Contract: every sample has a *content key* (a string: for BABILong the bAbI facts and question,
for RULER the answer material such as needle values or variable names). ``split_of(key)`` maps
a key to exactly one split with a fixed hash, so a key can only ever be accepted by one split,
whatever the seed or the number of samples asked for. Generators reject candidates whose key
belongs to another split; two splits therefore never share a sample, and this does not depend
on generating the other splits first.

Shares of the key space: train 80 %, validation 10 %, test 10 %.

``split_seed`` derives an independent integer seed per (seed, split, ...) so each split also draws
from its own random stream (cheap rejection is then rare, not systematic).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
# Upper bounds (exclusive) of each split's bucket range out of 100.
_BUCKET_BOUNDS = (("train", 80), ("validation", 90), ("test", 100))


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def split_of(key: str) -> str:
    """The one split that owns ``key``."""
    bucket = _digest(key) % 100
    for name, bound in _BUCKET_BOUNDS:
        if bucket < bound:
            return name
    raise AssertionError("unreachable: bucket bounds cover 0..99")


def in_split(key: str, split: str | None) -> bool:
    """True when no split is asked for, or when ``key`` belongs to ``split``."""
    return split is None or split_of(key) == split


def split_seed(seed: int, split: str | None, *parts: object) -> int:
    """A 63-bit seed for one (seed, split, parts...) stream; stable across runs and platforms."""
    text = "|".join(str(p) for p in (seed, split, *parts))
    return _digest(text) >> 1
