"""The model self-check: focusft's paths against the model's own eager forward, before any step.

On a tiny probe (2 rows, multi-turn, the second padded; random token ids of the model's vocab)
three comparisons, each as a relative error ``max|ours - own| / max(1, max|own|)``:

    (a) attention   logits under the layout (block-prefix attention)  vs  the model's eager
                    attention under the equivalent dense additive mask (per layer type)
    (b) inner head  the inner loop's logits at its target positions     vs  the same positions
                    of the model's own forward under the inner loop's mask
    (c) outer loss  `step.outer_loss` (with the model's auxiliary loss)  vs  the model's own loss
                    (its ``loss_function`` on its logits, plus its router load-balancing term)

The inner loop runs one SGD step at lr 0 on fresh fast weights (B = 0), so the model is the
base model throughout. Tolerance by weight dtype: 1e-4 (float32), 1e-2 (float16), 4e-2
(bfloat16). Beyond it: a `UserError` naming the family, the comparison and the error; within
it: one log line. The model is left as it was: attention implementation, hooks, train/eval mode.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from . import models
from .errors import UserError
from .masks import AttentionLayout, dense_mask

logger = logging.getLogger("focusft")

PROBE_ROWS = [[(6, 0), (5, 1), (7, 0), (6, 1)], [(8, 0), (7, 1)]]  # (tokens, is_loss) runs
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def probe_batch(vocab_size: int, device, seed: int = 0) -> dict:
    """A collated probe batch (focusft.data.Collator's keys), right-padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = [sum(n for n, _ in runs) for runs in PROBE_ROWS]
    S, B = max(lengths), len(PROBE_ROWS)
    ids = torch.randint(0, vocab_size, (B, S), generator=g)
    loss_mask = torch.zeros(B, S, dtype=torch.bool)
    for b, runs in enumerate(PROBE_ROWS):
        pos = 0
        for n, is_loss in runs:
            loss_mask[b, pos:pos + n] = bool(is_loss)
            pos += n
    attention_mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * attention_mask
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(loss_mask[:, 1:], ids[:, 1:], -100)
    batch = {"input_ids": ids, "loss_mask": loss_mask, "attention_mask": attention_mask,
             "labels": labels, "sample_ids": torch.arange(B)}
    return {k: v.to(device) for k, v in batch.items()}


def _layout(batch, attention: str) -> AttentionLayout:
    from .step import batch_layout

    return batch_layout({k: v.cpu() for k, v in batch.items()}, attention)


def _allowed(layout: AttentionLayout, device) -> torch.Tensor:
    lo, hi = layout.key_ranges()
    return dense_mask(lo, hi)[:, 0].to(device)  # (B, S, S); pad rows see nothing


@contextlib.contextmanager
def _as_is(model):
    """Restore the attention implementation and train/eval mode on exit; eval inside."""
    impl, training = model.config._attn_implementation, model.training
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(impl)
        model.train(training)


def _own_forward(model, batch, allowed):
    """The model's own eager forward under the dense mask: (logits, loss incl. auxiliary)."""
    model.set_attn_implementation("eager")
    mask = models.eager_mask(model, allowed, dtype=next(model.parameters()).dtype)
    real = batch["attention_mask"].bool()
    labels = torch.where(batch["loss_mask"] & real, batch["input_ids"], -100)
    out = model(input_ids=batch["input_ids"], attention_mask=mask, labels=labels,
                output_router_logits=False, use_cache=False)
    loss = out.loss
    aux = models.aux_loss(model)
    if aux is not None:
        router = models.decoder(model)(input_ids=batch["input_ids"], attention_mask=mask,
                                       output_router_logits=True, use_cache=False).router_logits
        loss = loss + aux.batch(router, batch["attention_mask"])
    return out.logits, loss


def _rel(ours: torch.Tensor, own: torch.Tensor) -> float:
    ours, own = ours.detach().float(), own.detach().float()
    return float((ours - own).abs().max() / own.abs().max().clamp(min=1.0))


def _verdict(model, errors: dict[str, float], tol: float, where: str) -> None:
    name = f"{type(models.unwrap(model)).__name__} (model_type {models.family_name(model)!r})"
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        detail = "; ".join(f"{k} differs by {v:.3g}" for k, v in bad.items())
        raise UserError(
            f"{where}model self-check failed for {name}: {detail} (relative error against the "
            f"model's own eager forward under the same dense mask; tolerance {tol:g} for "
            f"{next(model.parameters()).dtype}). Training it with focusft would be silently "
            "wrong; see README 'Supported models'. --skip_model_check true skips this check "
            "(unsafe).")
    logger.warning("focusft model check: %s exact (%s; tolerance %g)", name,
                   ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), tol)


