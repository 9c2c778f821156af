"""One FocuSFT step as plain functions: targets, the inner loop wired into the forward, the loss.

The inner loop runs *inside* the outer forward, at the first adapted layer ``l0``::

    embed -> layers[0:l0] ──h──> (pre-hook on layers[l0]) ──> layers[l0:] -> head
                                  │ inner loop on h.detach(), K times:
                                  │   layers[l0:] -> head at target positions
                                  │   -> per-sample loss -> SGD on the fast weights
                                  └ then the outer forward continues with the adapted weights

so the bottom layers run once per step: their output (detached) feeds every inner step and
(with its graph) the outer pass. Logits are computed only at positions that carry loss, in both
loops, and there chunk by chunk with recomputation in backward (`focusft.core.chunked_loss`:
the loss's memory does not grow with the number of loss tokens). The hook fires only when
armed for the step, so activation checkpointing (which re-runs layer forwards during backward)
never re-enters the inner loop.

The outer loss takes the LM head's input from the forward (`_head_inputs`: the forward's own
head call then runs on no position) and applies ``post(lm_head(.))`` to it chunk by chunk;
`outer_logits` still returns all the loss positions' logits, for predictions.

Both loops take the loss the model's own forward would compute under the same mask
(`focusft.core.models`): ``head`` is the model's logits head (final norm, LM head, soft-cap or
scale), and for a mixture-of-experts model whose config asks for router logits the loss adds
the model's router load-balancing term::

    outer:   sum CE / num_items + coef * lbl(router logits of the batch, padding masked)
    inner:   L_n = mean CE of sample n + coef * lbl(router logits of sample n's tokens)

The inner term of sample n uses every layer's router logits of its tokens: the bottom layers'
as the outer forward recorded them (constants), the top layers' from the inner pass. Layer
calls of the inner loop record into their own store, never into the outer forward's outputs.

Targets: position t predicts token t+1. ``labels[b, t] = input_ids[b, t+1]`` where token t+1
is an assistant token, else -100 (built by the collator).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from focusft.core import models, sequence_parallel
from focusft.core.chunked_loss import token_cross_entropy
from focusft.core.checkpointing import inner_checkpointing
from focusft.core.distributed import nested_fsdp_call
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig, InnerStats, inner_loop
from focusft.core.masks import AttentionLayout, row_segments


_IN_INNER_LOOP = contextvars.ContextVar("focusft_in_inner_loop", default=False)


@dataclass
class Targets:
    """Flat target positions of a batch: row, position, token, owning sample; number of samples."""

    rows: torch.Tensor  # (T,)
    cols: torch.Tensor  # (T,)
    tokens: torch.Tensor  # (T,)
    samples: torch.Tensor  # (T,) sample of each target (= row unless rows are packed)
    n_samples: int
    counts: torch.Tensor | None = None  # (N,) targets per sample (a shard: the whole sequence's, SP)


def _make_targets(mask: torch.Tensor, tokens_at, sample_index: torch.Tensor | None) -> Targets:
    rows, cols = mask.nonzero(as_tuple=True)
    samples = rows if sample_index is None else sample_index[rows, cols]
    n = mask.shape[0] if sample_index is None else int(sample_index.max()) + 1
    # Counted once per batch here: a bincount on CUDA waits for the device (its output size
    # depends on the data), and the inner loop reads the counts at every step.
    return Targets(rows, cols, tokens_at(rows, cols), samples, n, torch.bincount(samples, minlength=n))


def response_targets(labels: torch.Tensor, sample_index: torch.Tensor | None = None) -> Targets:
    """Positions whose next token is an assistant token (the SFT objective)."""
    return _make_targets(labels != -100, lambda r, c: labels[r, c], sample_index)


def context_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor,
                    sample_index: torch.Tensor | None = None) -> Targets:
    """Positions whose next token is a real context (non-assistant) token of the same sample."""
    nxt = (~loss_mask.bool()[:, 1:]) & attention_mask.bool()[:, 1:]
    if sample_index is not None:
        nxt &= sample_index[:, 1:] == sample_index[:, :-1]
    mask = torch.cat([nxt, torch.zeros_like(nxt[:, :1])], dim=1)
    return _make_targets(mask, lambda r, c: input_ids[r, c + 1], sample_index)


def sample_mean_ce(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(N,) mean cross-entropy of each sample's targets (0 for a sample without targets)."""
    return sample_means(F.cross_entropy(logits.float(), targets.tokens, reduction="none"), targets)


def sample_means(ce: torch.Tensor, targets: Targets) -> torch.Tensor:
    """(N,) mean of the per-target values `ce` (T,) over each sample's targets (0 without any)."""
    n = targets.n_samples
    sums = torch.zeros(n, device=ce.device).index_add(0, targets.samples, ce)
    counts = targets.counts if targets.counts is not None else torch.bincount(targets.samples, minlength=n)
    return sums / counts.clamp(min=1)


