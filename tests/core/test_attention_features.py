"""Sliding windows, soft-caps and sinks under a layout == the family's own eager attention.

Kernel level: `layout_attention` against transformers' `eager_attention_forward` of the family
that uses the feature (Mistral: windows, Gemma 2: soft-cap, GPT-OSS: sinks) under the dense
additive mask of the same layout (`AttentionLayout.key_ranges(window)`), fp32; outputs and the
gradients of q, k, v and the sink logits. Model level: tiny Mistral / Gemma 2 / GPT-OSS under
the causal layout == the model's own eager forward with its own (sliding) masks.
"""

import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (Cohere2Config, Cohere2ForCausalLM, Exaone4Config, Exaone4ForCausalLM,
                          Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          GptOssConfig, GptOssForCausalLM, Olmo3Config, Olmo3ForCausalLM,
                          Llama4ForCausalLM, Llama4TextConfig, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM)
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_eager
from transformers.models.mistral.modeling_mistral import eager_attention_forward as mistral_eager

from focusft.core import attention, tiled_attention
from focusft.errors import UserError
from focusft.core.masks import AttentionLayout, dense_mask
from tiny import make_batch

HEADS, KV_HEADS, DIM = 4, 2, 8
ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(2, 0), (1, 1)]]  # multi-turn, padding
TOL = dict(rtol=1e-5, atol=1e-5)


def glm(rows=ROWS):
    b = make_batch(rows)
    return AttentionLayout.glm(b["loss_mask"], b["attention_mask"].sum(1).tolist()), b


def layouts():
    """(name, layout) pairs: GLM multi-turn + padding, causal, packed rows, the last-layer tail."""
    layout, batch = glm()
    lengths = batch["attention_mask"].sum(1).tolist()
    packed = torch.tensor([[0] * 5 + [1] * 6 + [2] * 3, [3] * 9 + [-1] * 5])
    loss = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 1, 1, 0, 1, 1] + [0] * 5])
    return [
        ("glm", layout),
        ("causal", AttentionLayout.causal(lengths, layout.seq_len)),
        ("packed", AttentionLayout.glm(loss, [14, 9], packed)),
        ("tail", layout.with_tail(batch["loss_mask"], 0).tail),
        ("packed-causal", AttentionLayout.causal([14, 9], 14, packed)),
    ]


def qkv(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s = len(layout.rows), layout.seq_len
    q = torch.randn(b, HEADS, s, DIM, generator=g).requires_grad_()
    k = torch.randn(b, KV_HEADS, s, DIM, generator=g).requires_grad_()
    v = torch.randn(b, KV_HEADS, s, DIM, generator=g).requires_grad_()
    return q, k, v


def additive(layout, window=None):
    lo, hi = layout.key_ranges(window)
    mask = torch.zeros(len(layout.rows), 1, layout.seq_len, layout.seq_len)
    mask[~dense_mask(lo, hi)] = torch.finfo(torch.float32).min
    return mask, hi > 0  # rows that see anything: the ones compared


def module(sinks=None):
    return types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, head_dim=DIM, training=False,
                                 sinks=sinks)


def grads(out, real, tensors, seed=1):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    loss = (out * weight)[real].sum()  # out: (B, S, H, D); real: (B, S)
    return torch.autograd.grad(loss, tensors)


def check(eager, feature_kwargs, layout, window, sinks=None):
    q, k, v = qkv(layout)
    tensors = [q, k, v] + ([sinks] if sinks is not None else [])
    mask, real = additive(layout, window)
    want, _ = eager(module(sinks), q, k, v, mask, scaling=0.3, dropout=0.0, **feature_kwargs)
    want_grads = grads(want, real, tensors)
    got = attention.layout_attention(q, k, v, layout, 0.3, window=window, sinks=sinks,
                                     softcap=feature_kwargs.get("softcap"))
    torch.testing.assert_close(got[real], want[real], **TOL)
    assert not got[~real].any()  # rows outside every block stay 0
    for name, g, w in zip("qkvs", grads(got, real, tensors), want_grads):
        torch.testing.assert_close(g, w, **TOL, msg=name)


WINDOWS = [None, 1, 2, 3, 5, 100]  # shorter than blocks, about a block, longer than any row


@pytest.mark.parametrize("name,layout", layouts(), ids=[n for n, _ in layouts()])
@pytest.mark.parametrize("window", WINDOWS)
def test_sliding_window_equals_eager(name, layout, window):
    check(mistral_eager, {}, layout, window)


@pytest.mark.parametrize("name,layout", layouts(), ids=[n for n, _ in layouts()])
@pytest.mark.parametrize("window", [None, 3])
def test_softcap_equals_gemma2_eager(name, layout, window):
    check(gemma2_eager, {"softcap": 1.5}, layout, window)  # scores ~N(0, 1): the cap binds


@pytest.mark.parametrize("name,layout", layouts(), ids=[n for n, _ in layouts()])
@pytest.mark.parametrize("window", [None, 3])
def test_sinks_equal_gpt_oss_eager_with_sink_gradient(name, layout, window):
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    check(gpt_oss_eager, {}, layout, window, sinks)


