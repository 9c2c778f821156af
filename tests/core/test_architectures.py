"""The architecture matrix: every decoder family of `architectures.SPECS`, exact or refused.

Per family (tiny config, random weights, float32):

* SFT-GLM: loss and every gradient under the GLM layout == the model's eager attention under
  the dense GLM mask (the model's own forward and loss, its own router load-balancing term);
* FocuSFT, both inner objectives: inner losses, adapted factors of every sample, outer loss
  and every gradient == a plain per-sample reference written here (eager model, dense mask,
  one unpadded sample at a time, LoRA factors as hooks, torch's own norms for clipping);
* variants with scaled head weights, so that soft-caps and logit scales bind;
* a 3-step `focusft train` on the saved model, reloaded in plain transformers;
* what stays unsupported: a clear refusal before anything is written.

Cases that need attention features the block-prefix attention does not have yet are
``xfail(strict=True)``, the reason naming the feature (see `architectures.PENDING`).
"""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from architectures import EXACT, REFUSED, VOCAB, build, cases, supported_table
from focusft.core import attention, models
from focusft.errors import UserError
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.masks import AttentionLayout
from focusft.core.step import BilevelStep, InnerJob, context_targets, outer_loss, response_targets, token_samples
from references import ref_sample_targets as ref_sample

ROWS = [[(7, 0), (6, 1), (8, 0), (7, 1)], [(9, 0), (7, 1)]]  # (tokens, is_loss) runs; 28 / 16
RANK, ALPHA, TOL = 4, 8.0, dict(rtol=2e-4, atol=2e-5)


