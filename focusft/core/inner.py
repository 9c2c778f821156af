"""The inner loop: K plain SGD steps on the fast weights, first-order.

With fast tensors phi = (A, B) of every adapted Linear and per-sample losses L_n(phi_n)::

    for k in 1..K:
        g_n   = d L_n / d phi_n                (torch.autograd.grad: no base-weight gradients)
        g_n   = clip(g_n)                      per tensor (default) or one global norm per sample
        phi_n = phi_n - lr * g_n

Each sample's loss is its own token mean, and the factors of sample n only touch sample n, so
the gradient and the clipping of a sample are those of the sample alone (same result alone,
in a batch or on another rank). A sample whose loss is not finite keeps its factors for that
step and is counted in `skipped`. The adapted factors are installed detached: the outer loss
sees them as constants (first-order; no gradient flows through the inner updates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from focusft.core.fast_weights import FastWeights


@dataclass
class InnerConfig:
    steps: int = 2
    lr: float = 1.0
    clip: float = 1.0  # max gradient norm; <= 0 disables clipping
    clip_mode: str = "tensor"  # "tensor": each tensor on its own; "global": one norm per sample
    objective: str = "response"  # "response" | "context"


@dataclass
class InnerStats:
    losses: list[torch.Tensor] = field(default_factory=list)  # mean finite L_n before each update
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # mean per-sample norm, pre-clip
    skipped: torch.Tensor | int = 0  # (sample, step) updates skipped for a non-finite loss


def _per_sample_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """(n_tensors, N) L2 norm of every tensor's gradient, sample by sample."""
    return torch.stack([g.flatten(1).norm(dim=1) for g in grads])


def clip_per_sample(grads: list[torch.Tensor], max_norm: float, mode: str) -> list[torch.Tensor]:
    """Scale each sample's gradients to norm <= max_norm (per tensor, or jointly when global).

    >>> g = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.5]])]
    >>> [[round(x, 4) for x in t.flatten().tolist()] for t in clip_per_sample(g, 1.0, "tensor")]
    [[0.6, 0.8], [0.0, 0.5]]
    """
    if max_norm <= 0:
        return grads
    norms = _per_sample_norms(grads)  # (n_tensors, N)
    if mode == "global":
        norms = norms.pow(2).sum(0, keepdim=True).sqrt().expand_as(norms)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * s.view(-1, *[1] * (g.dim() - 1)) for g, s in zip(grads, scale)]


def inner_loop(sample_losses: Callable[[], torch.Tensor], fast: FastWeights,
               cfg: InnerConfig, group=None) -> InnerStats:
    """Adapt `fast` in place for cfg.steps SGD steps; `sample_losses()` returns (N,) losses.

    `group` (sequence parallelism, `focusft.core.sequence_parallel.SequenceParallel`): the
    losses are partial sums of a shard; they and the gradients are summed over the group
    before the finite check and the clipping, so every rank takes the same steps."""
    stats = InnerStats()
    tensors = [t.detach().requires_grad_(True) for t in fast.tensors()]
    for _ in range(cfg.steps):
        fast.assign(tensors)
        losses = sample_losses()
        whole = losses.detach() if group is None else group.all_reduce(losses.detach().clone())
        finite = torch.isfinite(whole)
        grads = torch.autograd.grad(torch.where(finite, losses, 0.0).sum(), tensors,
                                    allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]
        if group is not None:
            grads = group.sum_tensors(grads)
        grads = [torch.where(finite.view(-1, *[1] * (g.dim() - 1)), g, 0.0) for g in grads]
        # Kept as tensors: no device sync on the hot path; the trainer reads them when it logs.
        stats.losses.append(torch.where(finite, whole, 0.0).sum() / finite.sum().clamp(min=1))
        stats.grad_norms.append(_per_sample_norms(grads).pow(2).sum(0).sqrt().mean())
        stats.skipped = stats.skipped + (~finite).sum()
        grads = clip_per_sample(grads, cfg.clip, cfg.clip_mode)
        tensors = [(t - cfg.lr * g).detach().requires_grad_(True) for t, g in zip(tensors, grads)]
    fast.assign([t.detach() for t in tensors])
    return stats
