"""Cross-entropy at the loss positions, chunk by chunk: one chunk of logits alive at a time.

A loss over T positions needs T x V logits. With Qwen2.5's vocabulary (V = 151,936) one
float32 copy is 0.6 GB per 1K positions, and cross-entropy keeps several (the logits, their
float32 copy, the log-softmax, its gradient), so memory grew with the number of loss tokens.
Here the head and the cross-entropy run on C positions at a time, each chunk under
non-reentrant activation checkpointing::

    forward:   ce[chunk] = CE(head(h[chunk]), tokens[chunk])      the chunk's logits freed at once
    backward:  chunk by chunk: head(h[chunk]) again, then its gradients w.r.t. h[chunk]
               (hence the fast weights or the layers below) and the head's parameters

so the loss holds O(C x V) whatever T, for one more head forward per position in backward. The
per-token values are those of ``F.cross_entropy`` on float32 logits (each row's value is its
own), so a sum or a mean over them equals the unchunked loss up to the order of additions.
``head`` is any per-token callable (`focusft.core.models.logits_head`: final norm, LM head,
soft-cap or scale), called as a module in the recomputation too, so an engine that gathers
parameters on a module's call (ZeRO-3) sees it. The non-reentrant checkpoint differentiates
everything its function used, not only its inputs: ``torch.autograd.grad`` w.r.t. the fast
weights (the inner loop) works through it. Without grad mode the chunks just run.

Chunk size: ``C = max(MIN_POSITIONS, LOGITS_PER_CHUNK // V)``, i.e. 2^26 logits (256 MiB per
float32 copy, about 1 GiB for a chunk's few copies) whatever the vocabulary: 441 positions for
Qwen2.5 (151,936), 2,097 for Llama 2 (32,000), 262 for Gemma (256,000). That is a matrix
product large enough to run at full speed, and a peak that does not depend on T.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGITS_PER_CHUNK = 1 << 26
MIN_POSITIONS = 64


def chunk_positions(vocab: int) -> int:
    """Positions per chunk for a vocabulary of `vocab` (see module docstring).

    >>> chunk_positions(151_936), chunk_positions(32_000), chunk_positions(10**9)
    (441, 2097, 64)
    """
    return max(MIN_POSITIONS, LOGITS_PER_CHUNK // max(vocab, 1))


def token_cross_entropy(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                        tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """(T,) float32 cross-entropy of ``head(hidden)`` (T, V) against `tokens` (T,), computed
    ``chunk_positions(vocab)`` positions at a time; 0 where a token is -100."""
    size = chunk_positions(vocab)
    grad = torch.is_grad_enabled()
    parts = []
    # An empty batch still goes through the head once: the result keeps its graph.
    for start in range(0, max(len(tokens), 1), size):
        h, t = hidden[start:start + size], tokens[start:start + size]
        if grad:
            parts.append(checkpoint(_chunk, head, h, t, use_reentrant=False))
        else:
            parts.append(_chunk(head, h, t))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _chunk(head, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), tokens, ignore_index=-100, reduction="none")
