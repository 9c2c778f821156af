"""One FocuSFT step == a plain, slow, dense implementation of the method written here.

The reference below shares no code with focusft's step: eager attention under a dense mask
built element by element, one sample at a time, full-vocabulary logits, LoRA as a hook
written here, torch's own per-tensor norm for clipping.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from focusft.core import attention
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.masks import AttentionLayout
from focusft.core.step import (BilevelStep, InnerJob, batch_layout, context_targets, outer_loss,
                               response_targets)
from references import brute_force_glm, ref_sample_targets
from tiny import make_batch, tiny_llama, tiny_qwen2

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]]
RANK, ALPHA = 4, 8.0


# ----------------------------------------------------------------------------- reference
def ref_mask(loss_mask, n, causal):
    allowed = torch.ones(n, n).tril().bool() if causal else brute_force_glm(loss_mask, n, n)
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]


def ref_forward(model, ids, mask, factors):
    """Logits of one unpadded sample with LoRA factors {module: (A, B)} added by hooks."""
    def hook(a, b):
        return lambda mod, inp, out: out + (ALPHA / RANK) * (inp[0] @ a.T) @ b.T
    handles = [m.register_forward_hook(hook(a, b)) for m, (a, b) in factors.items()]
    model.set_attn_implementation("eager")
    try:
        return model(ids[None], attention_mask=mask).logits[0]
    finally:
        for h in handles:
            h.remove()


def ref_step(model, batch, init, modules, steps, lr, clip, objective="response", causal=False):
    """Returns (per-step mean inner losses, adapted factors per sample, outer loss); ``causal``:
    both loops under the plain causal mask (FocuSFT-causal)."""
    inner_losses = torch.zeros(steps)
    adapted, outer_terms, total = [], [], 0
    for b in range(batch["input_ids"].shape[0]):
        ids, lm, n, pos, tgt = ref_sample_targets(batch, b, objective)
        inner_mask = ref_mask(lm.int().tolist(), n, causal=objective == "context" or causal)
        fac = {m: [init[i][0][b].clone(), init[i][1][b].clone()] for i, m in enumerate(modules)}
        for k in range(steps):
            for pair in fac.values():
                for t in pair:
                    t.requires_grad_(True)
            loss = F.cross_entropy(ref_forward(model, ids, inner_mask, fac)[pos], tgt)
            inner_losses[k] += loss.item() / batch["input_ids"].shape[0]
            flat = [t for pair in fac.values() for t in pair]
            grads = torch.autograd.grad(loss, flat)
            new = []
            for t, g in zip(flat, grads):
                g = g * min(1.0, clip / (g.norm().item() + 1e-6))
                new.append((t - lr * g).detach())
            fac = {m: new[2 * i: 2 * i + 2] for i, m in enumerate(fac)}
        adapted.append(fac)
        _, _, _, rpos, rtgt = ref_sample_targets(batch, b, "response")
        logits = ref_forward(model, ids, ref_mask(lm.int().tolist(), n, causal=causal), fac)
        outer_terms.append(F.cross_entropy(logits[rpos], rtgt, reduction="sum"))
        total += len(rpos)
    return inner_losses, adapted, sum(outer_terms) / total


# ----------------------------------------------------------------------------- ours
def our_step(model, batch, steps, lr, clip, objective="response", seeds=(11, 12, 13), ckpt=False,
             mask="glm"):
    attention.use_focusft_attention(model)  # as the trainer does (last-layer MLP rows included)
    fast = FastWeights(model, rank=RANK, alpha=ALPHA)
    step = BilevelStep(model, fast, InnerConfig(steps=steps, lr=lr, clip=clip, objective=objective))
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = batch_layout(batch, mask)
    fast.reset(list(seeds[: len(lengths)]))
    init = [(s.a.clone(), s.b.clone()) for s in fast.slots]
    if objective == "response":
        job = InnerJob(response_targets(batch["labels"]))
    else:
        job = InnerJob(context_targets(batch["input_ids"], batch["loss_mask"], batch["attention_mask"]),
                       AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    if ckpt:
        model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
    step.arm(job)
    loss, _ = outer_loss(model, batch, layout, None)
    return loss, step, fast, init


@pytest.mark.parametrize("objective,mask", [("response", "glm"), ("context", "glm"),
                                            ("response", "causal")])  # causal: FocuSFT-causal
@pytest.mark.parametrize("make_model", [tiny_qwen2, tiny_llama])
def test_step_equals_dense_reference(make_model, objective, mask):
    batch = make_batch(ROWS, seed=3)
    model = make_model()
    ref_model = copy.deepcopy(model)
    loss, step, fast, init = our_step(model, batch, steps=2, lr=1.0, clip=1.0, objective=objective,
                                      mask=mask)
    loss.backward()
    modules = [dict(ref_model.named_modules())[name] for name in
               [n for n, m in model.named_modules() if any(m is s.module for s in fast.slots)]]
    ref_inner, ref_fac, ref_loss = ref_step(ref_model, batch, init, modules, 2, 1.0, 1.0, objective,
                                            causal=mask == "causal")
    ref_loss.backward()
    torch.testing.assert_close(torch.stack(step.stats.losses), ref_inner, rtol=1e-5, atol=1e-6)
    for i, slot in enumerate(fast.slots):
        for b in range(len(ROWS)):
            torch.testing.assert_close(slot.a[b], ref_fac[b][modules[i]][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(slot.b[b], ref_fac[b][modules[i]][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    ref_params = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-6, msg=name)


def test_zero_inner_steps_is_exactly_sft_glm():
    batch = make_batch(ROWS, seed=5)
    model = tiny_qwen2()
    sft = copy.deepcopy(model)
    loss, step, _, _ = our_step(model, batch, steps=0, lr=1.0, clip=1.0)
    loss.backward()
    sft.set_attn_implementation("focusft")
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    sft_loss, _ = outer_loss(sft, batch, layout, None)
    sft_loss.backward()
    assert torch.equal(loss, sft_loss)
    for (name, p), q in zip(model.named_parameters(), sft.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_sample_adapts_the_same_alone_or_in_a_batch():
    batch = make_batch(ROWS, seed=7)
    _, _, fast3, _ = our_step(tiny_qwen2(), batch, steps=2, lr=0.5, clip=1.0, seeds=(21, 22, 23))
    alone = {k: v[1:2] for k, v in batch.items()}
    alone = {k: (v[:, : int(alone["attention_mask"].sum())] if v.dim() == 2 else v) for k, v in alone.items()}
    _, _, fast1, _ = our_step(tiny_qwen2(), alone, steps=2, lr=0.5, clip=1.0, seeds=(22,))
    for s3, s1 in zip(fast3.slots, fast1.slots):
        torch.testing.assert_close(s3.a[1:2], s1.a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s3.b[1:2], s1.b, rtol=1e-5, atol=1e-6)


def test_inner_loop_lowers_inner_loss():
    batch = make_batch(ROWS, seed=9)
    _, step, _, _ = our_step(tiny_qwen2(), batch, steps=4, lr=1.0, clip=1.0)
    losses = [float(x) for x in step.stats.losses]
    assert losses[-1] < losses[0] - 0.05, losses


def test_activation_checkpointing_gives_the_same_step():
    batch = make_batch(ROWS, seed=4)
    model, again = tiny_qwen2(), tiny_qwen2()
    loss, step, _, _ = our_step(model, batch, steps=2, lr=1.0, clip=1.0)
    loss.backward()
    loss2, step2, _, _ = our_step(again, batch, steps=2, lr=1.0, clip=1.0, ckpt=True)
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(torch.stack(step2.stats.losses), torch.stack(step.stats.losses))
    for (name, p), q in zip(model.named_parameters(), again.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_non_finite_inner_loss_skips_that_sample():
    batch = make_batch(ROWS, seed=2)
    model = tiny_qwen2()
    model.set_attn_implementation("focusft")
    fast = FastWeights(model, rank=RANK, alpha=ALPHA)
    step = BilevelStep(model, fast, InnerConfig(steps=2))
    fast.reset([1, 2, 3])
    fast.slots[0].a[1, 0, 0] = float("nan")  # poison sample 1 only
    before = [s.a[1].clone() for s in fast.slots[1:]]
    step.arm(InnerJob(response_targets(batch["labels"])))
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    outer_loss(model, batch, layout, None)
    assert int(step.stats.skipped) == 2  # sample 1, both inner steps
    assert all(torch.equal(s.a[1], b) for s, b in zip(fast.slots[1:], before))
    assert all(torch.isfinite(s.b[0]).all() and s.b[0].abs().sum() > 0 for s in fast.slots)
