"""Ulysses sequence parallelism: one sequence split over a group of ranks, attention over all of it.

Every rank of a sequence-parallel (SP) group of n ranks holds the same batch, padded to a
multiple of n; rank r runs the model on its contiguous shard of positions [r*s, (r+1)*s),
s = S/n. Token-local layers (embeddings, norms, MLPs, the logits head) see only the shard.
At every attention call two all-to-all exchanges swap the split (DeepSpeed-Ulysses)::

    q, k, v (B, H, s, D)   -- all_to_all -->  (B, H/n, S, D)   all positions, H/n heads
    attention of the whole batch's AttentionLayout (GLM turn blocks, causal), so a block
    that straddles two shards is computed exactly as without SP
    out     (B, S, H/n, D) -- all_to_all -->  (B, s, H, D)

Both exchanges are differentiable (torch's functional ``all_to_all_single``: the backward is
the reverse exchange). Key/value heads that n does not divide are repeated to the
query heads first (grouped-query attention); the query heads must divide by n. Rotary
embeddings need no change: each shard carries its own slice of the position ids.

Losses. Rank r's loss is a *partial* sum over its shard's targets; gradients are then summed
over the group, which gives the gradient of the whole sequence's loss:

* outer: CE summed over the shard's loss tokens / the global token count; the trainer's
  all-reduce (DDP / DeepSpeed average over all W ranks, times W) sums the partials;
* inner: sample n's loss L_n = sum over its targets of CE / its target count in the *whole*
  sequence (`local_targets` keeps the whole-sequence counts), so the partials add up to L_n;
  the fast-weight gradients and the losses are summed over the group (`all_reduce`) before the
  finite check and the clipping, so every rank of the group takes the same inner steps.

The inner loop and the outer forward issue the same collective calls on every rank of a
group (same batch, same K), so the exchanges pair up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from focusft.errors import UserError

# The batch keys that have a sequence dimension (dim 1) and are cut into shards.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "loss_mask", "labels", "position_ids", "sample_index")


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in its SP group (`size` consecutive ranks of the world)."""

    size: int
    rank: int  # rank within the group
    group: object = None  # a torch.distributed ProcessGroup (None: size 1)

    # -- the batch ----------------------------------------------------------------------------
    def bounds(self, seq_len: int) -> tuple[int, int]:
        """[start, stop) of this rank's shard of a sequence of `seq_len` positions."""
        if seq_len % self.size:
            raise ValueError(f"sequence length {seq_len} is not a multiple of the sp size "
                             f"{self.size} (pad the batch: Collator(pad_to_multiple_of=...))")
        s = seq_len // self.size
        return self.rank * s, (self.rank + 1) * s

    def shard(self, batch: dict) -> dict:
        """This rank's shard of a (whole) batch; position ids made explicit first.

        >>> sp = SequenceParallel(size=2, rank=1)
        >>> sp.shard({"input_ids": torch.arange(8).view(2, 4)})["position_ids"].tolist()
        [[2, 3], [2, 3]]
        """
        ids = batch["input_ids"]
        start, stop = self.bounds(ids.shape[1])
        out = dict(batch)
        if "position_ids" not in batch:
            out["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        for key in SEQUENCE_KEYS:
            if key in out:
                out[key] = out[key][:, start:stop]
        return out

    def local_targets(self, targets, seq_len: int):
        """The targets at this rank's positions (columns relative to the shard), with each
        sample's target count taken over the whole sequence (see module docstring)."""
        start, stop = self.bounds(seq_len)
        keep = (targets.cols >= start) & (targets.cols < stop)
        counts = torch.bincount(targets.samples, minlength=targets.n_samples)
        return replace(targets, rows=targets.rows[keep], cols=targets.cols[keep] - start,
                       tokens=targets.tokens[keep], samples=targets.samples[keep], counts=counts)

    # -- collectives ----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the group (no autograd), in place; returns the tensor."""
        if self.size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def sum_tensors(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the group, through one flat buffer (one collective)."""
        if self.size == 1 or not tensors:
            return tensors
        flat = self.all_reduce(torch.cat([t.reshape(-1) for t in tensors]))
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def attention(self, core, query, key, value):
        """`core(q, k, v)` -> (B, S, h, D) on every position for this rank's heads, from and back
        to this rank's shard: (B, H, s, D) in, (B, s, H, D) out (see module docstring)."""
        n = self.size
        if query.shape[1] % n:
            raise UserError(f"sequence parallelism over {n} ranks needs the attention heads to "
                            f"divide by {n}; this model has {query.shape[1]} query heads. Use an "
                            f"sp size that divides {query.shape[1]}.")
        if key.shape[1] % n:  # grouped-query attention with fewer kv heads than ranks
            repeat = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
        out = core(*(self._gather_sequence(t) for t in (query, key, value)))
        return self._scatter_sequence(out)

    def _gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, s, D) -> (B, H/n, n*s, D): head group j goes to rank j, shard j comes from it."""
        n, (b, h, s, d) = self.size, x.shape
        send = x.reshape(b, n, h // n, s, d).transpose(0, 1).contiguous()  # (n, B, H/n, s, D)
        got = self._exchange(send)
        return got.permute(1, 2, 0, 3, 4).reshape(b, h // n, n * s, d)  # shard j at rows j*s..

    def _scatter_sequence(self, out: torch.Tensor) -> torch.Tensor:
        """(B, n*s, H/n, D) -> (B, s, H, D): the reverse of `_gather_sequence` (output layout)."""
        n, (b, full, h, d) = self.size, out.shape
        send = out.reshape(b, n, full // n, h, d).transpose(0, 1).contiguous()  # (n, B, s, h, D)
        got = self._exchange(send)  # (n, B, s, h, D)
        return got.permute(1, 2, 0, 3, 4).reshape(b, full // n, n * h, d)

    def _exchange(self, send: torch.Tensor) -> torch.Tensor:
        """Chunk j of dim 0 to rank j; chunk j of the result from rank j (differentiable)."""
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        return all_to_all_single_autograd(send, None, None, self.group)


def groups(size: int) -> SequenceParallel:
    """Split the world into SP groups of `size` consecutive ranks (every rank must call this:
    group creation is collective); this rank's `SequenceParallel`."""
    if size == 1:
        return SequenceParallel(1, 0)
    if not dist.is_initialized():
        raise UserError(f"--sp_size {size} needs {size} or more processes started by a launcher "
                        f"(e.g. torchrun --nproc_per_node {size} -m focusft.cli train ...)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise UserError(f"--sp_size {size} must divide the number of processes ({world})")
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = SequenceParallel(size, rank - first, group)
    return mine


_ACTIVE: list[SequenceParallel] = []


def current() -> SequenceParallel | None:
    """The group the attention exchanges over right now (None: no sequence parallelism)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def active(sp: SequenceParallel | None):
    """Within the block, attention under a layout runs over `sp`'s group (forward, and the
    backward's recomputation under activation checkpointing, when it runs inside the block)."""
    if sp is None or sp.size == 1:
        yield
        return
    _ACTIVE.append(sp)
    try:
        yield
    finally:
        _ACTIVE.pop()
