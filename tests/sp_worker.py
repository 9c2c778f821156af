"""Sequence parallelism on 2 ranks == the unsharded step (run by tests/core/test_sequence_parallel.py).

``torchrun --nproc_per_node 2 tests/sp_worker.py``: every rank builds the same tiny models and
batch, computes the step unsharded (the reference, no collectives) and then on its shard of the
sequence with the attention exchanged over the 2 ranks, and asserts (rtol 1e-4) that the outer
loss, the inner losses, the adapted fast weights and every base-parameter gradient (summed over
the group, as the trainer's all-reduce does) equal the reference's. The batch's first row has a
response block that straddles the shard boundary. Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from focusft.core import attention, sequence_parallel  # noqa: E402
from focusft.core.fast_weights import FastWeights  # noqa: E402
from focusft.core.inner import InnerConfig  # noqa: E402
from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss  # noqa: E402
from tiny import make_batch, tiny_llama  # noqa: E402

# rows of (tokens, is_response) runs; width 14, shard boundary at 7 inside row 0's response 5..8
ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]]


def model_with(kv_heads: int):
    model = tiny_llama(seed=1, layers=4)
    if kv_heads != model.config.num_key_value_heads:  # grouped-query variant, same seed
        from transformers import LlamaForCausalLM

        cfg = copy.deepcopy(model.config)
        cfg.num_key_value_heads = kv_heads
        torch.manual_seed(1)
        model = LlamaForCausalLM(cfg).float()
    attention.use_focusft_attention(model)
    return model


def step(model, batch, objective, sp=None, ckpt=False):
    """(outer loss, inner losses, fast factors, grads) of one step; `sp`: on this rank's shard."""
    if objective:
        fast = FastWeights(model, rank=4, alpha=8.0)
        bilevel = BilevelStep(model, fast, InnerConfig(steps=2, lr=0.5, objective=objective))
    if ckpt:
        model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
    layout = batch_layout(batch, "glm")
    if objective:
        arm_inner(fast, bilevel, batch, seeds=[11, 12, 13], objective=objective, sp=sp)
    total = int((batch["labels"] != -100).sum())
    local = batch if sp is None else sp.shard(batch)
    with sequence_parallel.active(sp):
        loss, _ = outer_loss(model, local, layout, total)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if sp is not None:
        loss = sp.all_reduce(loss.detach().clone())
        grads = dict(zip(grads, sp.sum_tensors(list(grads.values()))))
    if not objective:
        return loss.detach(), torch.zeros(0), [], grads
    stats, factors = torch.stack(bilevel.stats.losses), [t.clone() for t in fast.tensors()]
    bilevel.remove()
    return loss.detach(), stats, factors, grads


def check(name, got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def main() -> None:
    dist.init_process_group("gloo")
    sp = sequence_parallel.groups(2)
    batch = make_batch(ROWS, seed=3)
    cases = [(None, 4, False), ("response", 4, False), ("context", 4, False),
             ("response", 2, False), ("response", 1, True)]  # kv heads 4, 2 (GQA), 1 (repeated)
    for objective, kv, ckpt in cases:
        label = f"{objective or 'sft-glm'} kv{kv}{' ckpt' if ckpt else ''}"
        want = step(model_with(kv), batch, objective, ckpt=ckpt)
        got = step(model_with(kv), batch, objective, sp=sp, ckpt=ckpt)
        check(f"{label} outer loss", got[0], want[0])
        check(f"{label} inner losses", got[1], want[1])
        for i, (g, w) in enumerate(zip(got[2], want[2])):
            check(f"{label} fast tensor {i}", g, w)
        assert got[3].keys() == want[3].keys(), label
        for n in want[3]:
            check(f"{label} grad {n}", got[3][n], want[3][n])
        if dist.get_rank() == 0:
            print(f"sp ok: {label} (loss {float(want[0]):.6f})", flush=True)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
