"""Rows of many turns (many short blocks) == eager attention under the dense mask.

`focusft.core.attention` gathers short blocks into tiles and computes every SDPA piece of a call
in one autograd node (`focusft.core.block_attention`). Checked on fuzzed block boundaries (64
turns, blocks of 1 to 4 tokens, long blocks between them, padding, packed samples, the
last layer's tail, sliding windows, soft-caps, sinks, GQA), forward and the gradients of q, k,
v (and the sink logits), for both kernels of the node; and at model level, logits and every
parameter gradient of a tiny Qwen2 against its own eager forward under the dense mask.
"""

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_eager
from transformers.models.mistral.modeling_mistral import eager_attention_forward as mistral_eager

from focusft.core import attention, block_attention
from focusft.core.masks import AttentionLayout, dense_mask
from tiny import make_batch, tiny_qwen2

HEADS, KV_HEADS, DIM = 4, 2, 8
TOL = dict(rtol=1e-5, atol=1e-5)


def fuzzed_rows(seed: int, turns: int = 64, rows: int = 2) -> list[list[tuple[int, int]]]:
    """Rows of `turns` context/response runs of 1-4 tokens, two long runs (65-75 tokens: a
    block of its own) among them, sometimes starting with a response; rows of unequal length."""
    rng = random.Random(seed)
    out = []
    for r in range(rows):
        runs = [] if rng.random() < 0.7 else [(rng.randint(1, 4), 1)]
        for _ in range(turns - 8 * r):
            runs += [(rng.randint(1, 4), 0), (rng.randint(1, 4), 1)]
        for at in rng.sample(range(len(runs)), 2):
            runs[at] = (rng.randint(65, 75), runs[at][1])
        out.append(runs)
    return out


def layouts(seed: int):
    """(name, layout): GLM rows of many turns with padding, causal, packed samples, the tail."""
    batch = make_batch(fuzzed_rows(seed))
    lengths = batch["attention_mask"].sum(1).tolist()
    glm = AttentionLayout.glm(batch["loss_mask"], lengths)
    seq = glm.seq_len
    rng = random.Random(seed)
    ids = []  # packed: samples of 20-200 tokens, then padding
    for b, n in enumerate(lengths):
        row, sample = [], 0
        while len(row) < n:
            row += [b * 100 + sample] * rng.randint(20, 150)
            sample += 1
        ids.append(row[:n] + [-1] * (seq - n))
    packed = torch.tensor(ids)
    return [("glm", glm), ("causal", AttentionLayout.causal(lengths, seq)),
            ("packed", AttentionLayout.glm(batch["loss_mask"], lengths, packed)),
            ("tail", glm.with_tail(batch["loss_mask"], 0).tail)]


def qkv(layout, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s = len(layout.rows), layout.seq_len
    return [torch.randn(b, h, s, DIM, generator=g, dtype=dtype).requires_grad_()
            for h in (HEADS, KV_HEADS, KV_HEADS)]


def additive(layout, window=None):
    lo, hi = layout.key_ranges(window)
    mask = torch.zeros(len(layout.rows), 1, layout.seq_len, layout.seq_len)
    mask[~dense_mask(lo, hi)] = torch.finfo(torch.float32).min
    return mask, hi > 0


class Module:
    num_key_value_groups, head_dim, training = HEADS // KV_HEADS, DIM, False

    def __init__(self, sinks=None):
        self.sinks = sinks


def check(layout, window=None, eager=mistral_eager, softcap=None, sinks=None):
    q, k, v = qkv(layout)
    tensors = [q, k, v] + ([sinks] if sinks is not None else [])
    mask, real = additive(layout, window)
    extra = {"softcap": softcap} if softcap is not None else {}
    want, _ = eager(Module(sinks), q, k, v, mask, scaling=0.3, dropout=0.0, **extra)
    got = attention.layout_attention(q, k, v, layout, 0.3, window=window, softcap=softcap, sinks=sinks)
    torch.testing.assert_close(got[real], want[real], **TOL)
    assert not got[~real].any()
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    want_grads = torch.autograd.grad((want * weight)[real].sum(), tensors)
    got_grads = torch.autograd.grad((got * weight)[real].sum(), tensors)
    for name, g, w in zip("qkvs", got_grads, want_grads):
        torch.testing.assert_close(g, w, **TOL, msg=name)


@pytest.fixture(params=["flash-cpu", "sdpa"])
def kernel(request, monkeypatch):
    """Both kernels of the node: SDPA's CPU flash ops, and per-piece SDPA recomputed in backward."""
    if request.param == "sdpa":
        monkeypatch.setattr(block_attention, "FLASH_CPU_DTYPES", ())
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("group_rows", [64, 4])  # 4: most blocks long, each its own piece
def test_many_turns_equal_eager_under_the_dense_mask(kernel, monkeypatch, seed, window, group_rows):
    monkeypatch.setattr(attention, "GROUP_ROWS", group_rows)
    for name, layout in layouts(seed):
        assert sum(len(r) for r in layout.rows) > 20 or name == "causal"
        check(layout, window)


@pytest.mark.parametrize("features", [{"softcap": 1.5}, {"sinks": True}, {"softcap": 1.5, "window": 5}])
def test_many_turns_explicit_math_equals_eager(features):
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True) if features.get("sinks") else None
    eager = gpt_oss_eager if sinks is not None else gemma2_eager
    for _, layout in layouts(2):
        check(layout, features.get("window"), eager, features.get("softcap"), sinks)


