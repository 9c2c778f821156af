"""Transient per-sample LoRA fast weights (FocuSFT's parametric memory).

For a target Linear ``y = W x`` in an adapted decoder layer, sample n of the batch sees::

    y_n = W x_n + (alpha / r) * B_n A_n x_n          A_n: (r, in),  B_n: (out, r)

              x_n ──────────── W ──────────────┐
               │                               (+) ──> y_n
               └── dropout ── A_n ── B_n ── *s ┘

The factors are stacked over the batch, ``A: (N, r, in)`` and ``B: (N, out, r)``, and applied
with two batched matmuls, so each sample holds its own memory: a sample adapts the same way
alone, inside a batch, or on another rank. They live outside the module tree (attached by a
forward hook on the Linear), hence are never in the outer optimizer, never in a state dict and
never in a checkpoint; the model keeps its exact structure and parameter names.

Packed rows (several samples in one row) keep one factor pair per *sample*: each sample's
span of the row is multiplied by its own factors, so packing changes nothing per sample.

Lifecycle (`FastWeights`):
    inject(model, ...)   hooks on the target Linears of the top layers (`focusft.core.models`;
                         install() re-hooks)
    reset(seeds)         per micro-batch: A_n ~ Kaiming-uniform(a=sqrt(5)) from sample n's own
                         seed, B_n = 0, so the model starts unchanged
    tensors()            the fast tensors, in a fixed order, for the inner loop
    disabled()           context manager: the base model alone
    strip()              remove the hooks; the model is plain again
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from focusft.core import models


@dataclass
class FastLinear:
    """The fast factors attached to one base Linear."""

    module: nn.Linear
    a: torch.Tensor | None = None  # (N, r, in)
    b: torch.Tensor | None = None  # (N, out, r)





def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers (see `focusft.core.models.decoder_layers`)."""
    return models.decoder_layers(model)


def find_targets(layer: nn.Module, names: tuple[str, ...] | None, layer_idx: int) -> list[nn.Module]:
    """The fast-weight targets of one layer: the structural default when `names` is None or
    ("auto",), else the Linears named `names` (see `focusft.core.models`)."""
    return models.targets(layer, names, layer_idx)


class FastWeights:
    """Per-sample LoRA factors hooked onto target Linears (see module docstring)."""

    def __init__(self, model: nn.Module, rank: int = 32, alpha: float = 64.0, dropout: float = 0.0,
                 layer_fraction: float = 0.35,
                 target_modules: tuple[str, ...] | None = None):
        layers = decoder_layers(model)
        self.layer_indices = models.adapted_layer_indices(len(layers), layer_fraction)
        self.rank, self.scale = rank, alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        # Packed rows: per row, the (start, end, sample) spans; None when one sample per row.
        self.segments: list[list[tuple[int, int, int]]] | None = None
        self.slots: list[FastLinear] = []
        self._hooks = []
        for idx in self.layer_indices:
            self.slots += [FastLinear(m) for m in find_targets(layers[idx], target_modules and tuple(target_modules), idx)]
        self.install()

    def install(self) -> None:
        """Hook every target (again, after `strip`); a no-op when hooked."""
        if not self._hooks:
            self._hooks = [s.module.register_forward_hook(self._hook(s)) for s in self.slots]

    @property
    def first_layer(self) -> int:
        return self.layer_indices[0]

    def _hook(self, slot: FastLinear):
        def add_fast(module, inputs, output):
            if not self.enabled or slot.a is None:
                return output
            x = self.dropout(inputs[0])  # (N, S, in)
            # The input's dtype (a k-bit base computes in its compute dtype) and device (a
            # model split over devices); both no-ops in the common case.
            a, b = slot.a.to(x.device, x.dtype), slot.b.to(x.device, x.dtype)
            if self.segments is not None:
                return output + self.scale * _packed_delta(x, a, b, self.segments)
            if x.shape[0] != a.shape[0]:
                raise RuntimeError(f"fast weights hold {a.shape[0]} samples, batch has {x.shape[0]}")
            # (N, ..., in): positions may span more than one axis (MLA's (N, 1, S, r) latents)
            down = torch.bmm(x.flatten(1, -2), a.transpose(1, 2))  # (N, S, r)
            # output + s * down b^T as one kernel: no (N, S, out) temporaries for the scale and sum
            return torch.baddbmm(output.flatten(1, -2), down, b.transpose(1, 2),
                                 alpha=self.scale).view(output.shape)
        return add_fast

    def reset(self, seeds: list[int], device=None, segments=None) -> None:
        """Fresh factors for a batch: A_n drawn from generator seeded with seeds[n], B_n = 0.

        `segments` (packed rows): per row, the (start, end, sample n) spans of its samples.
        """
        self.segments = segments
        device = device or _device_of(self.slots[0].module)
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        for slot in self.slots:
            # in/out features, never the weight's shape (packed 4-bit, sharded, Conv1D)
            in_f, out_f = models.features(slot.module)
            bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)) on an (r, in) weight
            slot.a = torch.stack([
                torch.empty(self.rank, in_f, device=device).uniform_(-bound, bound, generator=g)
                for g in gens
            ])
            slot.b = torch.zeros(len(seeds), out_f, self.rank, device=device)

    def tensors(self) -> list[torch.Tensor]:
        """All fast tensors in a fixed order: [A_0, B_0, A_1, B_1, ...]."""
        return [t for slot in self.slots for t in (slot.a, slot.b)]

    def assign(self, tensors: list[torch.Tensor]) -> None:
        """Install new fast tensors (same order as `tensors()`)."""
        for i, slot in enumerate(self.slots):
            slot.a, slot.b = tensors[2 * i], tensors[2 * i + 1]

    def clear(self) -> None:
        """Drop the factors (the model is the base model until the next reset)."""
        self.segments = None
        for slot in self.slots:
            slot.a = slot.b = None

    @contextlib.contextmanager
    def disabled(self):
        """Run the base model alone inside the block."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def strip(self) -> None:
        """Remove every hook; the model is exactly the base model again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.clear()


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _packed_delta(x, a, b, segments) -> torch.Tensor:
    """B_n A_n x for packed rows: each span of a row uses its own sample's factors; pads get 0."""
    rows = []
    for n, spans in enumerate(segments):
        parts, pos = [], 0
        for start, end, sample in spans:
            if start > pos:
                parts.append(x.new_zeros(start - pos, b.shape[1]))
            parts.append((x[n, start:end] @ a[sample].T) @ b[sample].T)  # (len, out)
            pos = end
        if pos < x.shape[1]:
            parts.append(x.new_zeros(x.shape[1] - pos, b.shape[1]))
        rows.append(torch.cat(parts))
    return torch.stack(rows)
