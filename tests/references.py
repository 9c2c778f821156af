"""Plain references that several test modules compare focusft with, written straight from METHOD.md."""

import torch


def brute_force_glm(loss_mask: list[int], length: int, seq: int) -> torch.Tensor:
    """allowed[q][k] straight from METHOD.md's rules, one element at a time."""
    block = []  # block id of every real position: a new block wherever the loss value changes
    for p in range(length):
        block.append(0 if p == 0 else block[-1] + (loss_mask[p] != loss_mask[p - 1]))
    allowed = torch.zeros(seq, seq, dtype=torch.bool)
    for q in range(length):
        for k in range(length):
            if loss_mask[q]:  # response: causal
                allowed[q, k] = k <= q
            else:  # context: own block (both ways) and everything earlier
                allowed[q, k] = k < q or block[k] == block[q]
                allowed[q, k] &= block[k] <= block[q]
    return allowed


def ref_sample_targets(batch, b, objective):
    n = int(batch["attention_mask"][b].sum())
    ids, lm = batch["input_ids"][b, :n], batch["loss_mask"][b, :n]
    take = lm[1:] if objective == "response" else ~lm[1:]
    pos = take.nonzero()[:, 0]
    return ids, lm, n, pos, ids[pos + 1]