@dataclass
class InnerJob:
    """What the armed hook needs for one step's inner loop."""

    targets: Targets
    layout: AttentionLayout | None = None  # None: the outer layout; else e.g. causal for context
    token_samples: torch.Tensor | None = None  # (B, S) sample of each token, -1 = pad (aux loss)
    group: object = None  # a SequenceParallel: inner losses and gradients summed over it


class BilevelStep:
    """Hooks the inner loop of `fast` into `model`'s forward (see module docstring)."""

    def __init__(self, model, fast: FastWeights, cfg: InnerConfig):
        self.fast, self.cfg, self.model = fast, cfg, model
        self.layers = models.decoder_layers(model)
        self.head = models.logits_head(model)
        self.vocab = models.head_vocab(model)
        self.aux = models.aux_loss(model)
        self.first = fast.first_layer
        self._bottom_routers = self.aux is not None and any(
            models.is_moe(block) for layer in self.layers[: self.first] for block in layer.children())
        self.job: InnerJob | None = None
        self.stats: InnerStats | None = None
        self._embeds: torch.Tensor | None = None
        self._handles = [
            self.layers[self.first].register_forward_pre_hook(self._run_inner, with_kwargs=True),
            self.layers[0].register_forward_pre_hook(self._keep_embeds, with_kwargs=True),
        ]

    def arm(self, job: InnerJob) -> None:
        """Run the inner loop during the next forward pass (once)."""
        self.job, self.stats = job, None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep_embeds(self, module, args, kwargs):
        if self.job is not None and self.job.layout is not None:
            self._embeds = (args[0] if args else kwargs["hidden_states"]).detach()

    def _run_inner(self, module, args, kwargs):
        if self.job is None:
            return None
        job, self.job = self.job, None
        hidden = (args[0] if args else kwargs["hidden_states"]).detach()
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        bottom_router = models.recorded_router_logits() if self.aux is not None else []
        if self._bottom_routers and job.layout is None and not bottom_router:
            raise RuntimeError("the router loss needs the bottom layers' router logits: run the outer "
                               "forward with output_router_logits=True (as step.outer_loss does)")
        inner = _IN_INNER_LOOP.set(True)  # its head calls are its own (see `_head_inputs`)
        try:
            self._inner(module, hidden, kwargs, job, bottom_router)
        finally:
            _IN_INNER_LOOP.reset(inner)
        return None

    def _inner(self, module, hidden, kwargs, job, bottom_router):
        # The outer forward may run under activation checkpointing (no-grad or saved-tensor
        # hooks); the inner loop builds and consumes its own ordinary graph.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep), \
                nested_fsdp_call(module), models.kept_layouts(self.model), \
                inner_checkpointing(self.layers):  # FSDP2: the top layers are called again
            if job.layout is not None:
                kwargs["layout"] = job.layout
                hidden, bottom_router = self._bottom(self._embeds, kwargs)
                self._embeds = None
            self.stats = inner_loop(lambda: self._top_losses(hidden, kwargs, job, bottom_router),
                                    self.fast, self.cfg, job.group)

    def _bottom(self, embeds: torch.Tensor, kwargs: dict):
        with torch.no_grad(), models.own_outputs(self.aux is not None) as router:
            h = embeds
            for layer in self.layers[: self.first]:
                h = _hidden(layer(h, **kwargs))
        return h, list(router)

    def _top_losses(self, hidden: torch.Tensor, kwargs: dict, job: InnerJob, bottom_router) -> torch.Tensor:
        targets = job.targets
        with models.own_outputs(self.aux is not None) as router:
            h = hidden
            for layer in self.layers[self.first :]:
                h = _hidden(layer(h, **kwargs))
        ce = token_cross_entropy(self.head, h[targets.rows, targets.cols], targets.tokens, self.vocab)
        losses = sample_means(ce, targets)  # the head is per token
        if self.aux is None:
            return losses
        if job.token_samples is None:
            raise ValueError("InnerJob.token_samples is needed for the auxiliary loss")
        return losses + self.aux.per_sample(bottom_router + list(router), job.token_samples,
                                            targets.n_samples)


def _keep(x):
    # Detached: returning `x` itself would tie a saved output to its own grad_fn (a reference
    # cycle that keeps every inner graph alive until the garbage collector runs).
    return x.detach()


def _hidden(out):
    """Decoder layers return a tensor (transformers 5) or a tuple (older / other models)."""
    return out[0] if isinstance(out, tuple) else out


def outer_loss(model, batch: dict, layout: AttentionLayout, num_items: int | torch.Tensor | None):
    """Sum of assistant-token CE / num_items (the global token count), logits at loss positions
    only and chunk by chunk, plus the model's own auxiliary loss if it has one (see module
    docstring).

    Returns (loss, n_tokens). With num_items=None the loss is this batch's token mean.
    """
    with _head_inputs(model) as kept_inputs:
        _, kept, aux = outer_logits(model, batch, layout)
    valid = kept != -100
    if len(kept_inputs) != 1:
        raise RuntimeError(f"{type(models.unwrap(model)).__name__}'s forward called its output "
                           f"embeddings {len(kept_inputs)} times; the loss expects once")
    hidden = kept_inputs[0][valid]  # (T, hidden): the LM head's input at the loss tokens
    ce = token_cross_entropy(models.output_head(model), hidden, kept[valid], models.head_vocab(model))
    return _reduce(ce.sum(), valid.sum(), num_items, aux)


