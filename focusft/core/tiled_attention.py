"""Explicit attention under a layout, tiled over queries: sliding windows, soft-caps and sinks.

SDPA computes ``softmax(q k^T * scale + mask) v`` and nothing else. Some decoders change the
scores first or the softmax itself (per head h, query q, visible keys k; see `focusft.core.masks` for
the key range lo(q) <= k < hi(q), a sliding window included)::

    s[q, k]  = (q . k) * scale
    s[q, k]  = c * tanh(s[q, k] / c)                       soft-cap c (Gemma 2)
    p[q, k]  = exp(s[q, k]) / (sum_k' exp(s[q, k']) + exp(sink_h))     sink logit (GPT-OSS)
    out[q]   = sum_k p[q, k] v[k]                          (the sink has no value)

This module computes exactly that, block by block of the layout and, inside a block, tile by
tile of at most `rows` queries, so that a tile's scores are (heads x rows x its keys) and never
S x S::

    block [s, e) with keys from key_start:  queries [a, a + rows), [a + rows, ...)  each with
                                            the keys [lo(a), hi(last query)) and a (rows x keys)
                                            visibility mask built from positions

Backward (a custom autograd function) is the usual flash-attention recomputation: only q, k, v,
the output and the per-query log-sum-exp L are kept; each tile's probabilities are rebuilt as
p = exp(s - L), and with D[q] = dout[q] . out[q]::

    dv  += p^T dout            ds = p * (dout v^T - D)       (times 1 - tanh^2 under a soft-cap)
    dq   = ds k * scale        dk += ds^T q * scale          dsink_h = -sum_q p_sink[q] D[q]

so memory stays O(tile) in both directions. Scores and probabilities are float32 whatever the
input dtype (as transformers' eager attention does for its softmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from focusft.core.masks import Block

TILE_ELEMENTS = 1 << 22  # score elements (heads x queries x keys) of one tile
MIN_ROWS, MAX_ROWS = 16, 1024  # queries per tile


@dataclass(frozen=True)
class Tile:
    """Queries [start, end) of row `row` against keys [key_start, key_end) of that row."""

    row: int
    start: int
    end: int
    key_start: int
    key_end: int
    block: Block
    window: int | None

    def lo(self, q: int) -> int:
        low = self.block.key_start
        return low if self.window is None else max(low, q - self.window + 1)

    def hi(self, q: int) -> int:
        return q + 1 if self.block.causal else self.block.end

    def hidden(self, device) -> torch.Tensor | None:
        """(queries, keys) bool, True where a key is hidden; None when every key is visible."""
        last = self.end - 1
        if self.lo(last) == self.key_start and self.hi(self.start) == self.key_end:
            return None
        q = torch.arange(self.start, self.end, device=device)[:, None]
        k = torch.arange(self.key_start, self.key_end, device=device)[None]
        hidden = k >= q + 1 if self.block.causal else None  # keys past the block end: not in range
        if self.window is not None:
            early = k <= q - self.window  # key_start <= k holds for every key of the tile
            hidden = early if hidden is None else hidden | early
        return hidden

    @property
    def rows(self) -> int:
        return self.end - self.start

    def index(self, device) -> slice:
        """The tile's query positions in its row (a slice: they are consecutive)."""
        return slice(self.start, self.end)


@dataclass(frozen=True)
class Group:
    """Several short blocks of row `row` in one tile: the queries of every block (consecutive
    positions, or gathered where the blocks leave gaps, as in the last layer's tail) against
    keys [key_start, key_end), each query with its own key range lo(q) <= k < hi(q)."""

    row: int
    blocks: tuple[Block, ...]
    window: int | None
    lo: tuple[int, ...] = field(init=False, repr=False)
    hi: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self):
        lo, hi = [], []
        for blk in self.blocks:
            probe = Tile(self.row, blk.start, blk.end, 0, 0, blk, self.window)
            lo += [probe.lo(q) for q in range(blk.start, blk.end)]
            hi += [probe.hi(q) for q in range(blk.start, blk.end)]
        object.__setattr__(self, "lo", tuple(lo))
        object.__setattr__(self, "hi", tuple(hi))

    @property
    def key_start(self) -> int:
        return min(self.lo)

    @property
    def key_end(self) -> int:
        return max(self.hi)

    @property
    def rows(self) -> int:
        return len(self.lo)

    def index(self, device) -> slice | torch.Tensor:
        """The group's query positions in its row: a slice where they are consecutive."""
        if all(a.end == b.start for a, b in zip(self.blocks, self.blocks[1:])):
            return slice(self.blocks[0].start, self.blocks[-1].end)
        return torch.tensor([q for blk in self.blocks for q in range(blk.start, blk.end)], device=device)

    def hidden(self, device) -> torch.Tensor | None:
        """(queries, keys) bool, True where a key is hidden; None when every key is visible."""
        if max(self.lo) == self.key_start and min(self.hi) == self.key_end:
            return None
        k = torch.arange(self.key_start, self.key_end, device=device)
        lo = torch.tensor(self.lo, device=device)[:, None]
        hi = torch.tensor(self.hi, device=device)[:, None]
        return (k < lo) | (k >= hi)


