"""Packing several samples per row changes nothing per sample: same inner loop, loss, gradients."""

import pytest
import torch

from focusft.core import attention  # noqa: F401
from focusft.data.pipeline import Collator
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
from tiny import make_batch, tiny_qwen2

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)], [(4, 0), (5, 1)]]


def features():
    batch = make_batch(ROWS, seed=8)
    n = batch["attention_mask"].sum(1)
    return [{"input_ids": batch["input_ids"][b, : n[b]].tolist(),
             "loss_mask": batch["loss_mask"][b, : n[b]].int().tolist(), "sample_id": 100 + b}
            for b in range(len(ROWS))]


def run(batch, objective):
    model = tiny_qwen2(seed=4)
    attention.use_focusft_attention(model)  # as the trainer does (last-layer rows included)
    fast = FastWeights(model, rank=4, alpha=8)
    bilevel = BilevelStep(model, fast, InnerConfig(steps=2, objective=objective))
    arm_inner(fast, bilevel, batch, seeds=[7, 8, 9, 10], objective=objective)
    loss, n = outer_loss(model, batch, batch_layout(batch, "glm"), None)
    loss.backward()
    return loss, bilevel.stats, fast, {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("objective", ["response", "context"])
def test_packed_step_equals_unpacked(objective):
    plain = Collator(pad_id=0)(features())
    packed = Collator(pad_id=0, pack_to=24)(features())
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # it did pack
    assert int(packed["attention_mask"].sum()) == int(plain["attention_mask"].sum())
    loss1, stats1, fast1, grads1 = run(plain, objective)
    loss2, stats2, fast2, grads2 = run(packed, objective)
    torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(stats2.losses), torch.stack(stats1.losses), rtol=1e-5, atol=1e-6)
    for s1, s2 in zip(fast1.slots, fast2.slots):
        torch.testing.assert_close(s2.a, s1.a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s2.b, s1.b, rtol=1e-5, atol=1e-6)
    for name, g in grads1.items():
        torch.testing.assert_close(grads2[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_collation_keeps_samples_apart():
    packed = Collator(pad_id=0, pack_to=24)(features())
    six = packed["sample_index"]
    labels = packed["labels"]
    for r in range(six.shape[0]):
        for t in range(six.shape[1] - 1):
            if labels[r, t] != -100:
                assert six[r, t] == six[r, t + 1] >= 0  # a label never crosses samples
    starts = (packed["position_ids"] == 0) & (six >= 0)
    assert int(starts.sum()) == len(ROWS)
