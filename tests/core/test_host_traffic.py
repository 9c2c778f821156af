"""What crosses between host and device per batch: the per-sample target counts are taken once
(a bincount waits for the device on CUDA), the last layer's kept rows are copied once."""

import torch

from focusft.core import attention
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.masks import AttentionLayout
from focusft.core.step import BilevelStep, InnerJob, outer_loss, response_targets
from tiny import make_batch, tiny_qwen2

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)]]


def test_bincount_runs_once_per_batch_not_per_inner_step(monkeypatch):
    calls = []
    real = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = make_batch(ROWS)
    model = tiny_qwen2()
    attention.use_focusft_attention(model)
    fast = FastWeights(model, rank=4, alpha=8.0)
    step = BilevelStep(model, fast, InnerConfig(steps=3))
    fast.reset([1, 2])
    step.arm(InnerJob(response_targets(batch["labels"])))
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    loss, _ = outer_loss(model, batch, layout, None)
    loss.backward()
    assert len(step.stats.losses) == 3
    assert len(calls) == 1


def test_tail_keep_is_put_on_the_device_once_by_with_tail():
    batch = make_batch(ROWS)
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    needed = batch["labels"] != -100
    tail = layout.with_tail(needed, 3, torch.device("meta"))
    assert tail.tail_keep.device.type == "meta"
    assert layout.with_tail(needed, 3).tail_keep.tolist() == needed.any(0).nonzero().flatten().tolist()
