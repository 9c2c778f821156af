"""Where a rendering changes when assistant turns are swapped for sentinels: the string
arithmetic behind the ``located`` loss-mask rule (``focusft.data.templates``).

The rule needs, for each trained assistant message k, the region ``[a_k, e_k)`` of the rendering
R where R and ``R^k`` (R with message k replaced by a sentinel turn) differ: ``a_k`` is their
longest common prefix, ``e_k`` is ``len(R)`` minus their longest common suffix. Rendering
``R^k`` for every k costs one render of the whole conversation per assistant turn, O(turns^2)
work per row.

``regions_at_once`` gets the same regions from ONE extra render ``RS``, in which every trained
assistant message k is replaced by its own sentinel ``S_k`` at the same time. Walking R and RS
together: from the end of region k-1 (where both are in step), their common prefix gives
``a_k``; the text of the next other message (a user or tool turn, found in both after region
k's start) is a point after region k where they are in step again, and the common suffix up to
it gives ``e_k``. Neither comparison can run past the sentinel (R holds none of its
characters), so each is what the comparison of R with ``R^k`` gives, provided the template
renders each turn independently of the others' content (a swap changes only that turn's
region). The result is checked: every stretch between regions is equal in R and RS, each
region starts before its sentinel and ends right after it in RS (the whole text from the
sentinel to the next message is common, so that message's text was not found inside turn k);
otherwise, or when a sentinel is missing or two swapped turns have no other message between
them, the caller falls back to one render per turn. The encoder also compares both methods on its probe
conversations once per template and keeps the per-turn renders for a template where they
disagree.
"""

from __future__ import annotations


SENTINEL_CHARS = ("\ue000", "\ue001")


def sentinel(k: int) -> str:
    """The sentinel content of the k-th swapped turn: private-use characters around a number."""
    return f"{SENTINEL_CHARS[0]}focusft{k}{SENTINEL_CHARS[1]}"


def common_prefix(x: str, y: str, i: int = 0, j: int = 0) -> int:
    """Length of the longest common prefix of ``x[i:]`` and ``y[j:]``: C-speed slice comparisons
    over windows that double until one differs, then a binary search inside it (the cost grows
    with the answer, not with the strings)."""
    limit = min(len(x) - i, len(y) - j)
    lo, step = 0, 64
    while lo < limit:
        hi = min(limit, lo + step)
        if x[i + lo:i + hi] != y[j + lo:j + hi]:
            return _bisect(lambda n: x[i + lo:i + n] == y[j + lo:j + n], lo, hi - 1)
        lo, step = hi, step * 2
    return limit


def common_suffix(x: str, y: str, limit: int, i: int | None = None, j: int | None = None) -> int:
    """Length (at most ``limit``) of the longest common suffix of ``x[:i]`` and ``y[:j]``."""
    i = len(x) if i is None else i
    j = len(y) if j is None else j
    limit = max(0, min(limit, i, j))
    lo, step = 0, 64
    while lo < limit:
        hi = min(limit, lo + step)
        if x[i - hi:i - lo] != y[j - hi:j - lo]:
            return _bisect(lambda n: x[i - n:i - lo] == y[j - n:j - lo], lo, hi - 1)
        lo, step = hi, step * 2
    return limit


def _bisect(agrees, lo: int, hi: int) -> int:
    """The largest n in [lo, hi] with ``agrees(n)``, ``agrees`` monotone and true at lo."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if agrees(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def regions_at_once(full: str, marked: str, sentinels: list[str], needles: list[str | None]
                    ) -> list[tuple[int, int]] | None:
    """``[(a_k, e_k)]`` for each sentinel in order, or None when the renderings do not decompose
    into one region per sentinel (see the module docstring). ``needles[k]`` is the text of the
    first other message between swapped turns k and k+1."""
    if any(ch in full for ch in SENTINEL_CHARS):
        return None
    places = [marked.find(s) for s in sentinels]
    if any(p < 0 for p in places) or places != sorted(places) or \
            marked.count(SENTINEL_CHARS[0]) != len(sentinels):  # each sentinel once, in order
        return None
    regions, (r, s) = [], (0, 0)
    for k, place in enumerate(places):
        a = r + common_prefix(full, marked, r, s)
        sa = s + (a - r)
        after = place + len(sentinels[k])
        anchor = (len(full), len(marked)) if k == len(places) - 1 else \
            _anchor(full, marked, needles[k], a, after, places[k + 1])
        if anchor is None:
            return None
        t = common_suffix(full, marked, min(anchor[0] - a, anchor[1] - sa), *anchor)
        e, se = anchor[0] - t, anchor[1] - t
        if not (sa <= place and se == after and a <= e):
            return None
        regions.append((a, e))
        r, s = e, se
    return regions


def _anchor(full: str, marked: str, needle: str | None, a: int, after: int, next_place: int
            ) -> tuple[int, int] | None:
    """A point ``(r, s)`` after region k where R and RS are in step: where the next other
    message's text starts in both (its first occurrence after the region start in R; in RS its
    only occurrence between the sentinels, with some template text before it)."""
    if not needle:
        return None
    r, s = full.find(needle, a), marked.find(needle, after)
    if r < 0 or s <= after or s + len(needle) > next_place or \
            marked.find(needle, s + 1, next_place) >= 0:
        return None  # not found, found in the template's own text, or found twice
    return r, s