def check_attention(model, attention: str = "glm", where: str = "") -> dict[str, float]:
    """(a) only: the layout path vs the eager dense mask (for eval / diagnose)."""
    models.check_supported(model)
    errors = _attention_errors(model, attention)
    _verdict(model, errors, _tolerance(model), where)
    return errors


def check_model(model, cfg, where: str = "") -> dict[str, float]:
    """(a), (b) and (c) for a training run configured by `cfg` (a FocusConfig)."""
    models.check_supported(model)
    errors = _attention_errors(model, cfg.attention)
    errors.update(_check_losses(model, cfg))
    _verdict(model, errors, _tolerance(model), where)
    return errors


def _tolerance(model) -> float:
    return TOLERANCE.get(next(model.parameters()).dtype, 1e-4)


def _attention_errors(model, attention: str) -> dict[str, float]:
    from . import attention as attn

    batch = probe_batch(_vocab(model), own_device(model))
    layout = _layout(batch, attention)
    real = batch["attention_mask"].bool()
    with _as_is(model), models.prepared(model), torch.no_grad():
        attn.use_focusft_attention(model)
        try:
            ours = model(input_ids=batch["input_ids"], layout=layout, use_cache=False).logits
        except NotImplementedError as err:  # an attention feature the layout path lacks
            raise UserError(f"{type(models.unwrap(model)).__name__} (model_type "
                            f"{models.family_name(model)!r}) is not supported by focusft: {err}. "
                            "See README 'Supported models'.") from None
        own, _ = _own_forward(model, batch, _allowed(layout, real.device))
    return {"attention logits": _rel(ours[real], own[real])}


def _check_losses(model, cfg) -> dict[str, float]:
    from . import attention as attn
    from .fast_weights import FastWeights
    from .inner import InnerConfig
    from .step import BilevelStep, arm_inner, outer_loss

    batch = probe_batch(_vocab(model), next(model.parameters()).device)
    layout = _layout(batch, cfg.attention)
    errors, captured = {}, []
    with _as_is(model), models.prepared(model):
        attn.use_focusft_attention(model)
        fast = step = None
        try:
            if cfg.bilevel:
                fast = FastWeights(model, rank=2, alpha=2.0, layer_fraction=cfg.fast_layer_fraction,
                                   target_modules=tuple(cfg.fast_target_modules))
                step = BilevelStep(model, fast, InnerConfig(steps=1, lr=0.0, clip=0.0,
                                                            objective=cfg.inner_objective))
                head = step.head
                step.head = lambda h: captured.append(head(h)) or captured[-1]
                arm_inner(fast, step, batch, [0, 1], cfg.inner_objective)
                job_targets = step.job.targets
            with torch.no_grad():
                ours_loss, _ = outer_loss(model, batch, layout, None)
        finally:
            if fast is not None:
                fast.strip()
                step.remove()
        with torch.no_grad():
            own_logits, own_loss = _own_forward(model, batch, _allowed(layout, own_device(model)))
            if captured:
                inner_layout = layout if cfg.inner_objective == "response" else _layout(batch, "causal")
                inner_logits = own_logits if inner_layout is layout else \
                    _own_forward(model, batch, _allowed(inner_layout, own_device(model)))[0]
                t = job_targets
                errors["inner-loop logits"] = _rel(captured[0], inner_logits[t.rows, t.cols])
    errors["outer loss"] = _rel(ours_loss.reshape(1), own_loss.reshape(1))
    return errors


def own_device(model):
    return next(model.parameters()).device


def _vocab(model) -> int:
    return min(models.unwrap(model).config.vocab_size, model.get_input_embeddings().num_embeddings)
