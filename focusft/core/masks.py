"""Attention layouts: the GLM turn-block mask and plain causal, as key ranges.

FocuSFT trains under a GLM-style mask built from the loss mask. A row is split into blocks:
each maximal run of non-loss tokens (system, user and tool text, assistant headers) is a
*context* block, each maximal run of loss tokens (assistant content + end-of-turn) is a
*response* block. Then

    context query q in block [s, e):   sees keys [0, e)      (its whole block, bidirectional)
    response query q:                  sees keys [0, q + 1)  (causal)
    padding:                           sees nothing, is seen by no one

Every row of the mask is therefore a *prefix* of the keys: query q may attend to exactly the
keys lo(q) <= k < hi(q), with lo = 0 (or the start of its sample when several samples are
packed in one row). That is what lets the attention kernels in `focusft.core.attention` work block
by block through SDPA without ever forming an S x S tensor.

Worked example (one row, length 8, then one pad)::

    position   0  1  2  3  4  5  6  7  8
    loss_mask  0  0  0  1  1  0  0  1  -      (- = padding)
    blocks     C[0,3) R[3,5) C[5,7) R[7,8)
    hi(q)      3  3  3  4  5  7  7  8  0
    lo(q)      0  0  0  0  0  0  0  0  0

The plain causal layout of the same row is one response block R[0,8): hi(q) = q + 1.

Packed rows (several samples in one row, `sample_index` says which token belongs to which)
get the same blocks per sample, with lo(q) = the first position of q's sample, so no token
ever sees another sample.

Sliding windows. A layer with a window W (transformers' ``sliding_window``) also limits how
far back a query looks::

    query q sees keys  max(lo(q), q - W + 1) <= k < hi(q)

On the causal layout this is exactly transformers' sliding-window mask (``sliding_window_overlay``
on top of causal: key k is visible iff q - W < k <= q). In a context block only the look-back is
limited; the keys of q's own block ahead of q stay visible, so every row is still one key range
and a window never hides a query's own block. The row above with W = 2::

    position   0  1  2  3  4  5  6  7
    blocks     C[0,3) R[3,5) C[5,7) R[7,8)
    lo(q)      0  0  1  2  3  4  5  6          (max(0, q - 1))
    hi(q)      3  3  3  4  5  7  7  8

Context query 1 still sees keys 0..2 (its whole block), context query 5 sees keys 4..6; response
query 4 sees keys 3..4, as in the model's own sliding attention. A window with W >= the row's
length changes nothing. The window is a property of a decoder layer, not of the batch: the
layout stays one per batch and `focusft.core.attention` applies W per call (`window_binds`).

FlexAttention's BlockMask of a layout is built from the same (lo, hi) ranges, tile by tile
(`focusft.core.block_mask`). The dense boolean mask (`dense_mask`) exists only as the
reference the tests compare with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from focusft.core.block_mask import from_key_ranges, to_device

@dataclass(frozen=True)
class Block:
    """Queries [start, end) of one row see keys [key_start, end) (dense) or [key_start, q+1) (causal)."""

    start: int
    end: int
    key_start: int
    causal: bool


def turn_blocks(loss_mask: Sequence[int], length: int, key_start: int = 0) -> list[Block]:
    """Split positions [key_start, length) into maximal runs of equal loss-mask value.

    >>> [(b.start, b.end, b.causal) for b in turn_blocks([0, 0, 0, 1, 1, 0, 0, 1], 8)]
    [(0, 3, False), (3, 5, True), (5, 7, False), (7, 8, True)]
    """
    blocks, start = [], key_start
    for pos in range(key_start + 1, length + 1):
        if pos == length or bool(loss_mask[pos]) != bool(loss_mask[start]):
            blocks.append(Block(start, pos, key_start, causal=bool(loss_mask[start])))
            start = pos
    return blocks


def causal_blocks(length: int, key_start: int = 0) -> list[Block]:
    """The plain causal layout of one sample: a single causal block.

    >>> causal_blocks(4)
    [Block(start=0, end=4, key_start=0, causal=True)]
    """
    return [Block(key_start, length, key_start, causal=True)] if length > key_start else []


def query_blocks(blocks: Sequence[Block], needed: Sequence[int]) -> list[Block]:
    """`blocks` restricted to the queries that are `needed`: each block starts at its first needed
    query, blocks without one are dropped. Keys are unchanged, so every kept query sees exactly
    the keys it saw before (a causal block stays lower-right aligned to its end).

    Used for the last decoder layer, whose output matters only where logits are taken::

        position  0  1  2  3  4  5  6  7
        needed    0  0  0  1  1  0  0  1
        GLM       C[0,3) R[3,5) C[5,7) R[7,8)   ->  R[3,5) R[7,8)
        causal    R[0,8)                         ->  R[3,8) (keys [0, q])

    >>> [(b.start, b.end) for b in query_blocks(turn_blocks([0, 0, 0, 1, 1, 0, 0, 1], 8),
    ...                                          [0, 0, 0, 1, 1, 0, 0, 1])]
    [(3, 5), (7, 8)]
    >>> query_blocks(causal_blocks(8), [0, 0, 0, 1, 1, 0, 0, 1])
    [Block(start=3, end=8, key_start=0, causal=True)]
    """
    kept = []
    for blk in blocks:
        first = next((q for q in range(blk.start, blk.end) if needed[q]), None)
        if first is not None:
            kept.append(replace(blk, start=first))
    return kept


def row_segments(sample_index: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, end, sample) of each packed sample in a row; -1 marks padding.

    >>> row_segments([0, 0, 0, 1, 1, 2, -1, -1])
    [(0, 3, 0), (3, 5, 1), (5, 6, 2)]
    """
    spans, start = [], 0
    for pos in range(1, len(sample_index) + 1):
        if pos == len(sample_index) or sample_index[pos] != sample_index[start]:
            if sample_index[start] >= 0:
                spans.append((start, pos, int(sample_index[start])))
            start = pos
    return spans


