"""Activation checkpointing and the inner loop.

transformers checkpoints each decoder layer's ``forward`` with the function the model was given
(``activation_checkpointing_enable``; PEFT's ``prepare_model_for_kbit_training`` asks for the
reentrant one). A reentrant checkpoint differentiates only the tensors passed to it as inputs.
The fast weights are not inputs (the Linear hooks read them), so inside a reentrant checkpoint
``d L_inner / d fast`` is silently zero and FocuSFT degrades to SFT.

`inner_checkpointing(layers)` therefore runs the inner loop with every checkpointed layer
switched to the non-reentrant variant of its own function (same keyword arguments otherwise,
e.g. CPU offload), which recomputes through closures and differentiates everything the
forward used. The outer pass keeps the configured variant: its fast weights are constants
(first-order), and a reentrant outer pass differentiates the base weights exactly as usual.
Both variants therefore give the step of a run without checkpointing.
"""

from __future__ import annotations

import contextlib
import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def non_reentrant(func):
    """The same checkpoint function with ``use_reentrant=False``.

    transformers sets ``functools.partial(checkpoint_fn, **kwargs)``; its keywords are kept
    (``use_reentrant`` aside). Anything else is replaced by torch's non-reentrant checkpoint.
    """
    if isinstance(func, functools.partial):
        if func.keywords.get("use_reentrant") is False:
            return func
        return functools.partial(func.func, *func.args, **{**func.keywords, "use_reentrant": False})
    return functools.partial(checkpoint, use_reentrant=False)  # an unknown function: torch's own


@contextlib.contextmanager
def inner_checkpointing(layers: nn.ModuleList):
    """Within the block, every checkpointed layer of `layers` uses a non-reentrant checkpoint."""
    saved = []
    for layer in layers:
        if getattr(layer, "gradient_checkpointing", False):
            saved.append((layer, layer._gradient_checkpointing_func))
            layer._gradient_checkpointing_func = non_reentrant(layer._gradient_checkpointing_func)
    try:
        yield
    finally:
        for layer, func in saved:
            layer._gradient_checkpointing_func = func
