"""The FlexAttention BlockMask built from key ranges == the dense layout; its forward == SDPA's.

Two references: the dense boolean of the layout (`dense_mask(key_ranges(window))`), and the
BlockMask torch's own `create_block_mask` makes by evaluating that mask element by element (the
old construction). The BlockMask is checked the way the compiled kernels read it: a full tile
counts as all visible without evaluating the mask_mod, a partial tile through the mask_mod, any
other tile as hidden. FlexAttention runs forward only on CPU (torch 2.13); the compiled forward,
backward, inner-loop gradients and checkpoint recompute are `focusft.benchmarks.gpu_check`'s.
"""

import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from focusft.core import attention
from focusft.core.block_mask import block_tables, from_key_ranges
from focusft.core.masks import AttentionLayout, dense_mask
from focusft.benchmarks.mask_memory import build_cost
from tiny import make_batch, tiny_qwen2

HEADS, KV_HEADS, DIM = 4, 2, 8


def random_layout(rng: random.Random, seq: int, packed: bool) -> tuple[AttentionLayout, torch.Tensor]:
    """A GLM layout of 1-3 rows of random turn runs (some rows packed, some padded) and the
    (B, S) loss mask it came from."""
    batch = rng.randint(1, 3)
    loss = torch.zeros(batch, seq, dtype=torch.long)
    index = torch.full((batch, seq), -1)
    lengths = []
    for b in range(batch):
        n = rng.randint(1, seq)
        lengths.append(n)
        pos, sample = 0, 0
        while pos < n:
            run = min(n - pos, rng.choice([1, 2, 7, 40, 130, 300]))
            loss[b, pos : pos + run] = rng.random() < 0.5
            index[b, pos : pos + run] = sample
            if packed and rng.random() < 0.3:
                sample += 1
            pos += run
    layout = AttentionLayout.glm(loss, lengths, index if packed else None)
    return layout, loss


