"""Block-prefix SDPA attention == eager attention under the dense reference mask."""

import pytest
import torch

from focusft.core import attention
from focusft.core.masks import AttentionLayout, dense_mask
from tiny import make_batch, tiny_llama, tiny_qwen2

LAYOUTS = [
    [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(2, 0), (1, 1)]],  # multi-turn + padding
    [[(9, 0), (5, 1)]],
    [[(1, 1), (3, 0), (3, 1)], [(7, 1)]],  # starts with a response; all-response row
]


def dense_logits(model, batch, layout):
    lo, hi = layout.key_ranges()
    additive = torch.zeros(hi.shape[0], 1, hi.shape[1], hi.shape[1])
    additive[~dense_mask(lo, hi)] = torch.finfo(torch.float32).min
    model.set_attn_implementation("eager")
    return model(batch["input_ids"], attention_mask=additive).logits


@pytest.mark.parametrize("make_model", [tiny_qwen2, tiny_llama])
@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("kind", ["glm", "causal"])
def test_forward_and_grads_match_dense(make_model, rows, kind):
    batch = make_batch(rows)
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = (AttentionLayout.glm(batch["loss_mask"], lengths) if kind == "glm"
              else AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    real = batch["attention_mask"].bool()
    model = make_model()
    expected = dense_logits(model, batch, layout)
    expected[real].square().sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_attn_implementation("focusft")
    got = model(batch["input_ids"], layout=layout).logits
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    got[real].square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-5, msg=n)


def test_without_layout_it_is_plain_sdpa():
    model = tiny_qwen2()
    ids = torch.randint(1, 64, (2, 10))
    model.set_attn_implementation("sdpa")
    want = model(ids).logits
    model.set_attn_implementation("focusft")
    torch.testing.assert_close(model(ids).logits, want)


def test_flex_block_mask_path_matches_sdpa_path_forward():
    # FlexAttention has no CPU backward in torch 2.13: the forward is compared here; training
    # with --attention_kernel flex is for CUDA.
    batch = make_batch(LAYOUTS[0])
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    model = tiny_qwen2().eval()
    model.set_attn_implementation("focusft")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = model(batch["input_ids"], layout=layout).logits
        got = model(batch["input_ids"], layout=layout.with_block_mask("cpu")).logits
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["glm", "causal"])
@pytest.mark.parametrize("mlp_rows", [False, True])
def test_last_layer_tail_changes_nothing_at_needed_positions(kind, mlp_rows):
    batch = make_batch(LAYOUTS[0])
    lengths = batch["attention_mask"].sum(1).tolist()
    layout = (AttentionLayout.glm(batch["loss_mask"], lengths) if kind == "glm"
              else AttentionLayout.causal(lengths, batch["input_ids"].shape[1]))
    needed = batch["loss_mask"].bool()
    model = tiny_qwen2()
    model.set_attn_implementation("focusft")
    full = model(batch["input_ids"], layout=layout).logits
    full[needed].square().sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    last = model.config.num_hidden_layers - 1
    if mlp_rows:  # the last layer's MLP computes only the needed rows (focusft.core.last_layer)
        attention.use_focusft_attention(model)
        calls = []
        model.model.layers[last].mlp.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[1]))
    got = model(batch["input_ids"], layout=layout.with_tail(needed, last)).logits
    if mlp_rows:
        assert calls == [int(needed.any(0).sum())] and calls[0] < needed.shape[1]
    torch.testing.assert_close(got[needed], full[needed], rtol=1e-5, atol=1e-5)
    got[needed].square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
