"""The last decoder layer's MLP runs only on the rows where logits are taken.

Logits (and so the loss, in both loops) are read only at some positions P of the last decoder
layer's output. That layer's attention already computes only those query rows
(`AttentionLayout.with_tail`); its MLP acts on each token alone, so it too needs only them::

    h = x + attn(norm(x))                  rows outside P: attention output 0 (the layout tail)
    y = h + mlp(norm2(h))   ->   mlp(norm2(h))[:, P] = mlp(norm2(h)[:, P]),  other rows 0

Rows outside P reach nothing (the final norm and the head are per token, and P holds every
position a loss is taken at), so the result at P is exact and no gradient changes. P is the
union over the batch of the needed positions (``AttentionLayout.tail_keep``), so the rows stay
(B, |P|, hidden) and per-sample fast weights (batched by row) keep their layout.

Active only for a forward that passes a layout with a tail for that layer; otherwise (plain
forward, generation, the context-objective inner loop under its own layout) the MLP is untouched.
The MLP is the last layer's MLP block (`focusft.core.models.mlp_block`); not installed for
mixture-of-experts models whose loss counts router statistics over all tokens
(``config.output_router_logits`` exists).
"""

from __future__ import annotations

import torch
from torch import nn

from focusft.errors import UserError


class TailRows:
    """Hooks on the last decoder layer and its MLP (see module docstring).

    The layout is read where the layer hands it on (its attention's call); that also holds when
    activation checkpointing re-runs the layer's forward without calling the layer itself.
    """

    def __init__(self, layer: nn.Module, index: int, mlp: nn.Module):
        self.index = index
        self.keep: torch.Tensor | None = None
        self._seq = 0
        self._handles = [layer.register_forward_pre_hook(self._forget),
                         mlp.register_forward_pre_hook(self._gather),
                         mlp.register_forward_hook(self._scatter)]
        self._handles += [child.register_forward_pre_hook(self._see_layout, with_kwargs=True)
                          for child in layer.children() if child is not mlp]

    def _forget(self, module, args):
        self.keep = None

    def _see_layout(self, module, args, kwargs):
        layout = kwargs.get("layout")
        if layout is not None and layout.tail is not None and layout.tail_layer == self.index:
            self.keep = layout.tail_keep

    def _gather(self, module, args):
        x = args[0] if args else None
        if self.keep is None or not isinstance(x, torch.Tensor) or x.dim() != 3:
            self.keep = None
            return None
        self.keep = self.keep.to(x.device)
        self._seq = x.shape[1]
        return (x[:, self.keep], *args[1:])  # (B, |P|, hidden)

    def _scatter(self, module, args, output):
        keep, self.keep = self.keep, None  # once per layer call
        if keep is None:
            return output
        full = output.new_zeros(output.shape[0], self._seq, *output.shape[2:])
        return full.index_copy(1, keep, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def install(model: nn.Module) -> TailRows | None:
    """`TailRows` on `model`'s last decoder layer, or None where it does not apply."""
    from focusft.core import models
    from focusft.core.fast_weights import decoder_layers

    if hasattr(getattr(model, "config", None), "output_router_logits"):
        return None
    try:
        layers = decoder_layers(model)
    except UserError:  # not a decoder with a layer list: nothing to restrict
        return None
    mlp = models.mlp_block(layers[-1]) if len(layers) else None
    if mlp is None:
        return None
    existing = getattr(model, "_focusft_tail_rows", None)
    if existing is not None:
        existing.remove()
    hooks = TailRows(layers[-1], len(layers) - 1, mlp)
    model._focusft_tail_rows = hooks  # one set of hooks per model, however often installed
    return hooks
