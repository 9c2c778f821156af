"""`DiagnosticsCallback`: the attention metrics of a fixed probe batch over training time.

Every `every_n_steps` optimizer steps (and once before the first step), the callback measures
the CURRENT base model on the same probe batch: eval mode, `torch.no_grad()`, fast weights
disabled (they hold the last micro-batch's transient memory, which is not part of the model
that is saved), then the model's mode is restored. It then

* appends one JSON line ``{"step", "epoch", "mask", "mean": {...}, "per_layer": {...}}`` to
  `out_path` (a ``.jsonl`` file, or a run directory, which gets ``diagnostics.jsonl``; only on
  the main process), so runs can be compared step by step;
* logs the layer-averaged metrics as ``diag/<metric>`` through the trainer's loggers.

How it reaches the trainer: callbacks receive the model but not the trainer, so the clean way
is ``DiagnosticsCallback(...).attach(trainer)``, which registers the callback and keeps the
trainer to call ``trainer.log`` (which feeds every reporter: TensorBoard, W&B, the console,
``state.log_history``) and to find its fast weights (``trainer.fast``). A callback that was
added with ``callbacks=[...]`` instead still writes `out_path` and appends its logs to
``state.log_history`` (saved in trainer_state.json), but the reporters do not see them.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from transformers import TrainerCallback

from focusft.diagnostics.probe import measure


class DiagnosticsCallback(TrainerCallback):
    """Measure `probe_batch` every `every_n_steps` steps; see the module docstring."""

    def __init__(self, probe_batch: dict, every_n_steps: int, out_path: str, mask: str = "glm",
                 sink_k: int = 4, chunk_size: int | None = None, prefix: str = "diag/",
                 measure_at_start: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.batch, self.every = probe_batch, every_n_steps
        self.out_path = jsonl_path(out_path)
        self.mask, self.sink_k, self.chunk_size = mask, sink_k, chunk_size
        self.prefix, self.measure_at_start = prefix, measure_at_start
        self.trainer = None
        self.fast = None

    def attach(self, trainer) -> "DiagnosticsCallback":
        """Register with `trainer` and log through it (see module docstring)."""
        self.trainer = trainer
        self.fast = getattr(trainer, "fast", None)
        handler = getattr(trainer, "callback_handler", None)
        if handler is None:
            trainer.add_callback(self)
        else:  # one callback per probe mask by design, which `add_callback` warns about
            handler.callbacks.append(self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.measure_at_start and model is not None:
            self._record(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every == 0:
            # trainer.log() clears control.should_log, which would drop this step's loss log.
            should_log = getattr(control, "should_log", False)
            self._record(args, state, model)
            if control is not None:
                control.should_log = should_log

    def evaluate(self, model) -> tuple[dict, dict]:
        """(layer-averaged metrics, per-layer metrics) of `model` on the probe batch now."""
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.batch.items()}
        off = self.fast.disabled() if self.fast is not None else contextlib.nullcontext()
        with off:
            diag = measure(model, batch, self.mask, self.sink_k, self.chunk_size)
        return diag.averaged(), diag.layer_means()

    def _record(self, args, state, model) -> None:
        # Every rank measures (a sharded model's forward is collective); rank 0 writes.
        mean, per_layer = self.evaluate(model)
        logs = {f"{self.prefix}{k}": v for k, v in mean.items() if v == v}  # drop NaN (undefined)
        if state.is_world_process_zero:
            self._append({"step": state.global_step, "epoch": state.epoch, "mask": self.mask,
                          "sink_k": self.sink_k, "mean": _nulls(mean),
                          "per_layer": {k: [_nulls_v(x) for x in v] for k, v in per_layer.items()}})
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": state.global_step})

    def _append(self, record: dict) -> None:
        folder = os.path.dirname(os.path.abspath(self.out_path))
        os.makedirs(folder, exist_ok=True)
        # One write of one whole line: a reader (or a crash) never sees a partial record.
        with open(self.out_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def jsonl_path(out_path: str) -> str:
    """A ``.jsonl`` path is the file; anything else is a run directory holding diagnostics.jsonl.

    >>> jsonl_path("runs/a")
    'runs/a/diagnostics.jsonl'
    """
    return out_path if out_path.endswith(".jsonl") else os.path.join(out_path, "diagnostics.jsonl")


def _nulls_v(x: float) -> float | None:
    return None if x != x else x


def _nulls(values: dict) -> dict:
    return {k: _nulls_v(v) for k, v in values.items()}
