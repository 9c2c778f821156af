"""The probe attention: the ordinary forward, plus the metrics of every layer on the side.

Registered with transformers' `AttentionInterface` as ``"focusft_probe"``. Each call computes
its output exactly as the ``"focusft"`` implementation does (block-prefix SDPA under
``layout=``, transformers' SDPA otherwise), so the hidden states of the probed forward are the
model's own; then, if the forward was given ``probe=`` (a `MassCollector`), it hands the
layer's post-RoPE queries and keys to the collector, which reduces them chunk by chunk before
the next layer runs. Nothing S x S is ever kept, and only one layer is alive at a time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from focusft.core.attention import focusft_attention
from focusft.core.masks import AttentionLayout
from focusft.diagnostics.mass import Diagnostics, MassCollector

PROBE = "focusft_probe"
MASKS = ("glm", "causal")


def probe_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                    probe: MassCollector | None = None, **kwargs):
    """Attention-interface entry point: `focusft_attention`, observed by `probe`."""
    out = focusft_attention(module, query, key, value, attention_mask, dropout=dropout,
                            scaling=scaling, **kwargs)
    # A decoding step (query shorter than key) is not a probe forward: the collector only
    # knows the full-sequence layout.
    if probe is not None and query.shape[2] == key.shape[2]:
        probe.observe(module.layer_idx, query.detach(), key.detach(), scaling)
    return out


AttentionInterface.register(PROBE, probe_attention)
AttentionMaskInterface.register(PROBE, sdpa_mask)


@contextlib.contextmanager
def probing(model) -> Iterator[None]:
    """Switch `model` to the probe attention inside the block; restore its own afterwards."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(PROBE)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def batch_layout(loss_mask: torch.Tensor, attention_mask: torch.Tensor, mask: str) -> AttentionLayout:
    """The GLM turn-block layout (as FocuSFT trains) or plain causal, from a collated batch."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    lengths = attention_mask.sum(1).tolist()
    if mask == "glm":
        return AttentionLayout.glm(loss_mask.cpu(), lengths)
    return AttentionLayout.causal(lengths, loss_mask.shape[1])


def measure(model, batch: dict, mask: str | AttentionLayout = "glm", sink_k: int = 4,
            chunk_size: int | None = None, evidence: torch.Tensor | None = None) -> Diagnostics:
    """Attention metrics of `model` on a collated batch, one forward, no gradients.

    ``batch`` needs ``input_ids``, ``attention_mask`` and ``loss_mask`` (B, S), right-padded as
    `focusft.data.pipeline.Collator` makes them; ``evidence`` (or ``batch["evidence_mask"]``) is an
    optional (B, S) token mask. The model runs in eval mode (no dropout) and is put back in the
    mode it was in; its attention implementation is restored too.
    """
    layout = mask if isinstance(mask, AttentionLayout) else batch_layout(
        batch["loss_mask"], batch["attention_mask"], mask)
    evidence = batch.get("evidence_mask") if evidence is None else evidence
    collector = MassCollector(layout, batch["loss_mask"], sink_k, evidence, chunk_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), probing(model):
            # One kept logit: the lm head's work (and memory) over the sequence is not needed.
            model(input_ids=batch["input_ids"].to(model.device), layout=layout, probe=collector,
                  use_cache=False, logits_to_keep=1)
    finally:
        model.train(was_training)
    return collector.result()