class Calls(TorchDispatchMode):
    """Counts the CPU flash kernel's calls, and the tensors the ops create that span the whole
    sequence (B, heads, S, head dim): a gradient per block slice would be one of those."""

    def __init__(self, seq: int):
        super().__init__()
        self.seq, self.kernel, self.whole = seq, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "flash_attention_for_cpu" in str(func):  # a piece's output and gradients
            self.kernel += 1
            return out
        inputs = {t.untyped_storage().data_ptr() for t in args if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] == self.seq
                    and t.untyped_storage().data_ptr() not in inputs):  # made, not a view
                self.whole += 1
        return out


def cost(turns: int, seq: int = 1024):
    """(kernel calls, whole-sequence tensors made) of one forward + backward of a GLM row."""
    loss = torch.zeros(1, seq, dtype=torch.bool)
    for t in range(turns):
        end = (t + 1) * seq // turns
        loss[0, end - max(1, seq // turns // 8) : end] = True
    layout = AttentionLayout.glm(loss, [seq])
    assert sum(len(r) for r in layout.rows) == 2 * turns
    q, k, v = qkv(layout)
    with Calls(seq) as calls:
        attention.layout_attention(q, k, v, layout, 0.3).sum().backward()
    return calls.kernel, calls.whole


def test_cost_does_not_grow_with_the_number_of_blocks():
    calls_1, whole_1 = cost(1)
    calls_64, whole_64 = cost(64)
    calls_256, whole_256 = cost(256)
    assert calls_1 <= 2 * 4 and calls_64 <= 2 * 16 and calls_256 <= 2 * 16  # pieces, not blocks
    assert whole_1 == whole_64 == whole_256 <= 12  # out, dq, dk, dv, ...: not one per block


@pytest.mark.parametrize("kind", ["glm", "causal"])
def test_model_with_many_turns_equals_its_eager_forward(kind):
    batch = make_batch(fuzzed_rows(3, turns=48), seed=3)
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = (AttentionLayout.glm(batch["loss_mask"], lengths) if kind == "glm"
              else AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    real = batch["attention_mask"].bool()
    model = tiny_qwen2()
    model.set_attn_implementation("eager")
    want = model(batch["input_ids"], attention_mask=additive(layout)[0]).logits
    want[real].square().sum().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    attention.use_focusft_attention(model)  # the last layer's tail included
    needed = batch["loss_mask"].bool()
    got = model(batch["input_ids"], layout=layout).logits
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    got[real].square().sum().backward()
    for n, p in model.named_parameters():  # float32 sums in another order: within 1e-6 of
        scale = float(want_grads[n].abs().max())  # the largest entry (embeddings reach ~100)
        torch.testing.assert_close(p.grad, want_grads[n], rtol=1e-4, atol=max(1e-5, 1e-6 * scale),
                                   msg=n)
    model.zero_grad()  # the last layer computing only the rows where logits are taken
    tail = layout.with_tail(needed, model.config.num_hidden_layers - 1)
    got = model(batch["input_ids"], layout=tail).logits
    torch.testing.assert_close(got[needed], want[needed], rtol=1e-5, atol=1e-5)


def test_bfloat16_many_turns_stays_close_to_float32():
    _, layout = layouts(4)[0]
    q, k, v = (t.detach() for t in qkv(layout))
    want = attention.layout_attention(q, k, v, layout, 0.3)
    got = attention.layout_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, 0.3)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