def effective_mask(block_mask) -> torch.Tensor:
    """(B, S, S) what a kernel reading `block_mask` lets through (see module docstring)."""
    batch = block_mask.kv_num_blocks.shape[0]
    seq_q, seq_k = block_mask.seq_lengths
    bq, bk = block_mask.BLOCK_SIZE
    out = torch.zeros(batch, seq_q, seq_k, dtype=torch.bool)
    q = torch.arange(seq_q)[:, None]
    k = torch.arange(seq_k)[None]
    for b in range(batch):
        evaluated = block_mask.mask_mod(torch.tensor(b), torch.tensor(0), q, k)
        for i in range(-(-seq_q // bq)):
            rows = slice(i * bq, (i + 1) * bq)
            for j in block_mask.kv_indices[b, 0, i, : block_mask.kv_num_blocks[b, 0, i]].tolist():
                cols = slice(j * bk, (j + 1) * bk)
                out[b, rows, cols] = evaluated[rows, cols]
            for j in block_mask.full_kv_indices[b, 0, i, : block_mask.full_kv_num_blocks[b, 0, i]].tolist():
                out[b, rows, j * bk : (j + 1) * bk] = True
    return out


def reference_block_mask(lo, hi, block):
    def allowed(b, h, q, k):
        return (k >= lo[b, q]) & (k < hi[b, q])

    return create_block_mask(allowed, lo.shape[0], None, lo.shape[1], lo.shape[1], device="cpu",
                             BLOCK_SIZE=block)


def tables(block_mask):
    """Per (row, query tile): the set of partial and of full key tiles."""
    num, idx = block_mask.kv_num_blocks[:, 0], block_mask.kv_indices[:, 0]
    fnum, fidx = block_mask.full_kv_num_blocks[:, 0], block_mask.full_kv_indices[:, 0]
    return [[(sorted(idx[b, i, : num[b, i]].tolist()), sorted(fidx[b, i, : fnum[b, i]].tolist()))
             for i in range(num.shape[1])] for b in range(num.shape[0])]


@pytest.mark.parametrize("seed", range(12))
def test_block_mask_equals_the_dense_layout_fuzzed(seed):
    rng = random.Random(seed)
    seq = rng.choice([1, 5, 127, 128, 129, 300, 513])
    layout, loss = random_layout(rng, seq, packed=seed % 2 == 1)
    block = rng.choice([16, 128])
    variants = {"whole": layout, "tail": layout.with_tail(loss.bool(), 0).tail}
    for name, lay in variants.items():
        for window in (None, 1, 3, 50, 200):
            lo, hi = lay.key_ranges(window)
            got = from_key_ranges(lo, hi, "cpu", block=block)
            want = dense_mask(lo, hi)[:, 0]
            assert torch.equal(effective_mask(got), want), (name, window)
            ref = reference_block_mask(lo, hi, block)
            assert tables(got) == tables(ref), (name, window)
            assert torch.equal(got.to_dense(), ref.to_dense()), (name, window)


def test_block_tables_mark_full_only_inside_the_sequence_and_without_padding():
    # One causal row of 3 real tokens in S = 5, tiles of 2: tile (0, 0) holds query 0, which
    # does not see key 1 -> partial; tile (1, 0): queries 2, 3 -> query 3 is padding -> partial.
    lo = torch.zeros(1, 5, dtype=torch.long)
    hi = torch.tensor([[1, 2, 3, 0, 0]])
    touched, full = block_tables(lo, hi, block=2)
    assert touched[0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert not full.any()
    hi = torch.tensor([[2, 2, 4, 4, 5]])  # a context block [0, 2), then [2, 4), then [4, 5)
    touched, full = block_tables(lo, hi, block=2)
    assert full[0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]  # the last tile sticks out
    assert touched[0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_with_block_mask_reaches_the_tail_and_windows():
    batch = make_batch([[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)]])
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    flex = layout.with_block_mask("cpu").with_tail(batch["loss_mask"], 1)
    assert flex.tail.block_mask is not None
    lo, hi = layout.with_tail(batch["loss_mask"], 1).tail.key_ranges(2)
    assert torch.equal(effective_mask(flex.tail.block_mask_for(2)), dense_mask(lo, hi)[:, 0])


def _tail_model_logits(model, batch, layout, needed):
    with torch.no_grad():
        return model(batch["input_ids"], layout=layout.with_tail(needed, len(model.model.layers) - 1)).logits


def test_flex_forward_with_the_last_layer_tail_equals_sdpa():
    batch = make_batch([[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(2, 0), (1, 1)]])
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    model = tiny_qwen2().eval()
    model.set_attn_implementation("focusft")
    needed = batch["loss_mask"].bool()
    want = _tail_model_logits(model, batch, layout, needed)
    got = _tail_model_logits(model, batch, layout.with_block_mask("cpu"), needed)
    torch.testing.assert_close(got[needed], want[needed], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("softcap", [None, 1.5])
def test_flex_sinks_through_the_log_sum_exp_equal_the_tiled_path(window, softcap):
    rng = random.Random(7)
    layout, _ = random_layout(rng, 40, packed=True)
    g = torch.Generator().manual_seed(0)
    b, s = len(layout.rows), layout.seq_len
    q = torch.randn(b, HEADS, s, DIM, generator=g)
    k, v = (torch.randn(b, KV_HEADS, s, DIM, generator=g) for _ in range(2))
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    with torch.no_grad():
        want = attention.layout_attention(q, k, v, layout, 0.3, window=window, softcap=softcap, sinks=sinks)
        got = attention.flex_layout_attention(q, k, v, layout.with_block_mask("cpu"), 0.3, softcap,
                                              window, sinks)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # rows that see nothing: 0 in both


def test_flex_refuses_attention_dropout():
    from focusft.errors import UserError

    layout = AttentionLayout.causal([4], 4).with_block_mask("cpu")
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(UserError, match="dropout"):
        attention.flex_layout_attention(q, q, q, layout, dropout=0.1)


def test_building_from_ranges_stays_far_below_s_squared():
    # 32K tokens: the dense boolean alone is 1 GiB (create_block_mask needed 2.6 GiB at 16K on
    # CPU; docs/design.md); from the key ranges a few MiB.
    grown, _ = build_cost(32768, "ranges")
    assert grown < 64 * 2**20