def make_batch(rows=ROWS, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = [sum(n for n, _ in r) for r in rows]
    S = max(lengths)
    ids = torch.randint(3, VOCAB, (len(rows), S), generator=g)
    loss_mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for b, runs in enumerate(rows):
        pos = 0
        for n, is_loss in runs:
            loss_mask[b, pos:pos + n] = bool(is_loss)
            pos += n
        ids[b, lengths[b]:] = 0
    attn = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(loss_mask[:, 1:], ids[:, 1:], -100)
    return {"input_ids": ids, "loss_mask": loss_mask, "attention_mask": attn, "labels": labels,
            "sample_ids": torch.arange(len(rows))}


# ----------------------------------------------------------------------------- reference
def allowed(loss_mask, n, causal):
    """(n, n) bool, element by element: GLM (context blocks bidirectional) or causal."""
    out = torch.zeros(n, n, dtype=torch.bool)
    runs, start = [], 0
    for p in range(1, n + 1):
        if p == n or bool(loss_mask[p]) != bool(loss_mask[start]):
            runs.append((start, p, bool(loss_mask[start])))
            start = p
    for s, e, is_loss in runs:
        for q in range(s, e):
            for k in range(n):
                out[q, k] = k <= q if (causal or is_loss) else k < e
    return out


def ref_mask(model, ok):
    """The model's eager mask argument for a (S, S) or (B, S, S) boolean mask."""
    return models.eager_mask(model, ok if ok.dim() == 3 else ok[None])


def ref_logits_and_router(model, ids, ok, aux: bool):
    """The model's own eager forward (own head) under the dense mask; router logits if `aux`."""
    mask = ref_mask(model, ok)
    logits = model(ids, attention_mask=mask, output_router_logits=False).logits
    router = model.get_decoder()(ids, attention_mask=mask, output_router_logits=True).router_logits \
        if aux else None
    return logits, router


def lbl(model, router, mask2d=None):
    fn = sys.modules[type(model).__module__].load_balancing_loss_func
    return model.router_aux_loss_coef * fn(tuple(router), model.num_experts, model.num_experts_per_tok, mask2d)


def eager(model):
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


def with_lora(model, factors):
    def hook(a, b):
        return lambda mod, inp, out: out + (ALPHA / RANK) * (inp[0] @ a.T) @ b.T
    return [m.register_forward_hook(hook(a, b)) for m, (a, b) in factors.items()]


def ref_sample_loss(model, ids, ok, fac, pos, tgt, aux, reduction="mean"):
    handles = with_lora(model, fac)
    try:
        logits, router = ref_logits_and_router(model, ids[None], ok, aux)
    finally:
        for h in handles:
            h.remove()
    loss = F.cross_entropy(logits[0, pos].float(), tgt, reduction=reduction)
    return loss, router


def ref_bilevel(model, batch, init, modules, steps, objective):
    """(inner losses per step, adapted factors per sample, outer loss) of a plain dense loop."""
    aux = models.aux_loss(model) is not None
    B = batch["input_ids"].shape[0]
    inner, adapted, ce_sum, total, routers = torch.zeros(steps), [], 0.0, 0, []
    for b in range(B):
        ids, lm, n, pos, tgt = ref_sample(batch, b, objective)
        ok_inner = allowed(lm.tolist(), n, causal=objective == "context")
        fac = {m: [init[i][0][b].clone(), init[i][1][b].clone()] for i, m in enumerate(modules)}
        for k in range(steps):
            flat = [t.requires_grad_(True) for pair in fac.values() for t in pair]
            loss, router = ref_sample_loss(model, ids, ok_inner, fac, pos, tgt, aux)
            if aux:
                loss = loss + lbl(model, router)
            inner[k] += loss.item() / B
            grads = torch.autograd.grad(loss, flat)
            new = [(t - g * min(1.0, 1.0 / (g.norm().item() + 1e-6))).detach() for t, g in zip(flat, grads)]
            fac = {m: new[2 * i: 2 * i + 2] for i, m in enumerate(fac)}
        adapted.append(fac)
        _, _, _, rpos, rtgt = ref_sample(batch, b, "response")
        loss, router = ref_sample_loss(model, ids, allowed(lm.tolist(), n, False), fac, rpos, rtgt, aux, "sum")
        ce_sum, total = ce_sum + loss, total + len(rpos)
        routers.append(router)
    outer = ce_sum / total
    if aux:  # the batch term: every sample's real tokens, layer by layer
        outer = outer + lbl(model, [torch.cat(layer) for layer in zip(*routers)])
    return inner, adapted, outer


# ----------------------------------------------------------------------------- ours
def ours_bilevel(model, batch, steps, objective, seeds=(11, 12)):
    attention.use_focusft_attention(model)
    fast = FastWeights(model, rank=RANK, alpha=ALPHA)
    step = BilevelStep(model, fast, InnerConfig(steps=steps, lr=1.0, clip=1.0, objective=objective))
    lengths = batch["attention_mask"].sum(1).tolist()
    fast.reset(list(seeds[: len(lengths)]))
    init = [(s.a.clone(), s.b.clone()) for s in fast.slots]
    if objective == "response":
        job = InnerJob(response_targets(batch["labels"]))
    else:
        job = InnerJob(context_targets(batch["input_ids"], batch["loss_mask"], batch["attention_mask"]),
                       AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    job.token_samples = token_samples(batch)
    step.arm(job)
    loss, _ = outer_loss(model, batch, AttentionLayout.glm(batch["loss_mask"], lengths), None)
    return loss, step, fast, init


def close(a, b, msg=""):
    torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{msg}: {m}")


def grads_close(model, ref, norm_rtol=None):
    """Every gradient elementwise close, or (scaled variants: logits x32 saturate the softmax and
    fp32 rounding in the gradients grows with them) within `norm_rtol` of the reference's norm."""
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g, r = p.grad, ref_params[name].grad
        if g is None and r is None:
            continue
        g = torch.zeros_like(p) if g is None else g
        r = torch.zeros_like(p) if r is None else r
        if norm_rtol is None:
            close(g, r, name)
        else:
            assert (g - r).norm() <= norm_rtol * r.norm() + 1e-7, (name, float((g - r).norm() / r.norm()))


_CACHE: dict = {}


def tiny(name, scaled=False):
    key = (name, scaled)
    if key not in _CACHE:
        _CACHE[key] = build(name, scaled=scaled)
    return copy.deepcopy(_CACHE[key])


# ----------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("name", cases(EXACT))
def test_glm_layout_equals_eager_dense_mask(name):
    batch = make_batch(seed=1)
    model = tiny(name)
    ref = eager(model)
    attention.use_focusft_attention(model)
    lengths = batch["attention_mask"].sum(1).tolist()
    loss, _ = outer_loss(model, batch, AttentionLayout.glm(batch["loss_mask"], lengths), None)
    loss.backward()
    S = batch["input_ids"].shape[1]
    ok = torch.zeros(len(ROWS), S, S, dtype=torch.bool)  # pads: no key, seen by no one
    for b, n in enumerate(lengths):
        ok[b, :n, :n] = allowed(batch["loss_mask"][b, :n].tolist(), n, causal=False)
    mask = ref_mask(ref, ok)
    labels = torch.where(batch["loss_mask"] & batch["attention_mask"].bool(), batch["input_ids"], -100)
    ref_loss = ref(batch["input_ids"], attention_mask=mask, labels=labels, output_router_logits=False).loss
    if models.aux_loss(ref) is not None:
        router = ref.get_decoder()(batch["input_ids"], attention_mask=mask, output_router_logits=True).router_logits
        ref_loss = ref_loss + lbl(ref, router, batch["attention_mask"])
    ref_loss.backward()
    close(loss, ref_loss, "loss")
    grads_close(model, ref)


@pytest.mark.parametrize("objective", ["response", "context"])
@pytest.mark.parametrize("name", cases(EXACT))
def test_bilevel_step_equals_dense_per_sample_reference(name, objective):
    run_bilevel(name, objective, scaled=False)


@pytest.mark.parametrize("name", cases(["gemma2", "gemma3-text", "cohere", "cohere2", "granite",
                                        "granitemoe", "vaultgemma", "nanochat", "hyperclovax",
                                        "cohere2-moe", "minicpm3"]))
def test_bilevel_step_with_binding_caps_and_scales(name):
    model = tiny(name, scaled=True)
    h = torch.randn(5, model.config.hidden_size)
    raw = model.get_output_embeddings()(models.final_norm(model)(h))
    assert (models.logits_head(model)(h) - raw).abs().max() > 0.1  # binds: >> the tolerance
    run_bilevel(name, "response", scaled=True)


def run_bilevel(name, objective, scaled):
    batch = make_batch(seed=2)
    model = tiny(name, scaled)
    ref = eager(model)
    loss, step, fast, init = ours_bilevel(model, batch, 2, objective)
    loss.backward()
    names = [n for n, m in model.named_modules() if any(m is s.module for s in fast.slots)]
    modules = [dict(ref.named_modules())[n] for n in names]
    ref_inner, ref_fac, ref_loss = ref_bilevel(ref, batch, init, modules, 2, objective)
    ref_loss.backward()
    close(torch.stack(step.stats.losses), ref_inner, "inner losses")
    for i, slot in enumerate(fast.slots):
        for b in range(len(ROWS)):
            close(slot.a[b], ref_fac[b][modules[i]][0], f"A {names[i]} sample {b}")
            close(slot.b[b], ref_fac[b][modules[i]][1], f"B {names[i]} sample {b}")
    close(loss, ref_loss, "outer loss")
    grads_close(model, ref, norm_rtol=5e-4 if scaled else None)


def test_layout_reaches_attention_under_activation_checkpointing():
    """StableLM's layers drop layout=; the carried layout must also hold in the recomputation
    of backward, after an inner loop that ran the layers under another (causal) layout."""
    batch = make_batch(seed=4)
    plain, ckpt = tiny("stablelm"), tiny("stablelm")
    loss, step, _, _ = ours_bilevel(plain, batch, 2, "context")
    loss.backward()
    ckpt.gradient_checkpointing_enable({"use_reentrant": False})
    ckpt.train()
    loss2, step2, _, _ = ours_bilevel(ckpt, batch, 2, "context")
    loss2.backward()
    close(loss2, loss, "loss")
    close(torch.stack(step2.stats.losses), torch.stack(step.stats.losses), "inner")
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        close(q.grad, p.grad, n)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_families_are_refused_clearly(name):
    model = tiny(name)
    with pytest.raises(UserError, match=REFUSED[name]):
        models.check_supported(model)
        FastWeights(model)


def test_encoder_decoder_is_refused():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_ff=48, num_layers=1,
                                                num_heads=2, d_kv=16))
    with pytest.raises(UserError, match="encoder-decoder"):
        models.check_supported(model)


