"""A training run, as plain functions: setup (model, tokenizer, data) -> fit -> save -> report.

`train(config)` is what `focusft train` calls. A run directory holds:

    output_dir/
      final/                  the trained model, under every engine: a plain Hugging Face
                              causal LM (safetensors) or, with --use_peft, its LoRA adapter; its
                              tokenizer, focusft.yaml (the resolved configuration, reusable as
                              --config) and README.md (the model card); uploaded as the repo by
                              --push_to_hub
      checkpoint-N/           resumable Trainer checkpoints, if --save_strategy asks for them
      data_report.json        what the data pipeline read, kept, truncated and dropped
      result.json             the full record (metrics, every logged step); `focusft train`
                              prints a short summary of it

The final model is written to a staging directory first and renamed into place, so a
crash never leaves a half-written `final/`. Staging and temporary folders start with ``_``,
which the Trainer's ``push_to_hub`` never uploads.

Under a launcher (torchrun, accelerate, deepspeed, srun) every process runs `train`, but only
the main process writes files: `data_report.json`, `final/` (assembled in one staging folder
that all ranks know), `result.json`. The other processes wait at a barrier. Every rank still
enters the save of final/, because under sharded engines (ZeRO-3, FSDP) gathering the full
state dict is a collective (`focusft.training.full_weights`: final/ is a plain model whatever the
engine's save settings); the main process alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import datasets

from focusft.training import adapters
from focusft.training.config import FocusConfig
from focusft.data.pipeline import Collator, load_rows, tokenize_rows
from focusft.errors import UserError
from focusft.core.distributed import (adopt_slurm, launch_problem, parallelism_problem,
                                      sequence_parallel_problem)
from focusft.core.zero import check_engine, gathered, prepare_deepspeed
from focusft.sources.adapter_dir import is_adapter_dir
from focusft.training.faults import GracefulStop, TrainingInterrupted, checkpoint_of
from focusft.training.full_weights import has_weights, save_full_model
from focusft.training.loading import load_model_and_tokenizer

logger = logging.getLogger("focusft")


def default_rows(split: str, cfg: FocusConfig, tokenizer) -> datasets.Dataset:
    """The embedded default's generated training / held-out rows (see focusft.sources.default)."""
    from focusft.sources import default

    recipe = default.DEFAULT_RECIPE
    if split == "train":
        rows = default.default_training_rows(recipe["train_samples"], seed=cfg.seed,
                                             lengths=recipe["train_lengths"],
                                             n_people=recipe["n_people"], tokenizer=tokenizer,
                                             curriculum=recipe["curriculum"])
    else:
        rows = default.default_eval_rows(recipe["eval_samples"], seed=cfg.seed,
                                         lengths=recipe["eval_lengths"],
                                         n_people=recipe["n_people"], tokenizer=tokenizer)
    return datasets.Dataset.from_list(rows)


def build_dataset(path: str | None, split: str, cfg: FocusConfig, tokenizer):
    rows = default_rows(split, cfg, tokenizer) if path is None else load_rows(path)
    source = path or f"embedded default ({split})"
    dataset, report = tokenize_rows(rows, tokenizer, cfg.max_length, cfg.truncation, source,
                                    empty_think_loss=cfg.empty_think_loss,
                                    num_proc=cfg.dataset_num_proc)
    logger.warning("focusft data %s: %s", source, report.summary())
    return dataset, report, rows


def check_model(model, cfg: FocusConfig) -> None:
    """Refuse what focusft cannot train exactly; then the self-check (focusft.core.selfcheck)."""
    from focusft.core import models, selfcheck

    if cfg.skip_model_check:
        models.check_supported(model)
        logger.warning("focusft: --skip_model_check: the model self-check is skipped (unsafe)")
        return
    with gathered([model]):  # ZeRO-3 (zero.Init): the check runs the model outside the engine
        selfcheck.check_model(model, cfg)


def check_output_dir(cfg: FocusConfig) -> None:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not cfg.resume_from_checkpoint:
        raise UserError(f"--output_dir {out} is not empty; choose a new directory, or resume a "
                        "run there with --resume_from_checkpoint last")


