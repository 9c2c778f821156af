"""The SDPA tiles of a layout in one autograd node: the cost of the blocks, not of their number.

`focusft.core.attention` cuts every row of a layout into *pieces*: a long block is one piece (or
several `Tile`s of its queries), runs of short blocks are gathered into `Group`s of about a
hundred queries (`focusft.core.tiled_attention`). A piece is queries ``idx`` of row ``b``
against keys [key_start, key_end), with a visibility mask where not every query sees every key
(a square causal piece uses the kernel's own causal flag instead). All pieces of one attention
call go through one autograd function::

    forward:   out[b, :, idx], L[b, :, idx] = SDPA(q[b, :, idx], k[b, :, keys], v[b, :, keys], mask)
    backward:  dq[b, :, idx] = dq_piece;  dk[b, :, keys] += dk_piece;  dv[b, :, keys] += dv_piece

into gradients allocated once, so a row of 2T blocks costs its block-sparse work plus O(pieces)
kernel calls, where an autograd graph of per-block slices would give every slice a gradient of
the whole sequence, summed afterwards (work O(blocks x S) per layer), and SDPA calls on blocks
of two or three queries would run far below the kernel's speed. Two kernels:

* CPU: SDPA's own flash kernel (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its
  backward), which returns the log-sum-exp L; the backward is the kernel's backward of every
  piece from the saved q, k, v, output and L: no recomputation.
* anywhere else: `F.scaled_dot_product_attention` per piece in the forward, and in the backward
  the same call again per piece under autograd (one more attention forward), so that no piece's
  graph (nor its mask) outlives the forward.

What the node keeps for backward is saved with ``save_for_backward`` (q, k, v, output, L):
activation checkpointing and other saved-tensor hooks see it as they see any op's tensors.
Masks are rebuilt per piece when needed and never kept. Dropout is not done here (its random
mask would differ between the pieces' forward and backward); `focusft.core.attention` routes
a call with dropout through per-block SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from focusft.core.tiled_attention import Group, Tile

FLASH_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _mask(piece: Tile | Group, device, dtype) -> torch.Tensor | None:
    """Additive (queries, keys) mask of a piece in `dtype` (bool where dtype is bool), or None."""
    hidden = piece.hidden(device)
    if hidden is None:
        return None
    if dtype == torch.bool:
        return ~hidden
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))


def _square_causal(piece: Tile | Group) -> bool:
    """A causal tile whose queries are exactly its keys: the kernel's causal flag, no mask."""
    return (isinstance(piece, Tile) and piece.block.causal and piece.start == piece.key_start
            and piece.end == piece.key_end and piece.lo(piece.end - 1) == piece.key_start)


def _operands(query, key, value, piece, idx):
    """(1, H, n, D) queries and (1, Hkv, L, D) keys / values of a piece."""
    keys = slice(piece.key_start, piece.key_end)
    r = slice(piece.row, piece.row + 1)
    return query[r][:, :, idx], key[r, :, keys], value[r, :, keys]


def _flash_cpu(q, k, v, piece, scale):
    causal = _square_causal(piece)
    mask = None if causal else _mask(piece, q.device, q.dtype)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale)


def _flash_cpu_backward(dout, q, k, v, out, lse, piece, scale):
    causal = _square_causal(piece)
    mask = None if causal else _mask(piece, q.device, q.dtype)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale)


def _sdpa(q, k, v, piece, scale):
    causal = _square_causal(piece)
    mask = None if causal else _mask(piece, q.device, torch.bool)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


class _PiecesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, pieces, scale, flash_cpu):
        out = query.new_zeros(*query.shape[:3], value.shape[-1])
        lse_dtype = torch.promote_types(query.dtype, torch.float32)
        lse = query.new_zeros(query.shape[:3], dtype=lse_dtype) if flash_cpu else None
        for piece in pieces:
            idx = piece.index(query.device)
            q, k, v = _operands(query, key, value, piece, idx)
            if flash_cpu:
                o, l = _flash_cpu(q, k, v, piece, scale)
                lse[piece.row, :, idx] = l[0]
            else:
                o = _sdpa(q, k, v, piece, scale)
            out[piece.row, :, idx] = o[0]
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.pieces, ctx.scale, ctx.flash_cpu = pieces, scale, flash_cpu
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        query, key, value, out, lse = ctx.saved_tensors
        acc = torch.promote_types(key.dtype, torch.float32)  # dk, dv sum many pieces
        dq = torch.zeros_like(query)
        dk, dv = torch.zeros_like(key, dtype=acc), torch.zeros_like(value, dtype=acc)
        for piece in ctx.pieces:
            idx = piece.index(query.device)
            q, k, v = _operands(query, key, value, piece, idx)
            d_o = dout[piece.row : piece.row + 1][:, :, idx]
            if ctx.flash_cpu:
                o, l = out[piece.row : piece.row + 1][:, :, idx], lse[piece.row : piece.row + 1][:, :, idx]
                gq, gk, gv = _flash_cpu_backward(d_o, q, k, v, o, l, piece, ctx.scale)
            else:
                with torch.enable_grad():
                    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                    o = _sdpa(*leaves, piece, ctx.scale)
                    gq, gk, gv = torch.autograd.grad(o, leaves, d_o)
            keys = slice(piece.key_start, piece.key_end)
            dq[piece.row, :, idx] = gq[0]
            dk[piece.row, :, keys] += gk[0]
            dv[piece.row, :, keys] += gv[0]
        return dq, dk.to(key.dtype), dv.to(value.dtype), None, None, None


def pieces_attention(query, key, value, pieces: list[Tile | Group], scale=None) -> torch.Tensor:
    """Attention of the queries in `pieces` (module docstring); other rows are 0.

    query (B, H, S, D), key and value (B, Hkv, S, D). Returns (B, H, S, D)."""
    flash_cpu = query.device.type == "cpu" and query.dtype in FLASH_CPU_DTYPES
    return _PiecesAttention.apply(query, key, value, pieces, scale, flash_cpu)
