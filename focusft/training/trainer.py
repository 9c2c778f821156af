"""`FocusTrainer`: transformers' Trainer with the FocuSFT step wired into `compute_loss`.

The engine (Trainer + Accelerate) keeps the loop, the optimizer, the schedule, mixed precision,
gradient accumulation, distribution, checkpointing and the loggers. This class only:

* builds the attention layout of each batch (GLM turn blocks, or causal);
* for ``method=focusft``: resets the per-sample fast weights (A_n seeded by the run seed, the
  epoch and the sample's id, so a sample draws the same memory alone, in a batch, on any rank
  and after a resume) and arms the inner loop, which runs inside the forward pass;
* normalises the outer loss by the global count of loss tokens of the optimizer step
  (``num_items_in_batch``, summed over accumulation steps and ranks): the loss is the token mean
  over everything that contributes to one update, whatever the split into ranks and micro-batches;
* logs inner losses per inner step (``inner_loss_1`` is the base model's loss, before any
  update), inner gradient norms, skipped inner updates and tokens/s, and warns when the outer
  loss sits far below the base loss (the fast weights leaking the label) or far above it
  (``inner_harm``: the inner updates overshoot and make the predictions worse).

``inner_harm`` is the outer loss with the adapted fast weights over the same loss without them,
on the same micro-batches. With the ``response`` objective the loss without them is
``inner_loss_1`` (the inner loop's first loss is the base model's own loss on the outer
targets, under the outer mask), so it costs nothing; with ``context`` one extra no-grad forward
of the first micro-batch of each logging window measures it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from focusft.training import adapters
from focusft.core import attention, sequence_parallel  # attention: registers "focusft"
from focusft.training.config import FocusConfig
from focusft.data.pipeline import Collator
from focusft.training.faults import NonFiniteLossGuard, atomic_checkpoint
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.training.inputs import COLUMNS, as_focus_config, prepare_dataset, resolve_model
from focusft.core.step import (
    BilevelStep,
    arm_inner,
    batch_layout,
    logits_loss,
    outer_logits,
    outer_loss,
)

logger = logging.getLogger("focusft")


def sample_seed(run_seed: int, epoch: int, sample_id: int) -> int:
    """Seed of one sample's fast-weight draw: independent of batching, rank and resume.

    >>> sample_seed(0, 0, 1) != sample_seed(0, 1, 0)
    True
    """
    return (run_seed * 1_000_003 + epoch) * 2_147_483_647 + sample_id & 0x7FFF_FFFF_FFFF_FFFF


def inner_config(cfg: FocusConfig) -> InnerConfig:
    return InnerConfig(steps=cfg.inner_steps, lr=cfg.inner_lr, clip=cfg.inner_clip,
                       clip_mode=cfg.inner_clip_mode, objective=cfg.inner_objective)


def make_fast_weights(model, cfg: FocusConfig) -> FastWeights:
    return FastWeights(model, rank=cfg.fast_rank, alpha=cfg.fast_alpha, dropout=cfg.fast_dropout,
                       layer_fraction=cfg.fast_layer_fraction,
                       target_modules=tuple(cfg.fast_target_modules))


def attach_fast_weights(model, cfg: FocusConfig) -> tuple[FastWeights, BilevelStep]:
    fast = make_fast_weights(model, cfg)
    return fast, BilevelStep(model, fast, inner_config(cfg))


def sequence_parallel_group(model, args: FocusConfig):
    """This rank's sequence-parallel group for ``--sp_size`` > 1 (None for 1); the model's
    attention heads must divide by it."""
    if args.sp_size == 1:
        return None
    from focusft.errors import UserError

    heads = getattr(model.config.get_text_config(), "num_attention_heads", None)
    if heads is None or heads % args.sp_size:
        raise UserError(f"--sp_size {args.sp_size}: the model has {heads} attention heads, which "
                        f"{args.sp_size} does not divide; choose an sp size that divides {heads}")
    from focusft.core import models

    if models.aux_loss(model) is not None:
        raise UserError(f"--sp_size {args.sp_size}: this model adds a router load-balancing loss, "
                        "which sequence parallelism does not split yet; use --sp_size 1")
    _ = args.device  # forms the process group under a launcher
    return sequence_parallel.groups(args.sp_size)


def same_batches_per_group(loader, sp_size: int) -> None:
    """Make accelerate's batch sharding give every rank of an SP group (``sp_size`` consecutive
    ranks) the same batches: shard over the groups, not over the ranks."""
    shard = getattr(loader, "batch_sampler", None)
    if shard is None or not hasattr(shard, "num_processes"):
        raise RuntimeError("sequence parallelism needs accelerate's BatchSamplerShard to shard "
                           "the training batches (an iterable dataset is not supported)")
    shard.process_index //= sp_size
    shard.num_processes //= sp_size


def has_accelerator() -> bool:
    """A device torch can pin host memory for (CUDA, XPU, MPS, ...)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def inner_harm(window: dict[str, float], objective: str) -> float | None:
    """Outer loss with the adapted fast weights / without them, over a logging window.

    >>> inner_harm({"outer_loss": 6.0, "inner_loss_1": 2.0}, "response")
    3.0
    >>> inner_harm({"outer_loss": 6.0, "outer_loss_no_fast": 4.0, "_harm_adapted": 2.0}, "context")
    0.5
    """
    if objective == "response":
        adapted, base = window.get("outer_loss"), window.get("inner_loss_1")
    else:
        adapted, base = window.get("_harm_adapted"), window.get("outer_loss_no_fast")
    if adapted is None or base is None or not base > 0:
        return None
    return adapted / base