def resume_target(cfg: FocusConfig):
    value = cfg.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if value in ("last", "true", "True"):
        if not has_checkpoint(cfg.output_dir):
            raise UserError(f"--resume_from_checkpoint {value}: no checkpoint-N folder in "
                            f"--output_dir {cfg.output_dir} to resume from")
        return True
    if not Path(value).is_dir():
        raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint directory")
    return value


def has_checkpoint(output_dir: str) -> bool:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(output_dir).is_dir() and get_last_checkpoint(output_dir) is not None


def save_final(trainer, tokenizer, cfg: FocusConfig, metrics: dict | None = None) -> Path:
    """Write the model (or adapter) + tokenizer + focusft.yaml + model card to output_dir/final.

    Atomically: everything goes to ``output_dir/_final-staging`` first (its name starts with
    ``_``, so ``push_to_hub`` skips it), renamed into place once complete. Call it on every rank:
    all of them take part in gathering the weights, the main process alone writes.
    """
    from focusft.training.model_card import model_card

    final = Path(cfg.output_dir) / "final"
    staging = Path(cfg.output_dir) / "_final-staging"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # left over by a crash
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()
    adapter = adapters.is_peft_model(trainer.model) and not cfg.merge_adapter
    if cfg.merge_adapter and adapters.is_peft_model(trainer.model):
        if main:  # the merge copies the full model (refused under ZeRO-3 / FSDP by check_engine)
            adapters.save_merged(trainer.model, str(staging), cfg.rope_scaling)
    else:  # with PEFT: the adapter (adapter_config.json + weights); gathered when sharded
        save_full_model(trainer, str(staging))
    if main:
        if not has_weights(staging):  # never report a folder without the model as one
            raise RuntimeError(f"focusft: no model weights were written to {staging}; final/ "
                               "was not replaced")
        tokenizer.save_pretrained(str(staging))
        (staging / "focusft.yaml").write_text(cfg.to_yaml())
        if adapter and cfg.rope_scaling:  # the base's config.json does not carry it
            from focusft.sources.adapter_dir import ROPE_FILE

            (staging / ROPE_FILE).write_text(json.dumps(cfg.rope_scaling, indent=2) + "\n")
        from focusft.sources.pretrained import SOURCE_FILE, lineage_record

        if (lineage := lineage_record(cfg.model)) is not None:  # e.g. a dequantized GGUF base
            (staging / SOURCE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(cfg, metrics or {}, adapter))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final


def run_metrics(trainer, output) -> dict:
    """Train loss, steps and time, and the last evaluation's metrics."""
    metrics = {"train_loss": output.training_loss, "steps": output.global_step,
               "train_seconds": round(output.metrics.get("train_runtime", 0.0), 1)}
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals:
        metrics.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
    # the logged training rows (loss, outer / inner losses, inner_harm, ...), one per logging step
    metrics["history"] = [{k: v for k, v in h.items() if isinstance(v, (int, float))}
                          for h in trainer.state.log_history if "loss" in h]
    return metrics


def push_final(trainer, final: Path, cfg: FocusConfig) -> None:
    """Upload final/ (model or adapter, tokenizer, focusft.yaml, model card) as the repo root."""
    from transformers.trainer import hf_api

    if trainer.hub_model_id is None:
        trainer.init_hf_repo()
    hf_api().upload_folder(repo_id=trainer.hub_model_id, folder_path=str(final), token=cfg.hub_token,
                           commit_message="focusft: final model", revision=cfg.hub_revision)


def quiet_other_ranks() -> None:
    """Under a launcher every process runs `train`; the run's report lines (data read, model
    check) come from the main process only, the others say only what fails."""
    if int(os.environ.get("RANK", "0")) != 0:
        logger.setLevel(logging.ERROR)


