"""Block-prefix attention through SDPA: the GLM mask without an S x S tensor.

Registered with transformers' `AttentionInterface` under the name ``"focusft"``, so any decoder
that supports the attention interface (Llama, Qwen2/3, Mistral, Gemma, ...) can use it via
``model.set_attn_implementation("focusft")``. A forward call that passes ``layout=`` (an
`AttentionLayout`, see `focusft.masks`) is computed block by block::

    context block  [s, e):  out[s:e] = SDPA(q[s:e], k[k0:e], v[k0:e])                 (dense)
    response block [s, e):  out[s:e] = SDPA(q[s:e], k[k0:e], v[k0:e], lower-right causal)
    padding:                out = 0
    last layer (with_tail): only the blocks holding positions where logits are taken, each
                            from its first such query; other rows out = 0

A response block whose keys start at its own first query is plain ``is_causal=True`` (the
fast kernels). A layout that carries a FlexAttention ``BlockMask`` (`AttentionLayout.
with_block_mask`, for CUDA, where FlexAttention compiles to fused kernels and has a backward)
is computed by one ``flex_attention`` call over the whole batch instead. The lower-right causal bias materialises at most (e - s) x (e - k0) booleans on
CPU, small for a response block. Without ``layout`` (generation, decoding with a KV cache) the
call is exactly transformers' own SDPA attention, so a model using "focusft" behaves like
"sdpa" everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .masks import AttentionLayout, Block

NAME = "focusft"


def _block_attention(q, k, v, blk: Block, scale, dropout) -> torch.Tensor:
    """SDPA for one block. q: (1, H, S, D); k, v: (1, Hkv, S, D). Returns (1, H, e-s, D)."""
    q_blk = q[:, :, blk.start : blk.end]
    k_blk, v_blk = k[:, :, blk.key_start : blk.end], v[:, :, blk.key_start : blk.end]
    gqa = q.shape[1] != k.shape[1]
    if not blk.causal:
        mask, is_causal = None, False
    elif blk.start == blk.key_start:
        mask, is_causal = None, True  # square causal: the flash kernels apply
    else:
        mask, is_causal = causal_lower_right(blk.end - blk.start, blk.end - blk.key_start), False
    return F.scaled_dot_product_attention(
        q_blk, k_blk, v_blk, attn_mask=mask, is_causal=is_causal, dropout_p=dropout,
        scale=scale, enable_gqa=gqa,
    )


def layout_attention(query, key, value, layout: AttentionLayout, scale=None, dropout=0.0):
    """Attention of a whole batch under `layout`. Shapes (B, H, S, D) -> (B, S, H, D)."""
    batch, _, seq, _ = query.shape
    rows = []
    for b, blocks in enumerate(layout.rows):
        q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        parts, at = [], 0
        for blk in blocks:  # rows between blocks (padding, skipped queries) get zeros
            if blk.start > at:
                parts.append(q.new_zeros(1, q.shape[1], blk.start - at, v.shape[-1]))
            parts.append(_block_attention(q, k, v, blk, scale, dropout))
            at = blk.end
        if at < seq:
            parts.append(q.new_zeros(1, q.shape[1], seq - at, v.shape[-1]))
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))  # (1, H, S, D)
    out = rows[0] if batch == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous()


_compiled_flex = None


def flex_layout_attention(query, key, value, layout: AttentionLayout, scale=None):
    """FlexAttention over the layout's BlockMask (compiled on CUDA). (B, H, S, D) -> (B, S, H, D)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if query.is_cuda:
        _compiled_flex = _compiled_flex or torch.compile(flex_attention, dynamic=True)
        fn = _compiled_flex
    gqa = query.shape[1] != key.shape[1]
    out = fn(query, key, value, block_mask=layout.block_mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous()


def focusft_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      layout: AttentionLayout | None = None, **kwargs):
    """transformers attention-interface entry point (see module docstring)."""
    if layout is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("sliding_window"):
        raise NotImplementedError("focusft attention does not support sliding-window layers")
    if query.shape[2] != layout.seq_len or query.shape[0] != len(layout.rows):
        raise ValueError(f"layout is for {len(layout.rows)} x {layout.seq_len} tokens, "
                         f"attention got {query.shape[0]} x {query.shape[2]}")
    if layout.tail is not None and getattr(module, "layer_idx", None) == layout.tail_layer:
        layout = layout.tail  # the last layer: only the rows that reach the loss
    if layout.block_mask is not None:
        return flex_layout_attention(query, key, value, layout, scaling), None
    return layout_attention(query, key, value, layout, scaling, dropout), None


AttentionInterface.register(NAME, focusft_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_focusft_attention(model) -> None:
    """Switch `model` (a transformers PreTrainedModel) to the block-prefix attention."""
    from . import models

    model.set_attn_implementation(NAME)
    models.prepare(model)  # families whose layers drop layout= get it passed on
