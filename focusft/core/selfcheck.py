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
(bfloat16); in half precision twice the model's own implementation noise when that is larger
(its own SDPA vs its own eager attention under the same dense mask: a 12-layer bfloat16
Mixtral with random weights differs from itself by 0.066). For a half-precision
mixture-of-experts model the 90th percentile of the per-position errors is compared instead
of their maximum (a rounding can flip one token's expert choice; a real mismatch moves most
positions). Beyond the tolerance: a `UserError` naming the family, the comparison and the
error; within it: one log line. The model is left as it was: attention implementation,
hooks, attributes, train/eval mode.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from focusft.core import models
from focusft.errors import UserError
from focusft.core.masks import AttentionLayout, dense_mask

logger = logging.getLogger("focusft")

PROBE_ROWS = [[(6, 0), (5, 1), (7, 0), (6, 1)], [(8, 0), (7, 1)]]  # (tokens, is_loss) runs
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
NOISE_FACTOR = 2.0


def probe_batch(vocab_size: int, device, seed: int = 0) -> dict:
    """A collated probe batch (focusft.data.pipeline.Collator's keys), right-padded."""
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


def _layout(batch, attention: str, kernel: str = "sdpa") -> AttentionLayout:
    from focusft.core.step import batch_layout

    layout = batch_layout({k: v.cpu() for k, v in batch.items()}, attention)
    return layout.with_block_mask(batch["input_ids"].device) if kernel == "flex" else layout


def _allowed(layout: AttentionLayout, device) -> torch.Tensor:
    lo, hi = layout.key_ranges()
    return dense_mask(lo, hi)[:, 0].to(device)  # (B, S, S); pad rows see nothing


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs")


@contextlib.contextmanager
def _as_is(model):
    """Eval mode inside; on exit the attention implementation, train/eval mode, hooks and
    attributes are as they were (what switching to focusft's attention installs is removed)."""
    impl, training = model.config._attn_implementation, model.training
    modules = list(model.modules())
    hooks = [{name: set(getattr(m, name)) for name in _HOOKS} for m in modules]
    attrs = [set(vars(m)) for m in modules]
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(impl)
        model.train(training)
        for m, had_hooks, had_attrs in zip(modules, hooks, attrs):
            for name in _HOOKS:
                for key in set(getattr(m, name)) - had_hooks[name]:
                    del getattr(m, name)[key]  # what RemovableHandle.remove does
                    for flags in _HOOK_FLAGS:
                        getattr(m, flags).pop(key, None)
            for attr in set(vars(m)) - had_attrs:
                delattr(m, attr)


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


def _rel(ours: torch.Tensor, own: torch.Tensor, robust: bool = False) -> float:
    """max|ours - own| / max(1, max|own|) over (position, vocab); `robust`: the 90th percentile of
    the per-position maxima instead (half-precision MoE: a rounding can flip one token's experts)."""
    ours, own = ours.detach().float(), own.detach().float()
    per_position = (ours - own).abs().reshape(-1, ours.shape[-1]).amax(-1)
    error = per_position.quantile(0.9) if robust and per_position.numel() > 1 else per_position.max()
    return float(error / own.abs().max().clamp(min=1.0))


def _robust(model) -> bool:
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    return half and any(models.is_moe(m) for layer in models.decoder_layers(model) for m in layer.children())


def _verdict(model, errors: dict[str, float], tol: float, where: str) -> None:
    name = f"{type(models.unwrap(model)).__name__} (model_type {models.family_name(model)!r})"
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        detail = "; ".join(f"{k} differs by {v:.3g}" for k, v in bad.items())
        raise UserError(
            f"{where}model self-check failed for {name}: {detail} (relative error against the "
            f"model's own eager forward under the same dense mask; tolerance {tol:.3g} for "
            f"{next(model.parameters()).dtype}). Training it with focusft would be silently "
            "wrong; see README 'Supported models'. --skip_model_check true skips this check "
            "(unsafe).")
    logger.warning("focusft model check: %s exact (%s; tolerance %.3g)", name,
                   ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), tol)