def test_window_longer_than_the_sequence_is_the_plain_path_bit_for_bit():
    layout, _ = glm()
    q, k, v = qkv(layout)
    plain = attention.layout_attention(q, k, v, layout, 0.3)
    assert torch.equal(attention.layout_attention(q, k, v, layout, 0.3, window=layout.seq_len), plain)


def test_tiles_split_long_blocks_and_stay_exact(monkeypatch):
    monkeypatch.setattr(tiled_attention, "TILE_ELEMENTS", 1)  # every tile MIN_ROWS queries
    layout, _ = glm([[(40, 0), (30, 1), (3, 0), (20, 1)], [(50, 0)]])
    assert len(tiled_attention.block_tiles(0, layout.rows[0][0], None, HEADS)) == 3
    check(gemma2_eager, {"softcap": 1.5}, layout, None)
    check(mistral_eager, {}, layout, 7)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates (forward and backward)."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_intermediate(seq, **features):
    layout = AttentionLayout.causal([seq], seq)
    q, k, v = qkv(layout)
    with LargestTensor() as mode:
        out = attention.layout_attention(q, k, v, layout, 0.3, **features)
        out.sum().backward()
    return mode.largest


def peak_live_bytes(seq, **features):
    """Peak bytes of live tensors over forward + backward (the profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    layout = AttentionLayout.glm(torch.tensor([[0] * (seq - 64) + [1] * 64]), [seq])
    q, k, v = qkv(layout)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        attention.layout_attention(q, k, v, layout, 0.3, **features).sum().backward()
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("features", [{"softcap": 2.0}, {"window": 64}, {"sinks": None}])
def test_tiled_memory_is_linear_in_sequence_length(monkeypatch, features):
    monkeypatch.setattr(tiled_attention, "TILE_ELEMENTS", HEADS * 64 * 256)
    if "sinks" in features:
        features = {"sinks": torch.zeros(HEADS, requires_grad=True)}
    small, large = largest_intermediate(512, **features), largest_intermediate(1024, **features)
    rows = tiled_attention.MIN_ROWS
    assert large <= max(tiled_attention.TILE_ELEMENTS, HEADS * rows * 1024, HEADS * 1024 * DIM)
    assert large <= 2 * small + 1  # S doubled: at most doubled (an S^2 term would quadruple)
    assert large < HEADS * 1024 * 1024 / 8
    # all live tensors together (a GLM row: one long context block, then a response block)
    small, large = peak_live_bytes(512, **features), peak_live_bytes(1024, **features)
    assert large <= 2.5 * small, (small, large)
    assert large < HEADS * 1024 * 1024 * 4 / 4  # well under one fp32 S x S per head


# ------------------------------------------------------------------------- whole models
MIXED = {"gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, {"head_dim": 8}),
         "cohere2": (Cohere2Config, Cohere2ForCausalLM, {}),
         "olmo3": (Olmo3Config, Olmo3ForCausalLM, {}),
         "exaone4": (Exaone4Config, Exaone4ForCausalLM, {})}


def tiny(family):
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  pad_token_id=0, attention_dropout=0.0)
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=3))
    if family == "qwen2":  # sliding layers from max_window_layers on: one full, one sliding
        return Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=3,
                                            max_window_layers=1))
    if family == "qwen2_moe":  # the window is a module attribute, not passed to the call
        cfg = Qwen2MoeConfig(**common, use_sliding_window=True, sliding_window=3, max_window_layers=2,
                             num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
                             shared_expert_intermediate_size=16)
        return Qwen2MoeForCausalLM(cfg)
    if family in MIXED:  # one sliding, one full layer
        config_cls, model_cls, extra = MIXED[family]
        return model_cls(config_cls(**common, sliding_window=3, **extra,
                                    layer_types=["sliding_attention", "full_attention"]))
    if family == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, sliding_window=3,
                                               query_pre_attn_scalar=8, attn_logit_softcapping=1.0,
                                               final_logit_softcapping=None))
        with torch.no_grad():  # scores of a few units: the soft-cap binds
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(20)
                layer.self_attn.k_proj.weight.mul_(20)
        return model
    model = GptOssForCausalLM(GptOssConfig(**common, head_dim=8, sliding_window=3, num_local_experts=2,
                                           num_experts_per_tok=1))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_()
    return model


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen2_moe", "gemma2", "gpt_oss", *MIXED])
def test_causal_layout_equals_the_models_own_sliding_attention(family):
    batch = make_batch([[(4, 0), (5, 1)], [(6, 1)]])  # one padded row
    real = batch["attention_mask"].bool()
    lengths = batch["attention_mask"].sum(1).tolist()
    model = tiny(family).train()
    model.set_attn_implementation("eager")
    want = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want[real].square().sum().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_attn_implementation("focusft")
    layout = AttentionLayout.causal(lengths, batch["input_ids"].shape[1])
    got = model(batch["input_ids"], layout=layout).logits
    torch.testing.assert_close(got[real], want[real], **TOL)
    got[real].square().sum().backward()
    for n, p in model.named_parameters():
        if n in want_grads:
            torch.testing.assert_close(p.grad, want_grads[n], rtol=1e-4, atol=1e-5, msg=n)
    if family == "gpt_oss":
        assert all(layer.self_attn.sinks.grad.abs().sum() > 0 for layer in model.model.layers)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "qwen2", *MIXED])
def test_glm_layout_equals_eager_under_the_dense_masks_per_layer_type(family):
    batch = make_batch(ROWS)
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    real = batch["attention_mask"].bool()
    model = tiny(family)
    masks = {"full_attention": additive(layout)[0], "sliding_attention": additive(layout, 3)[0]}
    model.set_attn_implementation("eager")
    want = model(batch["input_ids"], attention_mask=masks).logits
    model.set_attn_implementation("focusft")
    got = model(batch["input_ids"], layout=layout).logits
    torch.testing.assert_close(got[real], want[real], **TOL)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_without_layout_softcap_and_sinks_equal_eager(family):
    model = tiny(family).eval()
    ids = torch.randint(1, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    model.set_attn_implementation("eager")
    want = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("focusft")
    got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], **TOL)


@pytest.mark.parametrize("features", [{"softcap": 1.5}, {"window": 3}, {"window": 2, "softcap": 1.5},
                                      {"window": 100}])
def test_flex_score_mod_and_window_masks_forward_match_tiled_path(features):
    # FlexAttention has no CPU backward in torch 2.13: forward only (training with flex is CUDA).
    layout, _ = glm()
    q, k, v = (t.detach() for t in qkv(layout))
    flex = layout.with_block_mask("cpu")
    with torch.no_grad():
        want = attention.layout_attention(q, k, v, layout, 0.3, **features)
        got = attention.flex_layout_attention(q, k, v, flex, 0.3, **features)
        via_entry, _ = attention.focusft_attention(module(), q, k, v, None, scaling=0.3, layout=flex,
                                                   sliding_window=features.get("window"),
                                                   softcap=features.get("softcap"))
    real = additive(layout, features.get("window"))[1]
    torch.testing.assert_close(got[real], want[real], **TOL)
    torch.testing.assert_close(via_entry, got)
    if features.get("window", 100) < 100:
        assert flex.block_mask_for(features["window"]) is not flex.block_mask  # built, then kept
        assert flex.block_mask_for(features["window"]) is flex.window_masks[features["window"]]


# ------------------------------------------------------------------------- refusals
def call(module_, **kwargs):
    layout, _ = glm()
    q, k, v = qkv(layout)
    return attention.focusft_attention(module_, q, k, v, None, layout=layout, **kwargs)


@pytest.mark.parametrize("kwargs,words", [
    ({"position_bias": torch.zeros(1)}, "position bias"),
    ({"indices": torch.zeros(1)}, "sparse attention"),
    ({"some_new_flag": 3}, "`some_new_flag`"),
])
def test_math_changing_arguments_are_refused(kwargs, words):
    with pytest.raises(UserError, match=words):
        call(module(), **kwargs)


def test_llama4_chunked_layers_are_refused_by_name():
    cfg = Llama4TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, intermediate_size_mlp=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           num_local_experts=2, attention_chunk_size=4, max_position_embeddings=64)
    model = Llama4ForCausalLM(cfg)
    model.set_attn_implementation("focusft")
    layout, batch = glm()
    with pytest.raises(UserError, match="llama4_text', layer 0.*'chunked_attention' layer"):
        model(batch["input_ids"], layout=layout)
    got = model(batch["input_ids"]).logits  # no layout: the model's own (chunked) mask, as SDPA
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, model(batch["input_ids"]).logits)


def test_harmless_and_none_arguments_pass():
    out, _ = call(module(), position_ids=torch.arange(14), use_cache=False, sliding_window=None,
                  softcap=None, s_aux=None, position_bias=None, output_attentions=False)
    assert out.shape == (3, 14, HEADS, DIM)


def test_window_from_the_module_attribute_when_the_call_passes_none():
    # Qwen2-MoE sets `sliding_window` on its sliding layers without passing it to the call.
    layout, _ = glm()
    q, k, v = qkv(layout)
    stub = types.SimpleNamespace(sliding_window=2)
    got, _ = attention.focusft_attention(stub, q, k, v, None, layout=layout)
    torch.testing.assert_close(got, attention.layout_attention(q, k, v, layout, window=2))
    explicit, _ = attention.focusft_attention(stub, q, k, v, None, layout=layout, sliding_window=None)
    torch.testing.assert_close(explicit, attention.layout_attention(q, k, v, layout))


@pytest.mark.parametrize("features", [{"softcap": 1.5}, {"window": 3}])
def test_bfloat16_keeps_its_dtype_and_stays_close_to_float32(features):
    layout, _ = glm()
    q, k, v = (t.detach() for t in qkv(layout))
    want = attention.layout_attention(q, k, v, layout, 0.3, **features)
    got = attention.layout_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, 0.3, **features)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
