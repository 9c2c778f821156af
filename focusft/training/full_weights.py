"""The whole trained model on the main process, for ``final/``, under any engine.

``final/`` is always a plain Hugging Face model (or PEFT adapter) in safetensors, whatever the
engine and its configuration; the resumable ``checkpoint-N/`` folders keep each engine's own
format (DeepSpeed's sharded ``global_stepN/``, FSDP's state dict type), which an exact resume
needs.

* One process, DDP, ZeRO-1/2: every rank holds the full weights; the Trainer's ``save_model``
  writes them (`sharding` is None).
* DeepSpeed ZeRO-3: each rank holds a shard of every parameter. The engine's own consolidation
  (``deepspeed.zero.GatheredParameters``, one module at a time, copied to the main process's CPU
  memory) runs whatever the DeepSpeed config says about
  ``stage3_gather_16bit_weights_on_model_save``. That flag only decides what the Trainer's
  ``save_model`` does by itself: without it, it writes DeepSpeed's sharded checkpoint, which
  plain transformers cannot load. The weights are the engine's module weights (the training
  dtype: bf16 under ``--bf16``), as the flag would give. With PEFT only the trainable (adapter)
  parameters are gathered, as the Trainer does.
* FSDP (FSDP2 ``fully_shard``): torch's ``get_model_state_dict(full_state_dict=True,
  cpu_offload=True)``, the full tensors on the main process in CPU memory, whatever
  ``fsdp_state_dict_type`` says (with ``SHARDED_STATE_DICT`` the Trainer's ``save_model`` writes
  no weights at all). With PEFT, frozen parameters are left out.

All ranks must call `save_full_model` (gathering is a collective); the main process writes.
`has_weights` is the last check before ``final/`` is put in place: a folder without weights is
never reported as a model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from focusft.core.zero import is_partitioned
from focusft.training import adapters

logger = logging.getLogger("focusft")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def sharding(trainer) -> str | None:
    """'zero3' or 'fsdp' when no rank holds the whole model; None when the main process does."""
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    if any(is_partitioned(p) for p in trainer.model.parameters()):
        return "zero3"
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()):
        return "fsdp"
    return None


def full_state_dict(trainer, kind: str) -> dict[str, torch.Tensor] | None:
    """The full weights on the main process (CPU tensors), None or empty elsewhere."""
    adapter = adapters.is_peft_model(trainer.model)
    if kind == "zero3":
        engine = trainer.deepspeed  # the DeepSpeedEngine the Trainer trained with
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=adapter)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter)
    return get_model_state_dict(model, options=options)


def save_full_model(trainer, directory: str) -> None:
    """The model (or adapter) as ``save_pretrained`` writes it, into `directory`; every rank calls."""
    kind = sharding(trainer)
    if kind is None:
        # _internal_call: no push of output_dir from here; --push_to_hub uploads final/ once
        # it is complete (focusft.training.run.push_final).
        trainer.save_model(directory, _internal_call=True)
        return
    state = full_state_dict(trainer, kind)
    if trainer.is_world_process_zero():
        logger.warning("focusft: final/ is the whole %s, gathered from the %s shards to the "
                       "main process (%d tensors); the checkpoints keep the engine's own format "
                       "for resuming", "adapter" if adapters.is_peft_model(trainer.model) else "model",
                       "DeepSpeed ZeRO-3" if kind == "zero3" else "FSDP", len(state))
        trainer._save(directory, state_dict=state)  # the Trainer's own writer: save_pretrained


def has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)
