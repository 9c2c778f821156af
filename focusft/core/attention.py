"""Block-prefix attention through SDPA: the GLM mask without an S x S tensor.

Registered with transformers' `AttentionInterface` under the name ``"focusft"``, so any decoder
that supports the attention interface (Llama, Qwen2/3, Mistral, Gemma, ...) can use it via
``model.set_attn_implementation("focusft")``. A forward call that passes ``layout=`` (an
`AttentionLayout`, see `focusft.core.masks`) is computed block by block::

    context block  [s, e):  out[s:e] = SDPA(q[s:e], k[k0:e], v[k0:e])                 (dense)
    response block [s, e):  out[s:e] = SDPA(q[s:e], k[k0:e], v[k0:e], lower-right causal)
    padding:                out = 0
    last layer (with_tail): only the blocks holding positions where logits are taken, each
                            from its first such query; other rows out = 0

All these SDPA calls of one attention call are one autograd node
(`focusft.core.block_attention`), which writes the gradients of every block into dq, dk, dv
allocated once. A block of at least GROUP_ROWS queries is a piece of its own (a square causal
one: the kernel's causal flag; a lower-right causal one: tiles of queries, each with its
mask); shorter blocks (many turns: a few tokens each) are gathered, run by run, into tiles of
about a hundred queries with one visibility mask each (`tiled_attention.group_tiles`), so a
row of T turns costs its block-sparse work and O(S / tile) kernel calls, not O(T) calls each
with a gradient of the whole sequence. With attention dropout every block is its own SDPA
call under autograd (as the random mask must be drawn once).

What else a family's attention call asks for (`attention_features`):

    sliding_window=W   blocks that W changes (e - k0 > W; window defined in `focusft.core.masks`):
                       a long response block through SDPA tile by tile (tiles of at most W
                       queries, each with at most 2W keys and its own mask), a long context
                       block through the tiled explicit math of `focusft.core.tiled_attention`,
                       short blocks in gathered tiles whose masks hold the window; the other
                       blocks through SDPA as above, so W >= the row length changes nothing
    softcap=c          (Gemma 2) every block through the tiled explicit math (short blocks
                       gathered into tiles as above)
    s_aux=sinks        (GPT-OSS) every block through the tiled explicit math; gradients reach
                       the sink logits
    anything else      an unknown non-None argument, or a config.layer_types entry other than
                       full / sliding attention (Llama 4's chunked layers): `UserError`, before
                       anything is computed. Harmless arguments are listed in `HARMLESS`.

A layout that carries a FlexAttention ``BlockMask`` (`AttentionLayout.with_block_mask`, for
CUDA, where FlexAttention compiles to fused kernels and has a backward) is computed by one
``flex_attention`` call over the whole batch instead: a window through a BlockMask of the
windowed key ranges, a soft-cap as its ``score_mod``, sinks through its log-sum-exp, the last
layer through the tail's own BlockMask (`focusft.core.block_mask`).

Under sequence parallelism (`focusft.core.sequence_parallel.active`) a layout call gets this
rank's shard of the positions; the query, key and value are exchanged so that the call above
runs on every position for a share of the heads, and exchanged back.

Without ``layout`` (generation, decoding with a KV cache) the call is exactly transformers' own
SDPA attention, so a model using "focusft" behaves like "sdpa" everywhere else; with a soft-cap
or sinks (which SDPA cannot do) it is eager math under transformers' own mask (`masked_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from focusft.errors import UserError
from focusft.core import sequence_parallel
from focusft.core.masks import AttentionLayout, Block, window_binds
from focusft.core.block_attention import pieces_attention
from focusft.core.sdpa_backends import on_fused_kernels
from focusft.core.tiled_attention import Tile, block_tiles, group_tiles, tiled_attention

NAME = "focusft"
GROUP_ROWS = 64  # blocks with fewer queries: gathered into tiles of the explicit math


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


def _tile_attention(q, k, v, tile, scale, dropout) -> torch.Tensor:
    """SDPA for one tile of a causal block under a window (`focusft.core.tiled_attention.Tile`):
    queries [start, end) against keys [key_start, key_end) with the tile's (rows x keys) mask,
    at most W + rows keys. q: (1, H, S, D); k, v: (1, Hkv, S, D). Returns (1, H, rows, D)."""
    hidden = tile.hidden(q.device)
    return F.scaled_dot_product_attention(
        q[:, :, tile.start : tile.end], k[:, :, tile.key_start : tile.key_end],
        v[:, :, tile.key_start : tile.key_end], attn_mask=None if hidden is None else ~hidden,
        dropout_p=dropout, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


@on_fused_kernels  # CUDA: flash / memory-efficient / cuDNN only, or a UserError
def layout_attention(query, key, value, layout: AttentionLayout, scale=None, dropout=0.0, *,
                     window: int | None = None, softcap: float | None = None,
                     sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of a whole batch under `layout`. Shapes (B, H, S, D) -> (B, S, H, D).

    ``window``: sliding window W (query q looks back to q - W + 1, see `focusft.core.masks`);
    ``softcap``: scores become softcap * tanh(score / softcap); ``sinks``: (H,) learned sink logit
    of every head, one more term in each softmax denominator. Blocks that none of these change
    go through SDPA; the others through the tiled explicit math of `focusft.core.tiled_attention`.
    """
    explicit = softcap is not None or sinks is not None  # every block: SDPA cannot
    heads = query.shape[1]
    tiles, pieces, parts = [], [], []  # explicit math; one SDPA node; SDPA per block (dropout)
    for b, blocks in enumerate(layout.rows):
        row, short = [], []
        q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        for blk in blocks:
            if blk.end - blk.start < GROUP_ROWS and not dropout:
                short.append(blk)  # gathered with its short neighbours into one piece
                continue
            (tiles if explicit else pieces).extend(group_tiles(b, short, window, heads))
            short = []
            if explicit or (window_binds(blk, window) and not blk.causal):
                tiles += block_tiles(b, blk, window, heads)
            elif dropout and window_binds(blk, window):  # causal under a window: tile by tile
                row += [(t.start, _tile_attention(q, k, v, t, scale, dropout))
                        for t in block_tiles(0, blk, window, heads)]
            elif dropout:
                row.append((blk.start, _block_attention(q, k, v, blk, scale, dropout)))
            else:
                pieces += _block_pieces(b, blk, window, heads)
        (tiles if explicit else pieces).extend(group_tiles(b, short, window, heads))
        parts.append(row)
    if tiles and dropout:
        raise UserError(f"attention dropout {dropout:g} together with a soft-cap, attention sinks or "
                        "a sliding window shorter than a block is not supported by the focusft "
                        "attention; set the model config's attention_dropout to 0.")
    tile_scale = query.shape[-1] ** -0.5 if scale is None else scale  # SDPA's default
    out = tiled_attention(query, key, value, tiles, tile_scale, softcap, sinks) if tiles else None
    if pieces:
        dense = pieces_attention(query, key, value, pieces, scale)
        out = dense if out is None else out + dense  # disjoint query rows
    if any(parts):
        dense = _assemble(parts, query, value)
        out = dense if out is None else out + dense
    if out is None:
        out = query.new_zeros(*query.shape[:3], value.shape[-1])
    return out.transpose(1, 2).contiguous()