def group_tiles(row: int, blocks: list[Block], window: int | None, heads: int) -> list[Group]:
    """Consecutive short blocks of one row gathered into `Group` tiles: a tile grows block by
    block while heads x queries x keys stays within TILE_ELEMENTS and its queries within
    MAX_ROWS (or it has fewer than MIN_ROWS queries); blocks of another sample (another
    key_start) start a new tile."""
    tiles, run, rows = [], [], 0
    for blk in blocks:
        n = blk.end - blk.start
        if run:
            keys = blk.end - min(b.key_start for b in run + [blk])
            fits = rows + n <= MAX_ROWS and heads * (rows + n) * keys <= TILE_ELEMENTS
            if blk.key_start != run[0].key_start or (rows >= MIN_ROWS and not fits):
                tiles.append(Group(row, tuple(run), window))
                run, rows = [], 0
        run.append(blk)
        rows += n
    if run:
        tiles.append(Group(row, tuple(run), window))
    return tiles


def tile_rows(heads: int, blk: Block, window: int | None) -> int:
    """Queries per tile, so that heads x rows x keys stays within TILE_ELEMENTS where it can.

    A causal block under a window W has tiles of at most max(W, MIN_ROWS) queries, each with at
    most W + rows keys; otherwise a tile may see all of the block's keys.

    >>> tile_rows(8, Block(0, 16384, 0, causal=True), None), tile_rows(8, Block(0, 16384, 0, True), 64)
    (32, 64)
    """
    keys = blk.end - blk.key_start
    windowed = window is not None and blk.causal
    if windowed:
        keys = min(keys, 2 * max(window, MIN_ROWS))
    rows = max(MIN_ROWS, min(MAX_ROWS, TILE_ELEMENTS // (heads * keys)))
    return min(rows, max(window, MIN_ROWS)) if windowed else rows


def block_tiles(row: int, blk: Block, window: int | None, heads: int) -> list[Tile]:
    """The query tiles of one block (see module docstring), in order."""
    rows, tiles = tile_rows(heads, blk, window), []
    for a in range(blk.start, blk.end, rows):
        c = min(a + rows, blk.end)
        probe = Tile(row, a, c, 0, 0, blk, window)
        tiles.append(Tile(row, a, c, probe.lo(a), probe.hi(c - 1), blk, window))
    return tiles


def _scores(query, key, t: Tile | Group, rows, scale, softcap, groups):
    """float32 scores of one tile, (Hkv, G, rows, keys), masked (-inf where hidden); `rows`:
    the tile's query positions (`Tile.index`).

    Returns (q, k, s, capped): q already multiplied by scale (/ softcap), k, the scores, and
    tanh(score / softcap) under a soft-cap (else None). The scale is folded into the small q.
    """
    q = query[t.row, :, rows].float() * (scale if softcap is None else scale / softcap)
    q = q.unflatten(0, (-1, groups))  # (Hkv, G, T, D): head h uses kv head h // G (repeat_kv)
    k = key[t.row, :, t.key_start : t.key_end].float()[:, None]  # (Hkv, 1, L, D)
    s = torch.matmul(q, k.transpose(-1, -2))
    capped = None
    if softcap is not None:
        capped = s.tanh_()
        s = capped * softcap
    hidden = t.hidden(query.device)
    if hidden is not None:
        s.masked_fill_(hidden, float("-inf"))
    return q, k, s, capped


def _sink_logits(sinks, groups, rows):
    """(Hkv, G, rows) sink logit of every query of a tile, or None."""
    return None if sinks is None else sinks.float().view(-1, groups, 1).expand(-1, -1, rows)


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, sinks, tiles, scale, softcap):
        batch, heads, seq, _ = query.shape
        groups = heads // key.shape[1]
        out = query.new_zeros(query.shape)
        lse = query.new_zeros(batch, heads, seq, dtype=torch.float32)
        for t in tiles:
            rows = t.index(query.device)
            _, _, s, _ = _scores(query, key, t, rows, scale, softcap, groups)
            lse_t = _logsumexp(s, _sink_logits(sinks, groups, t.rows))  # (Hkv, G, T)
            p = s.sub_(lse_t[..., None]).exp_()
            v = value[t.row, :, t.key_start : t.key_end].float()[:, None]  # (Hkv, 1, L, D)
            out[t.row, :, rows] = torch.matmul(p, v).flatten(0, 1).to(out.dtype)
            lse[t.row, :, rows] = lse_t.flatten(0, 1)
        ctx.save_for_backward(query, key, value, sinks, out, lse)
        ctx.tiles, ctx.scale, ctx.softcap = tiles, scale, softcap
        return out

    @staticmethod
    def backward(ctx, dout):
        query, key, value, sinks, out, lse = ctx.saved_tensors
        groups = query.shape[1] // key.shape[1]
        dq = torch.zeros_like(query, dtype=torch.float32)
        dk = torch.zeros_like(key, dtype=torch.float32)
        dv = torch.zeros_like(value, dtype=torch.float32)
        dsink = None if sinks is None else torch.zeros(sinks.shape, dtype=torch.float32, device=sinks.device)
        delta = (dout.float() * out.float()).sum(-1)  # (B, H, S): D[q] = dout[q] . out[q]
        k_factor = 1.0 if ctx.softcap is None else ctx.softcap  # q from _scores is scale / softcap
        for t in ctx.tiles:
            rows, keys = t.index(query.device), slice(t.key_start, t.key_end)
            q, k, s, capped = _scores(query, key, t, rows, ctx.scale, ctx.softcap, groups)
            lse_t = lse[t.row, :, rows].unflatten(0, (-1, groups))  # (Hkv, G, T)
            d_t = delta[t.row, :, rows].unflatten(0, (-1, groups))
            p = s.sub_(lse_t[..., None]).exp_()  # (Hkv, G, T, L)
            do = dout[t.row, :, rows].float().unflatten(0, (-1, groups))  # (Hkv, G, T, D)
            v = value[t.row, :, keys].float()[:, None]
            dv[t.row, :, keys] += torch.matmul(p.transpose(-1, -2), do).sum(1)
            ds = torch.matmul(do, v.transpose(-1, -2)).sub_(d_t[..., None]).mul_(p)
            if capped is not None:
                ds.mul_(capped.square_().neg_().add_(1))  # d tanh = 1 - tanh^2
            dq[t.row, :, rows] = torch.matmul(ds, k).flatten(0, 1).mul_(ctx.scale)
            dk[t.row, :, keys] += torch.matmul(ds.transpose(-1, -2), q).sum(1).mul_(k_factor)
            if dsink is not None:
                p_sink = torch.exp(_sink_logits(sinks, groups, t.rows) - lse_t)
                dsink -= (p_sink * d_t).sum(-1).flatten()
        return (dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype),
                None if dsink is None else dsink.to(sinks.dtype), None, None, None)


def _logsumexp(s, sink):
    """log(sum_k exp(s) + exp(sink)) over the last axis of s (sink None: plain logsumexp)."""
    if sink is None:
        return torch.logsumexp(s, dim=-1)
    return torch.logaddexp(torch.logsumexp(s, dim=-1), sink)


def tiled_attention(query, key, value, tiles: list[Tile], scale: float, softcap: float | None = None,
                    sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of the queries in `tiles` (module docstring); other rows are 0.

    query (B, H, S, D), key and value (B, Hkv, S, D), sinks (H,) or None. Returns (B, H, S, D).
    """
    return _TiledAttention.apply(query, key, value, sinks, tiles, scale, softcap)