def test_bitsandbytes_linears_are_targets():
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny("llama")
    for layer in models.decoder_layers(model):
        layer.mlp.up_proj = bnb.nn.Linear4bit(64, 96, bias=False)
        layer.mlp.down_proj = bnb.nn.Linear8bitLt(96, 64, bias=False)
    kinds = [type(m).__name__ for m in models.targets(models.decoder_layers(model)[3], None, 3)]
    assert kinds == ["Linear", "Linear4bit", "Linear8bitLt"]


def test_default_targets_are_structural():
    by = {n: models.describe_targets(tiny(n)) for n in ("llama", "phi3", "phi", "gpt-neox", "qwen2-moe",
                                                       "deepseek-v3", "mixtral")}
    assert by["llama"] == "mlp.{gate_proj,up_proj,down_proj}"
    assert by["phi3"] == "mlp.{gate_up_proj,down_proj}"
    assert by["phi"] == "mlp.{fc1,fc2}"
    assert by["gpt-neox"] == "mlp.{dense_h_to_4h,dense_4h_to_h}"
    assert by["qwen2-moe"] == by["mixtral"] == "self_attn.{q_proj,k_proj,v_proj,o_proj}"
    assert "shared_experts" not in by["deepseek-v3"] and by["deepseek-v3"].startswith("self_attn.")
    with pytest.raises(UserError, match="mixture-of-experts block"):
        FastWeights(tiny("qwen2-moe"), target_modules=("gate_proj",))


