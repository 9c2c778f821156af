"""The metric core: where response queries put their attention, reduced chunk by chunk.

For one layer, one row, and a chunk of c response queries with key ranges [lo(q), hi(q))::

    a[h, q, k] = softmax_{lo(q) <= k < hi(q)} (scale * <Q[h, q], K[h // rep, k]>)     (GQA: rep = H / Hkv)
    abar[q, k] = mean_h a[h, q, k]                                                      (c, K)
    mass[q, j] = sum_k abar[q, k] * M[k, j]                                             (c, 5)

where M is the (S, 5) 0/1 matrix of key classes of the row (see `KEY_CLASSES`). The only tensor
of size c x K is the score block; it is reduced to c x 5 numbers (plus the K-vector of mass each
key receives) before the next chunk is formed, so the peak memory is one chunk of one layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from focusft.core.masks import AttentionLayout

# Columns of the key-class matrix. A key's class depends only on the key (and the start of its
# sample, lo), never on the query, because every key a query may see lies in the query's sample.
KEY_CLASSES = ("sink_first", "sink", "context", "response", "evidence")
# Metrics reported per layer and sample: the class masses plus the evidence rank.
METRICS = KEY_CLASSES + ("evidence_rank", "evidence_rank_frac")
# One chunk's score block holds at most this many floats unless chunk_size says otherwise
# (2**24 float32 = 64 MiB; the softmax needs a second block of the same size).
DEFAULT_SCORE_BUDGET = 2**24


def key_classes(lo: torch.Tensor, hi: torch.Tensor, loss_mask: torch.Tensor, sink_k: int,
                evidence: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S, 5) float 0/1 matrix: for every key, its membership in each of `KEY_CLASSES`.

    ``lo``/``hi`` are the layout's key ranges (pads have hi = 0). The start of a key's sample is
    its own lo, so the sink tokens are the first `sink_k` of each sample. Context and response
    exclude the sinks, so sink + context + response covers every real key exactly once;
    evidence is the part of context that the sample marks as evidence.
    """
    pos = torch.arange(lo.shape[1], device=lo.device).expand_as(lo)
    real = hi > 0  # every real query sees at least itself
    first = real & (pos == lo)
    sink = real & (pos - lo < sink_k)
    loss = loss_mask.to(lo.device).bool()
    context = real & ~sink & ~loss
    response = real & ~sink & loss
    ev = context & evidence.to(lo.device).bool() if evidence is not None else torch.zeros_like(real)
    return torch.stack([first, sink, context, response, ev], dim=-1).float()