@contextlib.contextmanager
def _head_inputs(model):
    """Inside: the LM head's input of the forward's own call is kept in the yielded list, and
    the head runs on none of its positions (the forward's logits come out empty: (B, 0, V)).
    The inner loop's calls of the head, inside the same forward, are left alone."""
    kept = []

    def skip(module, args):
        if _IN_INNER_LOOP.get():
            return None
        kept.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = models.unwrap(model).get_output_embeddings().register_forward_pre_hook(skip)
    try:
        yield kept
    finally:
        handle.remove()


def outer_logits(model, batch: dict, layout: AttentionLayout):
    """Logits (B, P, V) at the P positions that carry loss in some row, the labels there (B, P),
    and the model's own auxiliary loss term (a scalar tensor, or None).

    For predictions; the loss alone is `outer_loss` (never all P x V logits at once)."""
    labels = batch["labels"]
    keep = (labels != -100).any(0).nonzero(as_tuple=True)[0]  # union of loss positions
    aux = models.aux_loss(model)
    extra = {} if aux is None else {"output_router_logits": True}
    # The last layer matters only where logits are taken (also for the response-objective
    # inner loop, which runs under this layout), unless a router loss reads its router logits
    # at every position.
    if aux is None and sequence_parallel.current() is None:  # a shard has no whole rows
        layout = layout.with_tail((labels != -100).cpu(), len(models.decoder_layers(model)) - 1,
                                  labels.device)  # tail_keep copied to the device once
        if "sample_index" in batch:  # packed rows: the fast weights index the last layer's MLP
            layout = replace(layout, tail_keep=None)  # by position, so it runs on every row
    out = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), layout=layout,
                logits_to_keep=keep, use_cache=False, **extra)
    aux_term = None if aux is None else aux.batch(out.router_logits, batch["attention_mask"])
    return out.logits, labels[:, keep], aux_term


def logits_loss(logits: torch.Tensor, kept: torch.Tensor, num_items, aux=None):
    """(sum of CE / num_items [+ aux], number of loss tokens); num_items=None: the token mean."""
    loss_sum = F.cross_entropy(logits.float().flatten(0, 1), kept.flatten(),
                               ignore_index=-100, reduction="sum")
    return _reduce(loss_sum, (kept != -100).sum(), num_items, aux)


def _reduce(loss_sum: torch.Tensor, n_tokens: torch.Tensor, num_items, aux):
    denom = n_tokens.clamp(min=1) if num_items is None else num_items
    loss = loss_sum / denom
    if aux is not None:
        loss = loss + aux.to(loss.device)
    return loss, n_tokens


def token_samples(batch: dict) -> torch.Tensor:
    """(B, S) the sample each token belongs to (the row, or `sample_index` when packed); -1 = pad."""
    if "sample_index" in batch:
        return batch["sample_index"]
    rows = torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device)[:, None]
    return torch.where(batch["attention_mask"].bool(), rows, -1)


def batch_layout(batch: dict, attention: str, kernel: str = "sdpa") -> AttentionLayout:
    """The attention layout of a collated batch (GLM or causal; packed rows respected)."""
    lengths = batch["attention_mask"].sum(1).tolist()
    packed = batch["sample_index"].cpu() if "sample_index" in batch else None
    if attention == "glm":
        layout = AttentionLayout.glm(batch["loss_mask"].cpu(), lengths, packed)
    else:
        layout = AttentionLayout.causal(lengths, batch["input_ids"].shape[1], packed)
    return layout.with_block_mask(batch["input_ids"].device) if kernel == "flex" else layout


def arm_inner(fast: FastWeights, bilevel: BilevelStep, batch: dict, seeds: list[int],
              objective: str = "response", kernel: str = "sdpa", sp=None) -> None:
    """Reset the per-sample fast weights of `batch` and arm the inner loop for its forward.

    `batch` is the whole batch; with sequence parallelism (`sp`, a
    `focusft.core.sequence_parallel.SequenceParallel`) the forward then runs on this rank's
    shard, and the inner loop on the shard's targets (whole-sequence counts)."""
    packed = batch.get("sample_index")
    segments = [row_segments(r) for r in packed.tolist()] if packed is not None else None
    fast.reset(seeds, device=batch["input_ids"].device, segments=segments)
    if objective == "response":
        job = InnerJob(response_targets(batch["labels"], packed))
    else:
        targets = context_targets(batch["input_ids"], batch["loss_mask"], batch["attention_mask"], packed)
        job = InnerJob(targets, batch_layout(batch, "causal", kernel))
    job.token_samples = token_samples(batch)
    if sp is not None and sp.size > 1:
        job.targets = sp.local_targets(job.targets, batch["input_ids"].shape[1])
        job.group = sp
    bilevel.arm(job)
