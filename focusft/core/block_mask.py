"""The FlexAttention BlockMask of a layout, built straight from its key ranges (never S x S).

FlexAttention works on tiles of ``BLOCK`` queries x ``BLOCK`` keys (128 x 128). For every query
tile its BlockMask lists the key tiles that are *full* (every query sees every key: no mask is
evaluated there) and the *partial* ones (the ``mask_mod`` decides element by element); any other
tile is skipped. In a layout (`focusft.core.masks`) query q sees exactly the keys
lo(q) <= k < hi(q), one interval, so for query tile i and key tile j = keys [a, a + BLOCK)::

    touched  iff  some real q of tile i has lo(q) < a + BLOCK and hi(q) > a      (hi(q) > lo(q))
    full     iff  every q of tile i has lo(q) <= a and a + BLOCK <= hi(q)
    partial  =    touched and not full

A tile that sticks out of the sequence (S not a multiple of BLOCK) or holds a padding query is
never full. The key tiles one query touches are the run lo // BLOCK .. (hi - 1) // BLOCK, so the
touched table is a difference array over key tiles (+1 at the run's first tile, -1 after its
last, added up over the queries of a tile) and a cumulative sum; ``full`` needs only the largest
lo and the smallest hi of each query tile. Memory: O(B * S) for the ranges and
O(B * (S / BLOCK)^2) for the tables (4 MiB of int32 per row at 128K tokens); the dense mask it
replaces would be B x S x S booleans (16 GiB per row at 128K).

The ``mask_mod`` of the partial tiles reads the same ranges: ``lo[b, q] <= k < hi[b, q]``.
"""

from __future__ import annotations

import torch

BLOCK = 128  # FlexAttention's default (and the compiled kernels') tile size


def block_tables(lo: torch.Tensor, hi: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(touched, full), each (B, n, n) bool with n = ceil(S / block): query tile x key tile.

    >>> lo, hi = torch.tensor([[0, 0, 0, 0]]), torch.tensor([[1, 2, 3, 4]])   # causal, S = 4
    >>> [t[0].int().tolist() for t in block_tables(lo, hi, block=2)]
    [[[1, 0], [1, 1]], [[0, 0], [1, 0]]]
    """
    batch, seq = lo.shape
    n = -(-seq // block)
    real = hi > lo
    first = torch.where(real, lo // block, 0)
    after = torch.where(real, (hi - 1) // block + 1, 0)  # an empty query adds +1 and -1 at tile 0
    row = (torch.arange(seq, device=lo.device) // block) * (n + 1)
    diff = torch.zeros(batch, n * (n + 1), dtype=torch.int32, device=lo.device)
    ones = torch.ones_like(first, dtype=torch.int32)
    diff.scatter_add_(1, row + first, ones).scatter_add_(1, row + after, -ones)
    touched = diff.view(batch, n, n + 1).cumsum(-1, dtype=torch.int32)[..., :n] > 0

    pad = n * block - seq  # queries past S: never full (lo above every key, hi = 0)
    lo_max = torch.nn.functional.pad(lo, (0, pad), value=seq + 1).view(batch, n, block).amax(-1)
    hi_min = torch.nn.functional.pad(hi, (0, pad), value=0).view(batch, n, block).amin(-1)
    start = torch.arange(n, device=lo.device) * block  # first key of each key tile
    full = (lo_max[:, :, None] <= start) & (hi_min[:, :, None] >= start + block)
    return touched, full


def _kv_lists(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, n) bool -> (B, 1, n) int32 counts and (B, 1, n, n) int32 key-tile indices, the
    selected tiles first and in ascending order (what `BlockMask.from_kv_blocks` reads)."""
    counts = table.sum(-1, dtype=torch.int32)
    order = torch.argsort((~table).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
    return counts[:, None], order[:, None]


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device`; a CPU tensor bound for CUDA goes through pinned memory without blocking."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def from_key_ranges(lo: torch.Tensor, hi: torch.Tensor, device, block: int = BLOCK):
    """The BlockMask (one head broadcast to all) of the key ranges lo <= k < hi, each (B, S)."""
    from torch.nn.attention.flex_attention import BlockMask

    lo, hi = to_device(lo, device), to_device(hi, device)
    touched, full = block_tables(lo, hi, block)
    partial_num, partial_idx = _kv_lists(touched & ~full)
    full_num, full_idx = _kv_lists(full)

    def visible(b, h, q, k):
        return (k >= lo[b, q]) & (k < hi[b, q])

    seq = lo.shape[1]
    return BlockMask.from_kv_blocks(partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=visible, seq_lengths=(seq, seq))