def test_peft_tuner_layers_are_targets():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(r=2, target_modules=["up_proj", "down_proj"]))
    fast = FastWeights(model, rank=RANK, alpha=ALPHA)
    wrapped = [type(s.module).__module__.startswith("peft") for s in fast.slots]
    assert wrapped == [False, True, True] * 2  # gate_proj plain; up/down hooked on the wrapper


def test_readme_supported_models_table_is_generated_from_the_matrix():
    readme = open(__file__.rsplit("/tests/", 1)[0] + "/README.md").read()
    assert supported_table() in readme, "regenerate with: python tests/architectures.py"


@pytest.mark.parametrize("objective", ["response", "context"])
def test_packing_changes_nothing_with_router_loss(objective):
    """Mixtral (auxiliary loss in both loops, fast weights on attention): packed == unpacked."""
    from focusft.data.pipeline import Collator
    from focusft.core.step import arm_inner, batch_layout

    batch = make_batch(seed=6)
    n = batch["attention_mask"].sum(1)
    feats = [{"input_ids": batch["input_ids"][b, :n[b]].tolist(),
              "loss_mask": batch["loss_mask"][b, :n[b]].int().tolist(), "sample_id": b} for b in range(len(ROWS))]

    def run(collated):
        model = tiny("mixtral")
        attention.use_focusft_attention(model)
        fast = FastWeights(model, rank=RANK, alpha=ALPHA)
        step = BilevelStep(model, fast, InnerConfig(steps=2, objective=objective))
        arm_inner(fast, step, collated, seeds=[5, 6], objective=objective)
        loss, _ = outer_loss(model, collated, batch_layout(collated, "glm"), None)
        loss.backward()
        return loss, torch.stack(step.stats.losses), {k: p.grad for k, p in model.named_parameters()}

    plain, packed = Collator(pad_id=0)(feats), Collator(pad_id=0, pack_to=48)(feats)
    assert packed["input_ids"].shape[0] == 1
    (l1, i1, g1), (l2, i2, g2) = run(plain), run(packed)
    close(l2, l1, "loss")
    close(i2, i1, "inner losses")
    for name, g in g1.items():
        if g is not None:
            close(g2[name], g, name)


@pytest.mark.parametrize("objective", ["response", "context"])
def test_gpt_oss_is_exact_apart_from_its_sinks(objective, monkeypatch):
    """With its sink logits at -1e4 (no sink mass) GPT-OSS is exact today: what is pending for it
    is the sinks alone (router loss, attention targets and head already match)."""
    model = tiny("gpt-oss")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.fill_(-1e4)
    monkeypatch.setitem(_CACHE, ("gpt-oss", False), model)
    test_glm_layout_equals_eager_dense_mask("gpt-oss")
    run_bilevel("gpt-oss", objective, scaled=False)