def _block_pieces(row: int, blk: Block, window: int | None, heads: int) -> list[Tile]:
    """The SDPA pieces of a long block: the whole block, when every query sees all its keys
    (dense) or it is square causal; else its query tiles (`block_tiles`), each with its mask."""
    whole = Tile(row, blk.start, blk.end, blk.key_start, blk.end, blk, window)
    if not window_binds(blk, window) and (not blk.causal or blk.start == blk.key_start):
        return [whole]
    return block_tiles(row, blk, window, heads)


def _assemble(parts, query, value) -> torch.Tensor:
    """(B, H, S, D) from per-row [(start, (1, H, n, D)), ...] in order; zeros in between."""
    seq, heads, dim = query.shape[2], query.shape[1], value.shape[-1]
    rows = []
    for row in parts:
        pieces, at = [], 0
        for start, piece in row:  # rows between blocks (padding, skipped queries) get zeros
            if start > at:
                pieces.append(query.new_zeros(1, heads, start - at, dim))
            pieces.append(piece)
            at = start + piece.shape[2]
        if at < seq:
            pieces.append(query.new_zeros(1, heads, seq - at, dim))
        rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))  # (1, H, S, D)
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


_compiled_flex = None


def flex_layout_attention(query, key, value, layout: AttentionLayout, scale=None,
                          softcap: float | None = None, window: int | None = None,
                          sinks: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """FlexAttention over the layout's BlockMask (compiled on CUDA). (B, H, S, D) -> (B, S, H, D).

    A window uses the layout's BlockMask under that window (`AttentionLayout.block_mask_for`); a
    soft-cap is a ``score_mod``: score -> softcap * tanh(score / softcap). Sinks (H,) come in
    through the returned log-sum-exp L of each query: with the sink term in the denominator the
    output is out * exp(L) / (exp(L) + exp(sink)) = out * sigmoid(L - sink) (a query that sees
    nothing keeps 0)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    if dropout:
        raise UserError(f"attention dropout {dropout:g} is not supported by --attention_kernel flex; "
                        "set the model config's attention_dropout to 0 or use the sdpa kernel.")

    fn = flex_attention
    if query.is_cuda:
        _compiled_flex = _compiled_flex or torch.compile(flex_attention, dynamic=True)
        fn = _compiled_flex
    score_mod = None
    if softcap is not None:
        def score_mod(score, b, h, q, k):
            return softcap * torch.tanh(score / softcap)
    gqa = query.shape[1] != key.shape[1]
    aux = None if sinks is None else AuxRequest(lse=True)
    out = fn(query, key, value, score_mod=score_mod, block_mask=layout.block_mask_for(window),
             scale=scale, enable_gqa=gqa, return_aux=aux)
    if sinks is not None:
        out, aux = out
        keep = torch.sigmoid(aux.lse - sinks.float().view(1, -1, 1))  # (B, H, S)
        out = out * keep[..., None].to(out.dtype)
    return out.transpose(1, 2).contiguous()


def focusft_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      layout: AttentionLayout | None = None, **kwargs):
    """transformers attention-interface entry point (see module docstring).

    Under a layout, raises `UserError` for an attention argument or layer type whose math it
    cannot reproduce (`attention_features`), before computing anything. Without one, the
    model's own mask applies, and the call is what transformers' SDPA attention would do.
    """
    if layout is None or query.shape[2] != key.shape[2]:
        softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
        if softcap is None and sinks is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        return masked_attention(query, key, value, attention_mask, scaling, softcap, sinks, dropout), None
    feat = attention_features(module, query, kwargs)
    if (sp := sequence_parallel.current()) is not None:  # a shard: attend over the whole sequence
        def whole(q, k, v):
            return _layout_call(module, q, k, v, layout, scaling, dropout, feat)
        return sp.attention(whole, query, key, value), None
    return _layout_call(module, query, key, value, layout, scaling, dropout, feat), None


def _layout_call(module, query, key, value, layout: AttentionLayout, scaling, dropout,
                 feat) -> torch.Tensor:
    """(B, H, S, D) -> (B, S, H, D) under `layout` (the whole sequence)."""
    if query.shape[2] != layout.seq_len or query.shape[0] != len(layout.rows):
        raise ValueError(f"layout is for {len(layout.rows)} x {layout.seq_len} tokens, "
                         f"attention got {query.shape[0]} x {query.shape[2]}")
    if layout.tail is not None and getattr(module, "layer_idx", None) == layout.tail_layer:
        layout = layout.tail  # the last layer: only the rows that reach the loss
    if layout.block_mask is not None:
        return flex_layout_attention(query, key, value, layout, scaling, feat.softcap, feat.window,
                                     feat.sinks, dropout)
    return layout_attention(query, key, value, layout, scaling, dropout, window=feat.window,
                            softcap=feat.softcap, sinks=feat.sinks)


def masked_attention(query, key, value, attention_mask, scale=None, softcap=None, sinks=None,
                     dropout=0.0) -> torch.Tensor:
    """Eager attention under transformers' own mask, with a soft-cap and/or sinks (no layout:
    generation, decoding). attention_mask: boolean (True = visible), additive, or None (causal,
    queries aligned to the last keys). (B, H, Sq, D) -> (B, Sq, H, D)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1)
    s = torch.matmul(query.float(), k.transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if attention_mask is None:
        attention_mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(
            s.shape[-1] - s.shape[-2])
    if attention_mask.dtype == torch.bool:
        s = s.masked_fill(~attention_mask, torch.finfo(s.dtype).min)
    else:
        s = s + attention_mask.float()
    if sinks is not None:
        sink = sinks.float().view(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
        s = torch.cat([s, sink], dim=-1)
    p = torch.softmax(s, dim=-1)
    if sinks is not None:
        p = p[..., :-1]
    p = F.dropout(p, p=dropout, training=dropout > 0)
    return torch.matmul(p.to(v.dtype), v).transpose(1, 2).contiguous()


# ----------------------------------------------------------------- what an attention call asks
HARMLESS = frozenset({
    # bookkeeping, or read only by other kernels (flash varlen, caches); the layout already
    # decides which keys each query sees (attention_mask and is_causal are replaced by it)
    "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx",
    "is_causal", "use_cache", "cache_position", "output_attentions", "output_hidden_states",
    "output_router_logits", "num_items_in_batch", "deterministic",
})
COMPUTED = frozenset({"sliding_window", "softcap", "s_aux"})  # see attention_features
REFUSED = {
    "position_bias": "an additive position bias (T5-style relative attention)",
    "attention_chunk_size": "chunked attention",
    "sinks": "per-token attention sink logits",
    "indices": "sparse attention (selected key indices)",
    "block_indices": "block-sparse attention (selected key blocks)",
}
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' config.layer_types


@dataclass(frozen=True)
class AttentionFeatures:
    """What an attention call changes beyond softmax(q k^T * scale + mask) v."""

    window: int | None = None  # sliding window W: keys k > q - W
    softcap: float | None = None  # scores -> softcap * tanh(scores / softcap)
    sinks: torch.Tensor | None = None  # (H,) sink logit per head


def attention_features(module, query, kwargs: dict) -> AttentionFeatures:
    """The window, soft-cap and sinks of one attention call; `UserError` for anything else that
    would change the result (an unknown non-None argument, a layer type other than full or
    sliding attention, e.g. Llama 4's chunked layers).

    The window is the call's ``sliding_window`` argument; when the call does not pass one, the
    module's ``sliding_window`` attribute; when it has none either, ``config.sliding_window`` if
    the layer's ``config.layer_types`` entry is "sliding_attention" (the mask transformers
    builds for that layer).
    """
    for name, value in kwargs.items():
        if value is not None and name not in HARMLESS and name not in COMPUTED:
            what = REFUSED.get(name, f"the attention argument `{name}`, which focusft does not know")
            raise UserError(f"{_where(module)} uses {what}. The focusft attention cannot compute it "
                            "exactly under its GLM/causal layout, and training with it silently "
                            "dropped would be wrong; this model is not supported.")
    config = getattr(module, "config", None)
    layer_types, idx = getattr(config, "layer_types", None), getattr(module, "layer_idx", None)
    layer_type = layer_types[idx] if layer_types and isinstance(idx, int) and idx < len(layer_types) else None
    if layer_type is not None and layer_type not in LAYER_TYPES:
        raise UserError(f"{_where(module)} is a '{layer_type}' layer (config.layer_types). The "
                        f"focusft attention computes only {' and '.join(LAYER_TYPES)} layers exactly; "
                        "this model is not supported.")
    if "sliding_window" in kwargs:
        window = kwargs["sliding_window"]
    else:
        window = getattr(module, "sliding_window", None)
        if window is None and layer_type == "sliding_attention":
            window = getattr(config, "sliding_window", None)
    if window is not None and (not isinstance(window, int) or window < 1):
        raise UserError(f"{_where(module)}: sliding_window {window!r} is not a positive number of "
                        "tokens (config.sliding_window).")
    sinks = kwargs.get("s_aux")
    if sinks is not None and sinks.numel() != query.shape[1]:
        raise UserError(f"{_where(module)}: s_aux has {sinks.numel()} sink logits for "
                        f"{query.shape[1]} attention heads; expected one per head.")
    return AttentionFeatures(window, kwargs.get("softcap"), sinks)


def _where(module) -> str:
    """'Gemma2Attention (model_type 'gemma2', layer 3)': which attention of which family."""
    family = getattr(getattr(module, "config", None), "model_type", None)
    layer = getattr(module, "layer_idx", None)
    parts = ([f"model_type '{family}'"] if family else []) + ([f"layer {layer}"] if layer is not None else [])
    return type(module).__name__ + (f" ({', '.join(parts)})" if parts else "")


AttentionInterface.register(NAME, focusft_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_focusft_attention(model):
    """Switch `model` (a transformers PreTrainedModel) to the block-prefix attention, pass the
    layout on in families whose layers drop it (`focusft.core.models`), and let the last layer's MLP
    compute only the rows where logits are taken (`focusft.core.last_layer`).

    Returns ``restore()``, which puts back the previous attention implementation and removes
    every hook this call installed: the model is plain again.
    """
    from focusft.core import last_layer, models

    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    handles = models.prepare(model)  # families whose layers drop layout= get it passed on
    had_tail = getattr(model, "_focusft_tail_rows", None) is not None
    tail = last_layer.install(model)

    def restore() -> None:
        for handle in handles:
            handle.remove()
        if handles:
            del models.unwrap(model)._focusft_prepared
        if tail is not None and not had_tail:
            tail.remove()
            del model._focusft_tail_rows
        model.set_attn_implementation(before)

    return restore