class StepMeter:
    """Averages per-step statistics between two log lines (tensors read only at log time).

    Under several processes `flush` sums over the ranks first (one all-reduce), so a logged
    value is the mean over every micro-batch of every rank in the window, and tokens/s counts
    the tokens of all ranks: the same numbers one process would log for the same global batch.
    """

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)
        self.tokens, self.since = 0, time.perf_counter()

    def add(self, name: str, value) -> None:
        value = value.detach() if torch.is_tensor(value) else value
        self.sums[name] = self.sums[name] + value
        self.counts[name] += 1

    def flush(self, sum_over_ranks=None) -> dict[str, float]:
        """`sum_over_ranks(tensor)`: the all-reduce (the same names on every rank), or None."""
        names = sorted(self.sums)
        table = torch.tensor([[float(self.sums[k]), self.counts[k]] for k in names] + [[self.tokens, 0]],
                             dtype=torch.float64)
        if sum_over_ranks is not None:
            table = sum_over_ranks(table)
        out = {k: float(table[i, 0] / table[i, 1]) for i, k in enumerate(names)}
        elapsed, tokens = time.perf_counter() - self.since, float(table[-1, 0])
        if tokens and elapsed > 0:
            out["tokens_per_s"] = tokens / elapsed
        self.__init__()
        return out


