"""Activation checkpointing, reentrant or not, gives exactly the FocuSFT step of a run without it.

Reentrant checkpointing differentiates only a checkpoint's inputs; the fast weights are not
inputs, so without care the inner gradient is zero and the step is SFT's. Checked: outer loss,
inner losses and inner gradient norms, and every gradient, against no checkpointing.
"""

import pytest
import torch

from focusft.core import attention  # noqa: F401
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
from tiny import make_batch, tiny_qwen2

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]]


def step(model, batch, objective, reentrant=None):
    """One FocuSFT step; reentrant None: no checkpointing. Returns loss, stats, grads."""
    model.set_attn_implementation("focusft")
    fast = FastWeights(model, rank=4, alpha=8.0)
    bilevel = BilevelStep(model, fast, InnerConfig(steps=2, objective=objective))
    if reentrant is not None:
        model.gradient_checkpointing_enable({"use_reentrant": reentrant})
    model.train()
    arm_inner(fast, bilevel, batch, [11, 12, 13], objective)
    loss, _ = outer_loss(model, batch, batch_layout(batch, "glm"), None)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    fast.strip(), bilevel.remove()
    return loss, bilevel.stats, grads


@pytest.mark.parametrize("objective", ["response", "context"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_gives_the_exact_step(objective, reentrant):
    batch = make_batch(ROWS, seed=4)
    loss, stats, grads = step(tiny_qwen2(), batch, objective)
    loss_c, stats_c, grads_c = step(tiny_qwen2(), batch, objective, reentrant)
    assert all(float(n) > 1e-3 for n in stats_c.grad_norms)  # the inner loop did something
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(stats_c.losses), torch.stack(stats.losses))
    torch.testing.assert_close(torch.stack(stats_c.grad_norms), torch.stack(stats.grad_norms))
    assert grads.keys() == grads_c.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-5, atol=1e-6, msg=name)


def lora_model(prepare: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = tiny_qwen2()
    if prepare:  # PEFT's k-bit defaults: checkpointing with torch's default (reentrant) variant
        model.is_loaded_in_4bit = True  # what PEFT checks; a real 4-bit model: test_peft.py
        model = prepare_model_for_kbit_training(model)
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]  # on the fast targets too
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=targets, init_lora_weights=False))


def test_peft_defaults_give_the_exact_step():
    batch = make_batch(ROWS, seed=6)
    loss, stats, grads = step(lora_model(prepare=False), batch, "response")
    loss_c, stats_c, grads_c = step(lora_model(prepare=True), batch, "response")
    model = lora_model(prepare=True)
    assert model.base_model.model.model.layers[0].gradient_checkpointing
    assert all(float(n) > 1e-3 for n in stats_c.grad_norms)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(stats_c.grad_norms), torch.stack(stats.grad_norms))
    assert grads.keys() == grads_c.keys() and all("lora_" in n for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-5, atol=1e-6, msg=name)
