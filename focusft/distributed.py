"""Distributed-training helpers: the launch check and FSDP2's re-entrant inner loop.

The inner loop is rank-local: it differentiates the fast tensors only
(``torch.autograd.grad``), so no AccumulateGrad node of a base parameter runs, no DDP reducer
hook fires and nothing is all-reduced. Two things still need care:

* ``launch_problem``: transformers' Trainer only goes multi-process on a CPU-only machine when
  told ``--use_cpu true``; otherwise every process trains its own copy and nobody notices.
* ``nested_fsdp_call``: under FSDP2 (``fully_shard``, accelerate ``fsdp_version: 2``) the inner
  loop calls the sharded top layers again, forward and backward, from inside the outer forward
  of the first adapted layer. FSDP's own bookkeeping assumes one forward then one backward per
  iteration; the guard keeps it consistent (see its docstring). Every rank runs the inner loop
  (even with no loss token), so every rank issues the same all-gathers.
"""

from __future__ import annotations

import contextlib
import os

import torch


def launch_problem(world_size: int, use_cpu: bool) -> str | None:
    """A message when a launcher started several processes that will not train together."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size == 1:
        hint = "" if use_cpu or torch.cuda.is_available() else (
            " On a machine without GPUs pass --use_cpu true (gloo backend), or use "
            "`accelerate launch --cpu`.")
        return (f"the launcher started {launched} processes but the trainer sees a world of 1, so "
                f"each process would train its own model copy.{hint}")
    return None


@contextlib.contextmanager
def nested_fsdp_call(layer: torch.nn.Module):
    """Run the inner loop re-entrantly on FSDP2-sharded layers; a no-op for anything else.

    `layer` is the first adapted decoder layer, whose forward pre-hook runs the inner loop
    after FSDP has unsharded it. Inside the block:

    * the root's post-backward final callback is marked as already queued, so the inner
      ``autograd.grad`` calls do not run it (it would reshard the root, whose norm and lm_head
      the inner loop and the outer forward still use, and end the iteration);
    * the layers' own hooks all-gather / reshard around each nested call as usual, and the
      post-backward of a nested call finds no base gradient (none is formed), so it reduces
      nothing.

    On exit every non-root FSDP state is set back to IDLE (as the final callback would do) and
    `layer` is unsharded again, since its nested calls resharded it; the outer forward then
    continues as if the inner loop had not happened, and the outer backward is FSDP's usual one.
    Relies on FSDP2 internals (``_get_fsdp_state``, ``_state_ctx``, ``_training_state``) of
    torch 2.13; checked by tests/test_distributed.py.
    """
    get_state = getattr(layer, "_get_fsdp_state", None)
    if get_state is None:
        yield
        return
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    ctx = get_state()._state_ctx
    queued, ctx.post_backward_final_callback_queued = ctx.post_backward_final_callback_queued, True
    try:
        yield
    finally:
        ctx.post_backward_final_callback_queued = queued
    for state in ctx.all_states:
        if getattr(state, "_is_root", False):
            continue  # the root is in the middle of its forward
        for group in state._fsdp_param_groups:
            group._training_state = TrainingState.IDLE
        state._training_state = TrainingState.IDLE
    layer.unshard()