def check_attention(model, attention: str = "glm", where: str = "") -> dict[str, float]:
    """(a) only: the layout path vs the eager dense mask (for eval / diagnose)."""
    models.check_supported(model)
    errors, noise = _attention_errors(model, attention)
    _verdict(model, errors, _tolerance(model, noise), where)
    return errors


def check_model(model, cfg, where: str = "") -> dict[str, float]:
    """(a), (b) and (c) for a training run configured by `cfg` (a FocusConfig)."""
    models.check_supported(model)
    errors, noise = _attention_errors(model, cfg.attention, cfg.attention_kernel)
    errors.update(_check_losses(model, cfg))
    _verdict(model, errors, _tolerance(model, noise), where)
    return errors


def _tolerance(model, noise: float) -> float:
    """The dtype's floor, or twice the model's own implementation noise if larger."""
    return max(TOLERANCE.get(next(model.parameters()).dtype, 1e-4), NOISE_FACTOR * noise)


def _own_noise(model, batch, allowed, real) -> float:
    """Half precision: how far the model's own SDPA and eager attention differ under the same
    dense mask (0 in float32, or when the model has no SDPA attention)."""
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float16, torch.bfloat16):
        return 0.0
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):
        return 0.0
    mask = models.eager_mask(model, allowed, dtype=dtype)
    sdpa = model(input_ids=batch["input_ids"], attention_mask=mask, output_router_logits=False,
                 use_cache=False).logits
    eager, _ = _own_forward(model, batch, allowed)
    return _rel(sdpa[real], eager[real], _robust(model))


def _attention_errors(model, attention: str, kernel: str = "sdpa") -> tuple[dict[str, float], float]:
    from focusft.core import attention as attn

    batch = probe_batch(_vocab(model), _device(model))
    layout = _layout(batch, attention, kernel)
    real = batch["attention_mask"].bool()
    with _as_is(model), torch.no_grad():
        attn.use_focusft_attention(model)
        try:
            ours = model(input_ids=batch["input_ids"], layout=layout, use_cache=False).logits
        except NotImplementedError as err:  # an attention feature the layout path lacks
            raise UserError(f"{type(models.unwrap(model)).__name__} (model_type "
                            f"{models.family_name(model)!r}) is not supported by focusft: {err}. "
                            "See README 'Supported models'.") from None
        own, _ = _own_forward(model, batch, _allowed(layout, real.device))
        noise = _own_noise(model, batch, _allowed(layout, real.device), real)
    return {"attention logits": _rel(ours[real], own[real], _robust(model))}, noise


def _check_losses(model, cfg) -> dict[str, float]:
    from focusft.core import attention as attn
    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, outer_loss

    batch = probe_batch(_vocab(model), next(model.parameters()).device)
    layout = _layout(batch, cfg.attention, cfg.attention_kernel)
    errors, captured = {}, []
    with _as_is(model):
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
                arm_inner(fast, step, batch, [0, 1], cfg.inner_objective, cfg.attention_kernel)
                job_targets = step.job.targets
            with torch.no_grad():
                ours_loss, _ = outer_loss(model, batch, layout, None)
        finally:
            if fast is not None:
                fast.strip()
                step.remove()
        with torch.no_grad():
            own_logits, own_loss = _own_forward(model, batch, _allowed(layout, _device(model)))
            if captured:
                inner_layout = layout if cfg.inner_objective == "response" else \
                    _layout(batch, "causal", cfg.attention_kernel)
                inner_logits = own_logits if inner_layout is layout else \
                    _own_forward(model, batch, _allowed(inner_layout, _device(model)))[0]
                t = job_targets
                errors["inner-loop logits"] = _rel(captured[0], inner_logits[t.rows, t.cols],
                                                   _robust(model))
    errors["outer loss"] = _rel(ours_loss.reshape(1), own_loss.reshape(1))
    return errors


def _device(model):
    return next(model.parameters()).device


def _vocab(model) -> int:
    return min(models.unwrap(model).config.vocab_size, model.get_input_embeddings().num_embeddings)
