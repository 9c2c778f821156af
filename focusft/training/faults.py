"""Faults during a run: interrupts, crashes mid-save, and a loss that stops being a number.

Three small pieces, wired into `FocusTrainer` and `focusft.training.run`:

* `atomic_checkpoint`: a Trainer checkpoint is written into ``output_dir/_staging-checkpoint-N/``
  and renamed to ``output_dir/checkpoint-N`` only once every file is on disk, so a crash or a
  kill mid-save never leaves a ``checkpoint-N`` that ``--resume_from_checkpoint last`` would pick
  up half-written (transformers 5.24's Trainer writes straight into the final folder).
* `GracefulStop`: a TrainerCallback plus a context manager. While training, SIGINT / SIGTERM
  only set a flag; at the end of the current optimizer step the callback asks the Trainer to
  save a checkpoint and stop, and `train_run` raises `TrainingInterrupted`, which the CLI turns
  into exit status 130 (SIGINT) or 143 (SIGTERM) and a line saying how to resume. A second
  signal aborts at once. The previous handlers are restored on the way out.
* `NonFiniteLossGuard`: every micro-batch's outer loss is checked (as a tensor flag, read once
  per optimizer step, right before the optimizer would apply the gradient); a NaN / inf loss
  raises `NonFiniteLoss` before the weights are touched, so no checkpoint and no ``final/``
  carries the damage.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING_PREFIX = "_staging-"  # "_*": never uploaded by push_to_hub


class TrainingFault(Exception):
    """A run that stopped for a reason the user must act on; the CLI prints it, no traceback."""

    exit_code = 1


class TrainingInterrupted(TrainingFault):
    def __init__(self, signum: int, checkpoint: str | None, output_dir: str):
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = (f"a resumable checkpoint is in {checkpoint}" if checkpoint
                 else "no checkpoint could be written")
        super().__init__(
            f"stopped by {name} after the current step; {where}. Resume with the same command and "
            f"--resume_from_checkpoint last --output_dir {output_dir}")


class NonFiniteLoss(TrainingFault):
    exit_code = 3

    def __init__(self, value: float, step: int, epoch: float, last_checkpoint: str | None):
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                else "no checkpoint was written")
        super().__init__(
            f"the training loss became {value} at optimizer step {step + 1} (epoch {epoch:.2f}); "
            f"stopped before applying that update, so nothing non-finite was saved ({kept}; no "
            "final/ model). Usual causes: a learning rate far too high (--learning_rate), fp16 "
            "overflow (try --bf16 true), or an inner loop that diverges (lower --inner_lr, or "
            "--inner_clip 1.0).")


# --------------------------------------------------------------------------------------------
# Atomic checkpoints
# --------------------------------------------------------------------------------------------


def atomic_checkpoint(trainer, save, trial=None) -> None:
    """Run Trainer._save_checkpoint (`save`) into a staging folder, then rename it into place.

    Every rank writes into the same staging path (its own rng_state_<rank>.pth included); the
    main process renames once all ranks are done.
    """
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    staging = os.path.join(run_dir, STAGING_PREFIX + name)
    final = os.path.join(run_dir, name)
    if trainer.args.should_save and os.path.isdir(staging):  # left over by a crash
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer._get_output_dir = lambda trial=None: staging  # instance attribute shadows the method
    try:
        save()
    finally:
        del trainer._get_output_dir
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        _fix_best_pointer(trainer, run_dir, staging, os.path.join(staging, name))
        _replace_dir(os.path.join(staging, name), final)
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()


def _fix_best_pointer(trainer, run_dir: str, staging: str, staged: str) -> None:
    """Inside staging the Trainer could not see earlier checkpoints: point `best` at run_dir."""
    best_step = trainer.state.best_global_step
    if not best_step:
        return
    best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
    if best_step == trainer.state.global_step or os.path.isdir(best):
        trainer.state.best_model_checkpoint = best
        state_file = os.path.join(staged, "trainer_state.json")
        if os.path.exists(state_file):
            trainer.state.save_to_json(state_file)


def _replace_dir(src: str, dst: str) -> None:
    """Rename src to dst; an existing dst (a re-save of the same step) is swapped out first."""
    if os.path.exists(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


# --------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: finish the step, save, stop
# --------------------------------------------------------------------------------------------


class GracefulStop(TrainerCallback):
    """Use as ``with GracefulStop() as stop: trainer.add_callback(stop); trainer.train()``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals only reach main
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: give up on the clean stop
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum

    def on_step_end(self, args, state, control, **kwargs):
        # Every rank must stop at the same step, whichever ranks the signal reached.
        self.signum = _max_over_ranks(self.signum or 0, args) or None
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


def _max_over_ranks(value: int, args) -> int:
    """max(value) over data-parallel ranks (one tiny all-reduce; the value itself when alone)."""
    if args.world_size <= 1 or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], device=args.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def checkpoint_of(output_dir: str, step: int) -> str | None:
    path = Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    return str(path) if path.is_dir() else None


# --------------------------------------------------------------------------------------------
# Non-finite loss
# --------------------------------------------------------------------------------------------


class NonFiniteLossGuard(TrainerCallback):
    """`observe(loss)` after each micro-batch; raises `NonFiniteLoss` before the optimizer step."""

    def __init__(self):
        self._bad: torch.Tensor | None = None  # first non-finite value of this step, else None
        self._flag: torch.Tensor | None = None

    def observe(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        if self._flag is None:
            self._flag, self._bad = bad, loss
        else:  # stays on device: no synchronisation per micro-batch
            self._bad = torch.where(self._flag, self._bad, loss)
            self._flag = self._flag | bad

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        flag, value = self._flag, self._bad
        self._flag = self._bad = None
        bad_here = flag is not None and bool(flag)
        if _max_over_ranks(int(bad_here), args):  # every rank stops if any one diverged
            value = value if bad_here else float("nan")
            last = _last_checkpoint(args.output_dir)
            raise NonFiniteLoss(float(value), state.global_step, state.epoch or 0.0, last)
        return control


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
