"""Greedy generation with a KV cache, under the causal mask or the training (GLM) mask.

    mode="causal":  prefill the prompt causally, then decode (ordinary inference);
    mode="prefix":  prefill the prompt under the mask FocuSFT trains with (each context turn
                    bidirectional, earlier responses causal), then decode causally. The
                    generated tokens form a response block: token t sees the whole prompt and
                    the generated tokens before it, exactly as in training.

Prompts are left-padded to a batch. A left-padded row with p pads is a layout whose blocks
start at p with keys from p (`Block.key_start`), and positions count from its first real
token, so padding never changes a row's result. Decoding steps pass the usual 2-D attention
mask and go through plain SDPA.
"""

from __future__ import annotations

from typing import Sequence

import torch

from focusft.core import attention
from focusft.core.masks import AttentionLayout, Block, turn_blocks


def prompt_layout(loss_masks: Sequence[Sequence[int]], seq_len: int, mode: str) -> AttentionLayout:
    """Layout of left-padded prompts; loss_masks[b] marks earlier assistant tokens of prompt b."""
    rows = []
    for mask in loss_masks:
        pad = seq_len - len(mask)
        if mode == "causal":
            rows.append((Block(pad, seq_len, pad, True),))
        else:
            rows.append(tuple(turn_blocks([0] * pad + list(mask), seq_len, key_start=pad)))
    return AttentionLayout(tuple(rows), seq_len)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int,
                    stop_ids: Sequence[int] = (), mode: str = "causal",
                    prompt_loss_masks: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Greedy continuation of each token-id prompt; stops at any of `stop_ids` (not returned)."""
    attention.use_focusft_attention(model)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    masks = prompt_loss_masks or [[0] * len(p) for p in prompts]
    layout = prompt_layout(masks, ids.shape[1], mode)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, position_ids=positions, layout=layout, use_cache=True,
                logits_to_keep=1)  # the prompt's other logits are never read
    cache, nxt = _cache(out), out.logits[:, -1].argmax(-1)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    stop = torch.tensor(list(stop_ids) or [-1], device=device)
    generated = []
    for _ in range(max_new_tokens):
        done |= torch.isin(nxt, stop)
        generated.append(torch.where(done, -1, nxt))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                    cache=cache, use_cache=True)
        cache, nxt = _cache(out), out.logits[:, -1].argmax(-1)
    rows = torch.stack(generated, 1).tolist() if generated else [[] for _ in prompts]
    return [[t for t in row if t >= 0] for row in rows]


def _cache(out):
    """The KV cache of a model output (`cache` in transformers >= 5.x, `past_key_values` before)."""
    return getattr(out, "cache", None) or out.past_key_values
