"""Ulysses sequence parallelism (focusft.core.sequence_parallel): the pieces on one process, and
the whole step on 2 CPU ranks equal to the unsharded step (tests/sp_worker.py)."""

import pytest
import torch

from focusft.core.sequence_parallel import SequenceParallel
from focusft.core.step import response_targets, sample_mean_ce
from multiproc import run, torchrun
from tiny import make_batch

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]]


def test_shards_cover_the_batch_and_keep_whole_sequence_positions():
    batch = make_batch(ROWS, seed=0)
    shards = [SequenceParallel(2, r).shard(batch) for r in range(2)]
    for key in ("input_ids", "labels", "loss_mask", "attention_mask"):
        assert torch.equal(torch.cat([s[key] for s in shards], 1), batch[key])
    assert shards[1]["position_ids"][0].tolist() == list(range(7, 14))
    assert torch.equal(shards[0]["sample_ids"], batch["sample_ids"])  # per row, not cut
    with pytest.raises(ValueError, match="not a multiple of the sp size 3"):
        SequenceParallel(3, 0).shard(batch)


def test_shard_losses_add_up_to_each_samples_mean():
    """The inner loss of a sample is its whole-sequence mean: partial sums over shards add up."""
    batch = make_batch(ROWS, seed=1)
    targets = response_targets(batch["labels"])
    logits = torch.randn(len(targets.rows), 11)
    targets.tokens = targets.tokens % 11
    whole = sample_mean_ce(logits, targets)
    parts = []
    for r in range(2):
        local = SequenceParallel(2, r).local_targets(targets, batch["input_ids"].shape[1])
        keep = (targets.cols >= 7 * r) & (targets.cols < 7 * (r + 1))
        parts.append(sample_mean_ce(logits[keep], local))
    torch.testing.assert_close(parts[0] + parts[1], whole)


@pytest.mark.slow
def test_two_rank_sequence_parallel_step_equals_the_unsharded_step():
    """SFT-GLM and FocuSFT (both objectives; kv heads split, and repeated when too few; with
    activation checkpointing): outer loss, inner losses, fast weights, gradients, rtol 1e-4."""
    out = run(torchrun("tests/sp_worker.py"), timeout=240).stdout
    for label in ("sft-glm kv4", "response kv4", "context kv4", "response kv2", "response kv1 ckpt"):
        assert f"sp ok: {label}" in out