class FocusTrainer(Trainer):
    """``FocusTrainer(model, args, train_dataset=..., eval_dataset=..., processing_class=...,
    peft_config=...)``, then ``train()`` / ``evaluate()`` / ``predict()`` / ``save_model()``.

    Accepts what TRL's SFTTrainer accepts (see `focusft.training.inputs`): a model or its name, a
    `FocusConfig` or plain ``TrainingArguments``, datasets of chat rows (tokenized and collated
    here). The focusft attention and the fast-weight hooks are on the model only inside
    ``train`` / ``evaluate`` / ``predict``: outside them it is the plain model it was.
    """

    args: FocusConfig

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None, **kwargs):
        args = as_focus_config(args)
        model, processing_class = resolve_model(model, processing_class, args)
        if peft_config is None and not adapters.is_peft_model(model):  # an adapter continues as is
            peft_config = adapters.lora_config(args)
        if peft_config is not None:
            model = adapters.wrap(model, peft_config, args)
        adapters.keep_4bit_differentiable(model)
        train_dataset = prepare_dataset(train_dataset, processing_class, args, "train_dataset")
        eval_dataset = prepare_dataset(eval_dataset, processing_class, args, "eval_dataset")
        if data_collator is None:
            data_collator = Collator(pad_id=_pad_id(processing_class),
                                     pack_to=args.max_length if args.packing else None,
                                     pad_to_multiple_of=args.sp_size if args.sp_size > 1 else None)
        self.sp = sequence_parallel_group(model, args)
        self.fast = self.bilevel = None
        self._attached, self._restore_attention = 0, None
        # Fast weights first: a model that cannot host them fails before Trainer makes output_dir.
        self._attach(model, args)
        self._detach(model)
        super().__init__(model=model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        self.loss_guard = NonFiniteLossGuard()
        self.add_callback(self.loss_guard)
        # Our labels are already shifted by the collator and our compute_loss normalises by
        # the global token count, so count every label and pass the count in.
        self._loss_shifts_labels = False
        self.model_accepts_loss_kwargs = True
        self.meter = StepMeter()
        self._leak_windows = self._harm_windows = 0
        self._harm_probe_due = True  # context objective: measure one micro-batch per window
        self._focus_eval: torch.Tensor | None = None  # (CE sum, tokens) while evaluating
        self._want_logits = False  # a prediction step that returns the logits

    # -- the focusft attention and fast weights, only while the Trainer runs the model -------
    def _attach(self, model, args) -> None:
        if self._attached == 0:
            self._restore_attention = attention.use_focusft_attention(model)
            if args.bilevel:
                if self.fast is None:
                    self.fast = make_fast_weights(model, args)
                self.fast.install()
                self.bilevel = BilevelStep(model, self.fast, inner_config(args))
        self._attached += 1

    def _detach(self, model) -> None:
        self._attached -= 1
        if self._attached == 0:
            if self.fast is not None:
                self.fast.strip()
                self.bilevel.remove()
            self._restore_attention()

    @contextlib.contextmanager
    def _focus_mode(self):
        model = self.model
        self._attach(model, self.args)
        try:
            yield
        finally:
            self._detach(model)

    def train(self, *args, **kwargs):
        with self._focus_mode():
            return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._focus_mode():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._focus_mode():
            return super().predict(*args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """The card ``push_to_hub`` uploads: focusft's (method, base, data, config, metrics, loading)."""
        if not self.is_world_process_zero():
            return
        from focusft.training.model_card import model_card

        metrics = {k: v for h in self.state.log_history for k, v in h.items()
                   if k.startswith("eval_") or k == "train_loss"}  # the last value of each
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "README.md").write_text(model_card(self.args, metrics, adapters.is_peft_model(self.model)))
        (out / "focusft.yaml").write_text(self.args.to_yaml())

    def _set_signature_columns_if_needed(self):
        # remove_unused_columns=True keeps what our collator reads (not the model's arguments).
        if self._signature_columns is None:
            self._signature_columns = list(COLUMNS)

    def _get_dataloader(self, *args, **kwargs):
        """The Trainer's. Without an accelerator there is no device memory to pin batches for
        (torch warns about it for every loader): the loaders are built unpinned then, and
        --dataloader_pin_memory itself (saved in focusft.yaml) is left as it was."""
        pin = self.args.dataloader_pin_memory
        if pin and not has_accelerator():
            self.args.dataloader_pin_memory = False
        try:
            return super()._get_dataloader(*args, **kwargs)
        finally:
            self.args.dataloader_pin_memory = pin

    def get_train_dataloader(self):
        """The Trainer's; under sequence parallelism every rank of a group gets the same batches."""
        loader = super().get_train_dataloader()
        if self.sp is not None:
            same_batches_per_group(loader, self.sp.size)
        return loader

    def training_step(self, model, inputs, num_items_in_batch=None):
        try:
            with sequence_parallel.active(self.sp):  # forward, and backward's recomputation
                loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            if self.fast is not None:  # outside a step the model is the base model
                self.fast.clear()
        self.loss_guard.observe(loss)
        return loss

    def _save_checkpoint(self, model, trial):
        atomic_checkpoint(self, functools.partial(super()._save_checkpoint, model, trial), trial)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        layout = batch_layout(inputs, self.args.attention, self.args.attention_kernel)
        whole, sp = inputs, sequence_parallel.current()  # set by training_step only
        if sp is not None:  # this rank's shard of the sequence; the layout is the whole batch's
            inputs = sp.shard(whole)
            if num_items_in_batch is not None:  # counted on every rank of the group
                num_items_in_batch = num_items_in_batch / sp.size
        base = None
        if self.bilevel is not None and self._attached:
            if model.training and self._harm_probe_due and self.args.inner_objective == "context":
                base = self._loss_without_fast_weights(model, inputs, layout)
            self._prepare_inner(whole, model.training, sp)
        outputs = {}
        if return_outputs and self._want_logits:  # (B, P, V): loss positions only
            logits, kept, aux = outer_logits(model, inputs, layout)
            loss, n_tokens = logits_loss(logits, kept, num_items_in_batch, aux)
            outputs["logits"] = logits
        else:  # chunk by chunk: never all the loss positions' logits at once
            loss, n_tokens = outer_loss(model, inputs, layout, num_items_in_batch)
        if model.training:
            self._record(inputs, loss, n_tokens, num_items_in_batch, base)
        elif self._focus_eval is not None:
            self._eval_with_inner_loop(model, inputs, layout)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages; we want the global sum
        return (loss, {"loss": loss, **outputs}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """As the Trainer's; logits come only at the loss positions, so labels are cut to match.

        ``predictions[b, j]`` is the distribution of ``label_ids[b, j]`` (labels are already
        shifted: the label of a position is the next token). Logits are materialised only when
        they are returned; a loss-only step takes the loss chunk by chunk.
        """
        self._want_logits = not prediction_loss_only
        try:
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        finally:
            self._want_logits = False
        if logits is not None and torch.is_tensor(labels):
            labels = labels[:, (labels != -100).any(0)]
        return loss, logits, labels

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's loop, plus ``<prefix>_focus_loss`` (the loss with the inner loop active)."""
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self.bilevel is not None and self.args.eval_inner_loop:
            self._focus_eval = torch.zeros(2, device=self.args.device)  # (CE sum, tokens)
        try:
            output = super().evaluation_loop(*args, **kwargs)
            totals = self._focus_eval
        finally:
            self._focus_eval = None
        if totals is not None:
            totals = self.accelerator.reduce(totals, reduction="sum")
            output.metrics[f"{prefix}_focus_loss"] = float(totals[0] / totals[1].clamp(min=1))
        return output

    def _eval_with_inner_loop(self, model, inputs, layout) -> None:
        """Outer loss after the inner loop adapted each eval sample's fast weights (seeded by id)."""
        seeds = [sample_seed(self.args.seed, 0, int(s)) for s in inputs["sample_ids"].tolist()]
        arm_inner(self.fast, self.bilevel, inputs, seeds, self.args.inner_objective,
                  self.args.attention_kernel)
        try:
            loss, n_tokens = outer_loss(model, inputs, layout, None)
        finally:
            self.fast.clear()
        self._focus_eval += torch.stack([loss.detach() * n_tokens, n_tokens.to(loss.dtype)])

    def _prepare_inner(self, inputs: dict, training: bool, sp=None) -> None:
        if not training:  # evaluation measures the model that is saved: no fast weights
            self.fast.clear()
            return
        epoch = int(math.floor(self.state.epoch or 0))
        seeds = [sample_seed(self.args.seed, epoch, int(s)) for s in inputs["sample_ids"].tolist()]
        arm_inner(self.fast, self.bilevel, inputs, seeds, self.args.inner_objective,
                  self.args.attention_kernel, sp)

    def _loss_without_fast_weights(self, model, inputs, layout) -> torch.Tensor:
        """The outer loss of this micro-batch by the model alone (no grad, RNG untouched)."""
        self._harm_probe_due = False
        self.fast.clear()
        device = inputs["input_ids"].device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            loss, n_tokens = outer_loss(model, inputs, layout, None)
        return self._whole_mean(loss.detach() * n_tokens, n_tokens)

    def _whole_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """total / count of this micro-batch; under sequence parallelism, both summed over the
        group first (a shard holds part of each sequence's tokens)."""
        if (sp := sequence_parallel.current()) is not None:
            total, count = sp.all_reduce(torch.stack([total, count.to(total.dtype)]))
        return total / count.clamp(min=1)

    def _record(self, inputs, loss, n_tokens, num_items, base=None) -> None:
        self.meter.tokens += int(inputs["attention_mask"].sum())
        own = None
        if num_items is not None:  # this micro-batch's own token mean, for the leak check
            own = self._whole_mean(loss.detach() * num_items, n_tokens)
            self.meter.add("outer_loss", own)
        if base is not None and own is not None:  # the context objective's harm probe
            self.meter.add("outer_loss_no_fast", base)
            self.meter.add("_harm_adapted", own)
        stats = self.bilevel.stats if self.bilevel is not None else None
        if stats is None:
            return
        for k, (inner_loss, norm) in enumerate(zip(stats.losses, stats.grad_norms), start=1):
            self.meter.add(f"inner_loss_{k}", inner_loss)
            self.meter.add(f"inner_grad_norm_{k}", norm)
        self.meter.add("inner_skipped", stats.skipped)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            window = self.meter.flush(self._sum_over_ranks)  # the same steps on every rank
            harm = inner_harm(window, self.args.inner_objective)
            logs.update({k: round(v, 4) for k, v in window.items() if not k.startswith("_")})
            if harm is not None:
                logs["inner_harm"] = round(harm, 4)
            self._harm_probe_due = True
            self._check_leak(logs)
            self._check_harm(logs)
        super().log(logs, *args, **kwargs)

    def _check_harm(self, logs: dict) -> None:
        harm = logs.get("inner_harm")
        if harm is None or self.args.inner_steps == 0:
            return
        self._harm_windows = self._harm_windows + 1 if harm > self.args.harm_warn_ratio else 0
        if self._harm_windows == self.args.harm_warn_patience:
            logger.warning(
                "focusft: the inner loop makes the outer loss worse: with the adapted fast weights "
                "it is %.3g x the loss without them (inner_harm, above --harm_warn_ratio %.2g) for "
                "%d logging windows, so the inner updates overshoot (--inner_lr %g, --inner_steps "
                "%d) and the SFT step trains against wrecked predictions. Lower --inner_lr (e.g. "
                "to a tenth) or use fewer --inner_steps.", harm, self.args.harm_warn_ratio,
                self._harm_windows, self.args.inner_lr, self.args.inner_steps)

    def _sum_over_ranks(self, table: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return table
        summed = self.accelerator.reduce(table.to(self.args.device, torch.float32), reduction="sum")
        return summed.double().cpu()

    def _check_leak(self, logs: dict) -> None:
        base, outer = logs.get("inner_loss_1"), logs.get("outer_loss")
        # Only the response objective's first inner loss is the base model's own loss on the
        # same tokens as the outer loss (the context objective's is on other tokens).
        if base is None or outer is None or self.args.inner_steps == 0 \
                or self.args.inner_objective != "response":
            return
        leaking = outer < self.args.leak_warn_ratio * base
        self._leak_windows = self._leak_windows + 1 if leaking else 0
        if self._leak_windows == self.args.leak_warn_patience:
            logger.warning(
                "focusft: the outer loss (%.3g) has stayed below %.2g x the base model's own loss "
                "(inner_loss_1 = %.3g) for %d logging windows: the inner loop is likely writing "
                "the answer into the fast weights (label leakage), so the base model is not "
                "learning the task. Consider --inner_objective context, a smaller --inner_lr or "
                "fewer --inner_steps.", outer, self.args.leak_warn_ratio, base, self._leak_windows)