def train(cfg: FocusConfig) -> dict:
    """Set up, fit, save, and (for the embedded default) measure held-out accuracy."""
    from focusft.training.trainer import FocusTrainer

    check_output_dir(cfg)
    adopt_slurm()  # srun without torchrun; before the process group forms (cfg.world_size)
    quiet_other_ranks()
    prepare_deepspeed(cfg)
    if (problem := launch_problem(cfg.world_size, cfg.use_cpu)):  # N processes, N lone copies
        raise UserError(problem)
    if (problem := parallelism_problem(cfg) or sequence_parallel_problem(cfg.sp_size)):
        raise UserError(problem)
    check_engine(cfg, adapter=cfg.use_peft or is_adapter_dir(cfg.model))
    resume_target(cfg)  # a bad --resume_from_checkpoint fails before any work
    model, tokenizer = load_model_and_tokenizer(cfg)
    check_model(model, cfg)  # nothing is written before the model is known to train exactly
    train_set, report, train_rows = build_dataset(cfg.data, "train", cfg, tokenizer)
    eval_set, _, eval_rows = build_dataset(cfg.eval_data, "eval", cfg, tokenizer) if cfg.eval_data \
        else (None, None, None)
    trainer = FocusTrainer(model, cfg, train_dataset=train_set, eval_dataset=eval_set,
                           data_collator=Collator(pad_id=tokenizer.pad_token_id,
                                                 pack_to=cfg.max_length if cfg.packing else None,
                                                 pad_to_multiple_of=cfg.sp_size if cfg.sp_size > 1 else None),
                           processing_class=tokenizer)
    if cfg.diagnostics_steps:
        probe_rows = eval_rows or (default_rows("eval", cfg, tokenizer) if cfg.data is None
                                   else train_rows)
        attach_diagnostics(trainer, tokenizer, probe_rows, cfg)
    if trainer.is_world_process_zero():
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "data_report.json").write_text(json.dumps(vars(report), indent=2))
    with GracefulStop() as stop:  # SIGINT/SIGTERM: finish the step, save a checkpoint, stop
        trainer.add_callback(stop)
        output = trainer.train(resume_from_checkpoint=resume_target(cfg))
    if stop.signum is not None:
        step = trainer.state.global_step
        raise TrainingInterrupted(stop.signum, checkpoint_of(cfg.output_dir, step), cfg.output_dir)
    result = {"method": cfg.method, "attention": cfg.attention, **run_metrics(trainer, output)}
    if cfg.model is None and cfg.data is None:
        result.update(default_heldout_accuracy(trainer.model, tokenizer, cfg))
    final = save_final(trainer, tokenizer, cfg, result)
    result = {"checkpoint": str(final), **result}
    if cfg.push_to_hub and trainer.is_world_process_zero():
        push_final(trainer, final, cfg)
    if trainer.is_world_process_zero():
        (Path(cfg.output_dir) / "result.json").write_text(json.dumps(result, indent=2))
    trainer.accelerator.wait_for_everyone()
    return result


def attach_diagnostics(trainer, tokenizer, rows, cfg: FocusConfig) -> None:
    """Sink mass / context engagement of a fixed probe batch over training (focusft.diagnostics)."""
    from focusft.diagnostics import DiagnosticsCallback
    from focusft.diagnostics.evidence import probe_batch

    probe = [rows[i] for i in range(min(cfg.diagnostics_samples, len(rows)))]
    source = cfg.eval_data or cfg.data or "embedded default (held-out rows)"
    batch = probe_batch(tokenizer, probe, source, tokenizer.pad_token_id)
    for i, mask in enumerate(cfg.diagnostics_masks):  # one JSON line per (step, mask)
        DiagnosticsCallback(batch, cfg.diagnostics_steps, cfg.output_dir, mask=mask,
                            prefix="diag/" if i == 0 else f"diag_{mask}/").attach(trainer)


def default_heldout_accuracy(model, tokenizer, cfg: FocusConfig) -> dict:
    from focusft.sources import default

    rows = default_rows("eval", cfg, tokenizer)
    accuracy = default.answer_accuracy(model, tokenizer, rows)
    return {"heldout_accuracy": round(100 * accuracy, 1),
            "chance_accuracy": round(100 * default.DEFAULT_RECIPE["chance"], 1),
            "heldout_samples": len(rows)}
