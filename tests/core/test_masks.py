"""The GLM mask as key ranges == a brute-force, element-wise reading of its definition."""

import random

import torch
from hypothesis import given, settings, strategies as st

from focusft.core.masks import AttentionLayout, dense_mask, glm_key_limits, turn_blocks
from references import brute_force_glm


def random_row(rng: random.Random, seq: int) -> tuple[list[int], int]:
    length = rng.randint(1, seq)
    mask, value = [], rng.random() < 0.2
    while len(mask) < seq:
        mask += [int(value)] * rng.randint(1, 5)  # turns of random length
        value = not value
    return mask[:seq], length


def test_worked_example():
    lm = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 1, 0]])
    layout = AttentionLayout.glm(lm, [8])
    lo, hi = layout.key_ranges()
    assert hi.tolist() == [[3, 3, 3, 4, 5, 7, 7, 8, 0]]
    assert lo.tolist() == [[0] * 9]
    assert [(b.start, b.end, b.causal) for b in layout.rows[0]] == [
        (0, 3, False), (3, 5, True), (5, 7, False), (7, 8, True)]


def test_layout_equals_brute_force_on_random_batches():
    rng = random.Random(0)
    for _ in range(50):
        seq = rng.randint(1, 24)
        rows = [random_row(rng, seq) for _ in range(rng.randint(1, 4))]
        lm = torch.tensor([m for m, _ in rows])
        lengths = [n for _, n in rows]
        lo, hi = AttentionLayout.glm(lm, lengths).key_ranges()
        dense = dense_mask(lo, hi)
        assert torch.equal(glm_key_limits(lm, torch.tensor(lengths)), hi)
        for b, (m, n) in enumerate(rows):
            assert torch.equal(dense[b, 0], brute_force_glm(m, n, seq)), (m, n)


def test_causal_layout_is_lower_triangular_and_ignores_pads():
    lo, hi = AttentionLayout.causal([3, 1], 4).key_ranges()
    dense = dense_mask(lo, hi)[:, 0].int()
    assert dense[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert dense[1].tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.data())
def test_fuzz_blocks_tile_the_row_and_masks_are_prefixes(mask, data):
    length = data.draw(st.integers(min_value=1, max_value=len(mask)))
    blocks = turn_blocks(mask, length)
    assert blocks[0].start == 0 and blocks[-1].end == length
    assert all(a.end == b.start and a.causal != b.causal for a, b in zip(blocks, blocks[1:]))
    lm = torch.tensor([mask], dtype=torch.long)
    lo, hi = AttentionLayout.glm(lm, [length]).key_ranges()
    assert torch.equal(dense_mask(lo, hi)[0, 0], brute_force_glm([int(x) for x in mask], length, len(mask)))
    q = torch.arange(length)
    assert bool((hi[0, :length] >= q + 1).all())  # every real token sees itself


def test_query_blocks_keep_key_ranges_of_needed_queries():
    rng = random.Random(1)
    for _ in range(50):
        seq = rng.randint(1, 24)
        rows = [random_row(rng, seq) for _ in range(rng.randint(1, 3))]
        lm = torch.tensor([m for m, _ in rows])
        lengths = [n for _, n in rows]
        needed = torch.rand(lm.shape) < 0.3
        needed &= torch.arange(seq) < torch.tensor(lengths)[:, None]
        for layout in (AttentionLayout.glm(lm, lengths), AttentionLayout.causal(lengths, seq)):
            tail = layout.with_tail(needed, layer=3)
            assert tail.tail_layer == 3 and tail.rows == layout.rows
            lo, hi = layout.key_ranges()
            tlo, thi = tail.tail.key_ranges()
            computed = thi > 0  # rows the tail computes (a real query always sees >= 1 key)
            assert torch.equal(tlo[needed], lo[needed]) and torch.equal(thi[needed], hi[needed])
            assert not (computed & ~(hi > 0)).any()  # never a padding row


def test_window_limits_the_look_back_only():
    lm = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 1, 0]])
    lo, hi = AttentionLayout.glm(lm, [8]).key_ranges(window=2)
    assert lo.tolist() == [[0, 0, 1, 2, 3, 4, 5, 6, 0]]  # the worked example; the pad stays 0
    assert hi.tolist() == [[3, 3, 3, 4, 5, 7, 7, 8, 0]]
    rng = random.Random(1)
    for _ in range(30):
        seq, window = rng.randint(1, 20), rng.randint(1, 8)
        mask, n = random_row(rng, seq)
        lo, hi = AttentionLayout.glm(torch.tensor([mask]), [n]).key_ranges(window)
        q, k = torch.arange(seq)[:, None], torch.arange(seq)[None]
        want = brute_force_glm(mask, n, seq) & (k > q - window)  # transformers' sliding overlay
        assert torch.equal(dense_mask(lo, hi)[0, 0], want), (mask, n, window)