@dataclass(frozen=True)
class AttentionLayout:
    """The blocks of every row of a batch, plus the padded sequence length."""

    rows: tuple[tuple[Block, ...], ...]
    seq_len: int
    block_mask: Any = field(default=None, compare=False)  # FlexAttention BlockMask, if built
    tail: "AttentionLayout | None" = field(default=None, compare=False)  # see with_tail
    tail_layer: int = -1
    tail_keep: Any = field(default=None, compare=False)  # (P,) positions needed in some row
    window_masks: dict = field(default_factory=dict, compare=False, repr=False)  # block_mask_for

    def with_tail(self, needed: torch.Tensor, layer: int, device=None) -> "AttentionLayout":
        """This layout, whose decoder layer `layer` (the last one) computes attention only for
        the query positions in `needed` (B, S bool, on the CPU; see `query_blocks`); its other
        rows get zeros. Exact for any loss taken at `needed` positions only: those rows of the
        last layer reach nothing else. ``tail_keep``: the positions needed in at least one row
        (the rows the last layer's MLP computes, `focusft.core.last_layer`), copied to `device`
        once here. A layout with a BlockMask gives its tail one too (same device)."""
        rows = tuple(tuple(query_blocks(blocks, row)) for blocks, row in zip(self.rows, needed.tolist()))
        keep = needed.any(0).nonzero(as_tuple=True)[0]
        if device is not None:
            keep = to_device(keep, device)
        tail = AttentionLayout(rows, self.seq_len)
        if self.block_mask is not None:
            tail = tail.with_block_mask(self.block_mask.kv_num_blocks.device)
        return replace(self, tail=tail, tail_layer=layer, tail_keep=keep)

    def with_block_mask(self, device) -> "AttentionLayout":
        """This layout plus a FlexAttention BlockMask of the same key ranges (built once per batch)."""
        return replace(self, block_mask=self._block_mask(device, None), window_masks={})

    def block_mask_for(self, window: int | None):
        """The BlockMask of this layout under a sliding window (built on first use, then kept)."""
        if not any(window_binds(blk, window) for row in self.rows for blk in row):
            return self.block_mask
        if window not in self.window_masks:
            self.window_masks[window] = self._block_mask(self.block_mask.kv_num_blocks.device, window)
        return self.window_masks[window]

    def _block_mask(self, device, window: int | None):
        """The BlockMask of `key_ranges(window)`, from the ranges alone (`focusft.core.block_mask`)."""
        return from_key_ranges(*self.key_ranges(window), device)

    @classmethod
    def glm(cls, loss_mask: torch.Tensor, lengths: Sequence[int],
            sample_index: torch.Tensor | None = None) -> "AttentionLayout":
        """GLM turn-block layout from a (B, S) token-level loss mask and the real lengths.

        With ``sample_index`` (packed rows) every sample's blocks see keys of that sample only.
        """
        masks = loss_mask.tolist()
        rows = []
        for b, (mask, n) in enumerate(zip(masks, lengths)):
            spans = row_segments(sample_index[b].tolist()) if sample_index is not None else [(0, int(n), 0)]
            rows.append(tuple(blk for s, e, _ in spans for blk in turn_blocks(mask[:e], e, key_start=s)))
        return cls(tuple(rows), loss_mask.shape[1])

    @classmethod
    def causal(cls, lengths: Sequence[int], seq_len: int,
               sample_index: torch.Tensor | None = None) -> "AttentionLayout":
        """Plain causal layout; positions at or past a row's length are padding."""
        if sample_index is None:
            return cls(tuple(tuple(causal_blocks(int(n))) for n in lengths), seq_len)
        rows = (tuple(blk for s, e, _ in row_segments(ix) for blk in causal_blocks(e, key_start=s))
                for ix in sample_index.tolist())
        return cls(tuple(rows), seq_len)

    def key_ranges(self, window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi), each (B, S) long: query q of row b sees keys lo <= k < hi. Pads: lo = hi = 0.

        With ``window`` W, lo(q) = max(lo(q), q - W + 1) (module docstring).

        >>> [t.tolist() for t in AttentionLayout.causal([4], 4).key_ranges(window=2)]
        [[[0, 0, 1, 2]], [[1, 2, 3, 4]]]
        """
        lo = torch.zeros(len(self.rows), self.seq_len, dtype=torch.long)
        hi = torch.zeros_like(lo)
        for b, blocks in enumerate(self.rows):
            for blk in blocks:
                lo[b, blk.start : blk.end] = blk.key_start
                if blk.causal:
                    hi[b, blk.start : blk.end] = torch.arange(blk.start + 1, blk.end + 1)
                else:
                    hi[b, blk.start : blk.end] = blk.end
        if window is not None:
            look_back = torch.arange(self.seq_len) - window + 1
            lo = torch.where(hi > 0, torch.maximum(lo, look_back), lo)
        return lo, hi


def window_binds(blk: Block, window: int | None) -> bool:
    """Whether a window of `window` keys hides any key of `blk` from one of its queries.

    >>> blk = Block(0, 8, 0, causal=True)
    >>> window_binds(blk, None), window_binds(blk, 8), window_binds(blk, 7)
    (False, False, True)
    """
    return window is not None and blk.end - blk.key_start > window


def glm_key_limits(loss_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """hi(q) of the GLM mask for a (B, S) loss mask, vectorised (no Python loop over tokens).

    A context token's limit is the end of its run; a response token's is q + 1; pads get 0.

    >>> glm_key_limits(torch.tensor([[0, 0, 0, 1, 1, 0, 0, 1, 0]]), torch.tensor([8])).tolist()
    [[3, 3, 3, 4, 5, 7, 7, 8, 0]]
    """
    batch, seq = loss_mask.shape
    pos = torch.arange(seq).expand(batch, seq)
    real = pos < lengths[:, None]
    is_loss = loss_mask.bool() & real
    # A run ends at p when p is the last real position or the loss value changes at p + 1.
    nxt = torch.cat([is_loss[:, 1:], torch.zeros(batch, 1, dtype=torch.bool)], dim=1)
    run_end = real & ((pos + 1 >= lengths[:, None]) | (nxt != is_loss))
    # End of the run containing p = the first run end at or after p (reverse cumulative min).
    ends = torch.where(run_end, pos + 1, torch.full_like(pos, seq + 1))
    block_end = ends.flip(1).cummin(1).values.flip(1)
    hi = torch.where(is_loss, pos + 1, block_end)
    return torch.where(real, hi, torch.zeros_like(hi))


def dense_mask(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) boolean mask, True where query q may attend key k. Test reference only.

    >>> dense_mask(torch.tensor([[0, 0, 0]]), torch.tensor([[2, 2, 3]]))[0, 0].int().tolist()
    [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    keys = torch.arange(lo.shape[1])
    allowed = (keys >= lo[..., None]) & (keys < hi[..., None])
    return allowed[:, None]