def head_mean_weights(query: torch.Tensor, key: torch.Tensor, scale: float, lo: torch.Tensor,
                      hi: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of c queries over K keys: (H, c, D) x (Hkv, K, D) -> (c, K).

    Query head h reads kv head h // rep (transformers' `repeat_kv` order); the grouping is done
    by a broadcast matmul, so the keys are never copied per query head.
    """
    heads, c, dim = query.shape
    kv_heads, n_keys, _ = key.shape
    rep = heads // kv_heads
    q = query.float().reshape(kv_heads, rep, c, dim)
    scores = torch.matmul(q, key.float().transpose(-1, -2).unsqueeze(1)) * scale  # (Hkv, rep, c, K)
    keys = torch.arange(n_keys, device=query.device)
    allowed = (keys >= lo[:, None]) & (keys < hi[:, None])  # (c, K)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=(0, 1))


def chunk_size_for(heads: int, n_keys: int, chunk_size: int | None, budget: int) -> int:
    """Queries per chunk: the user's choice, else as many as fit `budget` score floats.

    >>> chunk_size_for(28, 16384, None, 2**24)
    36
    """
    if chunk_size is not None:
        return chunk_size
    return max(1, budget // max(1, heads * n_keys))


@dataclass
class Diagnostics:
    """Attention metrics of N samples: every tensor's last axis is the sample.

    ``per_sample[m]`` is (L, N): metric m of each layer and sample (NaN where undefined: a
    sample without response queries, or without evidence for the evidence metrics).
    ``received[n]`` is (L, S_n): mean over sample n's response queries of the head-mean weight
    each key received. ``classes[n]`` is (S_n, 5), the key classes of sample n.
    """

    layers: list[int]
    per_sample: dict[str, torch.Tensor]
    received: list[torch.Tensor]
    classes: list[torch.Tensor]
    num_queries: torch.Tensor

    @property
    def num_samples(self) -> int:
        return int(self.num_queries.numel())

    def layer_means(self) -> dict[str, list[float]]:
        """Per layer, the mean over samples where the metric is defined (NaN if nowhere)."""
        return {m: _nanmean(v, dim=1).tolist() for m, v in self.per_sample.items()}

    def averaged(self) -> dict[str, float]:
        """The per-layer means, averaged over layers (every layer weighs the same)."""
        return {m: float(_nanmean(torch.tensor(v), dim=0)) for m, v in self.layer_means().items()}

    @staticmethod
    def cat(parts: list["Diagnostics"]) -> "Diagnostics":
        """Join the samples of several measurements (same model, same layers)."""
        if any(p.layers != parts[0].layers for p in parts):
            raise ValueError("cannot join diagnostics of different layer sets")
        per_sample = {m: torch.cat([p.per_sample[m] for p in parts], dim=1) for m in METRICS}
        return Diagnostics(parts[0].layers, per_sample, [r for p in parts for r in p.received],
                           [c for p in parts for c in p.classes],
                           torch.cat([p.num_queries for p in parts]))


def _nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """nanmean that returns NaN (not a warning-free 0/0 surprise) where nothing is defined."""
    defined = ~torch.isnan(x)
    total = torch.where(defined, x, torch.zeros_like(x)).sum(dim)
    count = defined.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def evidence_rank(received: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank of an evidence token among the context keys, per layer: (L,) rank and rank / |C|.

    rank(k) = 1 + #{j in C : m(j) > m(k)} with m the mass received per response query and C the
    context keys (sinks excluded); the evidence rank is min over evidence tokens k of rank(k).
    Ties are counted in the evidence's favour. NaN when the sample has no evidence token.
    """
    layers = received.shape[0]
    ctx, ev = classes[:, 2].bool(), classes[:, 4].bool()
    if not ev.any() or torch.isnan(received).any():  # no evidence, or no response query
        nan = torch.full((layers,), float("nan"))
        return nan, nan.clone()
    m = received.float()
    best = m[:, ev].max(dim=1).values  # (L,)
    rank = 1 + (m[:, ctx] > best[:, None]).sum(dim=1)
    return rank.float(), rank.float() / int(ctx.sum())


class MassCollector:
    """Accumulates the metrics of one batch as the probe attention reports each layer.

    Pass it to the forward as ``probe=collector`` (see `focusft.diagnostics.probe`); then
    `result()` turns the sums into a `Diagnostics`. Queries are the loss-mask positions of real
    tokens; keys are those the layout allows.
    """

    def __init__(self, layout: AttentionLayout, loss_mask: torch.Tensor, sink_k: int = 4,
                 evidence: torch.Tensor | None = None, chunk_size: int | None = None,
                 score_budget: int = DEFAULT_SCORE_BUDGET):
        if sink_k < 1:
            raise ValueError(f"sink_k must be >= 1, got {sink_k}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.lo, self.hi = layout.key_ranges()
        self.lengths = [max((blk.end for blk in row), default=0) for row in layout.rows]
        self.classes = key_classes(self.lo, self.hi, loss_mask.cpu(), sink_k,
                                   None if evidence is None else evidence.cpu())
        queries = loss_mask.cpu().bool() & (self.hi > 0)
        self.queries = [row.nonzero().flatten() for row in queries]
        self.chunk_size, self.score_budget = chunk_size, score_budget
        self.sums: dict[int, torch.Tensor] = {}  # layer -> (B, 5) summed over queries
        self.received: dict[int, torch.Tensor] = {}  # layer -> (B, S) summed over queries
        self._device: torch.device | None = None

    def observe(self, layer: int, query: torch.Tensor, key: torch.Tensor, scale: float | None) -> None:
        """Reduce one layer's attention; query (B, H, S, D), key (B, Hkv, S, D) after RoPE."""
        batch, heads, seq, dim = query.shape
        if seq != self.lo.shape[1] or batch != self.lo.shape[0]:
            raise ValueError(f"probe built for {self.lo.shape[0]} x {self.lo.shape[1]} tokens, "
                             f"attention got {batch} x {seq}")
        scale = dim**-0.5 if scale is None else scale
        self._to(query.device)
        sums = torch.zeros(batch, len(KEY_CLASSES), device=query.device)
        received = torch.zeros(batch, seq, device=query.device)
        for b in range(batch):
            self._row(b, query[b], key[b], scale, sums[b], received[b])
        self.sums[layer] = sums.detach()
        self.received[layer] = received.detach()

    def _to(self, device: torch.device) -> None:
        if self._device != device:  # move the row tables once, not per layer
            self.lo, self.hi, self.classes = (t.to(device) for t in (self.lo, self.hi, self.classes))
            self.queries = [q.to(device) for q in self.queries]
            self._device = device

    def _row(self, b: int, query, key, scale, sums, received) -> None:
        positions = self.queries[b]
        if positions.numel() == 0:
            return
        # A row never needs keys past its longest range: trim them once for every chunk.
        n_keys = int(self.hi[b, positions].max())
        key = key[:, :n_keys]
        step = chunk_size_for(query.shape[0], n_keys, self.chunk_size, self.score_budget)
        for chunk in positions.split(step):
            hi = self.hi[b, chunk]
            width = int(hi.max())  # queries sorted, so later chunks see more keys
            weights = head_mean_weights(query[:, chunk], key[:, :width], scale, self.lo[b, chunk], hi)
            sums += (weights @ self.classes[b, :width]).sum(dim=0)
            received[:width] += weights.sum(dim=0)

    def result(self) -> Diagnostics:
        """Per-sample means over response queries, per layer (sorted by layer index)."""
        if not self.sums:
            raise RuntimeError("the probe saw no attention layer: the model's attention does not go "
                               "through transformers' AttentionInterface")
        layers = sorted(self.sums)
        counts = torch.tensor([float(q.numel()) for q in self.queries])
        sums = torch.stack([self.sums[l].cpu() for l in layers])  # (L, B, 5)
        denom = torch.where(counts > 0, counts, torch.full_like(counts, float("nan")))
        means = sums / denom[None, :, None]
        classes = [self.classes[b, :n].cpu() for b, n in enumerate(self.lengths)]
        received = [torch.stack([self.received[l][b, :n].cpu() for l in layers]) / denom[b]
                    for b, n in enumerate(self.lengths)]
        per_sample = {name: means[..., j] for j, name in enumerate(KEY_CLASSES)}
        has_ev = torch.tensor([bool(c[:, 4].any()) for c in classes])
        per_sample["evidence"] = torch.where(has_ev, per_sample["evidence"], float("nan"))
        ranks = [evidence_rank(r, c) for r, c in zip(received, classes)]
        per_sample["evidence_rank"] = torch.stack([r for r, _ in ranks], dim=1)
        per_sample["evidence_rank_frac"] = torch.stack([f for _, f in ranks], dim=1)
        return Diagnostics(layers, per_sample, received, classes, counts)
