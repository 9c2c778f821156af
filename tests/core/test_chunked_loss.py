"""The chunked loss == full logits + cross_entropy, values and every gradient, in both loops.

The reference here materialises all logits at once (the plain way): the model's forward with
every position's logits and one ``F.cross_entropy`` for the outer loss; ``head(h)`` on all
targets and one ``F.cross_entropy`` for the inner loop. Chunks are made smaller than the
number of loss tokens so that several run (and their recomputation in backward).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from architectures import build
from focusft.core import attention, chunked_loss, models, step as step_module
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.step import BilevelStep, arm_inner, batch_layout, logits_loss, outer_logits, outer_loss
from focusft.data.pipeline import Collator
from tiny import make_batch

CHUNK = 3
# 11 response targets, 3 rows (one sample without a second turn); the last row is padded.
ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]]
# qwen2: plain; gemma2: final soft-cap, tied embeddings; granite: logits / logits_scaling;
# cohere: logits * logit_scale; mixtral: the router load-balancing term in both loops.
FAMILIES = [("qwen2", {}), ("gemma2", {"tie_word_embeddings": True}), ("granite", {}),
            ("cohere", {}), ("mixtral", {})]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of CHUNK positions."""
    monkeypatch.setattr(chunked_loss, "chunk_positions", lambda vocab: CHUNK)


def assert_near(got, want, what):
    """Within 1e-5 of the reference's largest entry: float32 sums in another order (the scaled
    heads' embedding gradients reach ~30)."""
    err = float((got - want).abs().max())
    assert err <= 1e-5 * max(1.0, float(want.abs().max())), (what, err)


def assert_same_grads(model, ref):
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_near(p.grad, ref_params[name].grad, name)


def plain_token_ce(head, hidden, tokens, vocab):
    """Every logit at once (the implementation before chunking)."""
    return F.cross_entropy(head(hidden).float(), tokens, ignore_index=-100, reduction="none")


# ----------------------------------------------------------------------------- the function
def test_token_cross_entropy_equals_one_call(small_chunks):
    g = torch.Generator().manual_seed(0)
    lm_head = torch.nn.Linear(8, 50)
    hidden = torch.randn(23, 8, generator=g, requires_grad=True)
    tokens = torch.randint(0, 50, (23,), generator=g)
    tokens[[0, 4, 5, 17]] = -100
    weights = torch.rand(23, generator=g)  # a per-token weighting, as a per-sample mean makes
    rows = []

    def head(h):
        rows.append(h.shape[0])
        return 3.0 * torch.tanh(lm_head(h) / 3.0)

    ours = chunked_loss.token_cross_entropy(head, hidden, tokens, 50)
    assert max(rows) == CHUNK and len(rows) == 8  # ceil(23 / 3) chunks, none larger
    ours_grads = torch.autograd.grad((ours * weights).sum(), [hidden, *lm_head.parameters()])
    assert max(rows) == CHUNK and len(rows) == 16  # backward recomputed them one by one
    ref = plain_token_ce(head, hidden, tokens, 50)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [hidden, *lm_head.parameters()])
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours[tokens == -100], torch.zeros(4))
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_loss.token_cross_entropy(head, hidden, tokens, 50), ref.detach())
    empty = chunked_loss.token_cross_entropy(head, hidden[:0], tokens[:0], 50)
    assert empty.shape == (0,) and empty.requires_grad  # keeps its graph: autograd.grad works


# ----------------------------------------------------------------------------- the outer loss
def _layout(batch):
    return batch_layout(batch, "glm")  # packed rows respected


@pytest.mark.parametrize("name,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_outer_loss_equals_full_logits(small_chunks, name, extra):
    batch = make_batch(ROWS, seed=3)
    model = build(name, scaled=True, **extra)
    model.train()
    attention.use_focusft_attention(model)
    ref = copy.deepcopy(model)
    num_items = 37  # the outer loss is a sum / num_items_in_batch
    loss, n_tokens = outer_loss(model, batch, _layout(batch), num_items)
    loss.backward()
    out = ref(input_ids=batch["input_ids"], layout=_layout(batch), use_cache=False,
              output_router_logits=hasattr(ref.config, "output_router_logits") or None)
    ref_loss = F.cross_entropy(out.logits.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=-100, reduction="sum") / num_items
    if (aux := models.aux_loss(ref)) is not None:  # the router term, padding masked out
        ref_loss = ref_loss + aux.batch(out.router_logits, batch["attention_mask"])
    ref_loss.backward()
    assert int(n_tokens) == int((batch["labels"] != -100).sum()) > CHUNK
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(model, ref)


# ----------------------------------------------------------------------------- both loops
def plain_outer_loss(model, batch, layout, num_items):
    """The loss positions' logits at once (the implementation before chunking)."""
    logits, kept, aux = outer_logits(model, batch, layout)
    return logits_loss(logits, kept, num_items, aux)


def _bilevel_step(model, batch, objective, loss_fn):
    """One step: inner loop (2 SGD steps, no clipping) inside the outer forward, then backward."""
    attention.use_focusft_attention(model)
    fast = FastWeights(model, rank=4, alpha=8.0)
    bilevel = BilevelStep(model, fast, InnerConfig(steps=2, lr=0.5, clip=0.0, objective=objective))
    arm_inner(fast, bilevel, batch, [11 + i for i in range(len(batch["sample_ids"]))], objective)
    loss, _ = loss_fn(model, batch, _layout(batch), 29)
    adapted = [t.clone() for t in fast.tensors()]  # phi_K = phi_0 - lr * (sum of inner gradients)
    loss.backward()
    return loss, bilevel.stats, adapted


@pytest.mark.parametrize("objective", ["response", "context"])
@pytest.mark.parametrize("name,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_bilevel_step_equals_full_logits(small_chunks, monkeypatch, name, extra, objective):
    _compare_steps(monkeypatch, make_batch(ROWS, seed=5), build(name, scaled=True, **extra), objective)


@pytest.mark.parametrize("objective", ["response", "context"])
def test_packed_bilevel_step_equals_full_logits(small_chunks, monkeypatch, objective):
    """Packed rows: a row's targets belong to several samples (per-sample means by sample_index)."""
    plain = make_batch(ROWS + [[(4, 0), (5, 1)]], seed=8)
    n = plain["attention_mask"].sum(1)
    features = [{"input_ids": plain["input_ids"][b, : n[b]].tolist(), "sample_id": b,
                 "loss_mask": plain["loss_mask"][b, : n[b]].int().tolist()} for b in range(len(n))]
    packed = Collator(pad_id=0, pack_to=24)(features)
    assert packed["input_ids"].shape[0] < len(n)  # it did pack
    _compare_steps(monkeypatch, packed, build("qwen2", scaled=True), objective)


def _compare_steps(monkeypatch, batch, model, objective):
    model.train()
    ref = copy.deepcopy(model)
    loss, stats, adapted = _bilevel_step(model, batch, objective, outer_loss)
    monkeypatch.setattr(step_module, "token_cross_entropy", plain_token_ce)  # the inner loop's
    ref_loss, ref_stats, ref_adapted = _bilevel_step(ref, batch, objective, plain_outer_loss)
    torch.testing.assert_close(torch.stack(stats.losses), torch.stack(ref_stats.losses), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.stack(stats.grad_norms), torch.stack(ref_stats.grad_norms),
                               rtol=1e-5, atol=1e-6)
    for i, (a, b) in enumerate(zip(adapted, ref_adapted)):
        assert_near(a, b, f"fast tensor {i}")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(model, ref)
