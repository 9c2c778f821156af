"""DeepSpeed ZeRO with FocuSFT: what the engine needs from focusft, and what focusft needs from it.

The Trainer drives DeepSpeed (``--deepspeed ds.json``, or ``accelerate launch --config_file
configs/accelerate/deepspeed_zero{2,3}.yaml``). Three things are focusft's own:

* `prepare_deepspeed`: on a machine without an accelerator, DeepSpeed builds its shared-memory
  collective op (a C++ compile of minutes) when it initializes; the CPU run uses gloo
  all-reduces instead, so the op is marked unavailable first, and DeepSpeed's comm layer joins
  the Trainer's gloo group (else ``zero.Init`` counts a world of one). Nothing changes on GPUs.
* `gathered`: a ZeRO-3 model loaded under ``zero.Init`` holds only this rank's shard of each
  parameter (the tensors are empty placeholders) until the engine's hooks gather them in its
  forward. Code that runs the model *outside* the engine (the self-check before training)
  gathers the parameters it needs for the duration; a no-op for any other model.
* `check_engine`: what focusft refuses under an engine (--sp_size under FSDP or ZeRO-3, not
  verified exact; FSDP1, which cannot host the inner loop; merging an adapter into a ZeRO-3 or
  FSDP model, which holds no full weights on any rank).

The inner loop needs nothing more. It calls the top layers again from inside the outer forward
(a forward pre-hook of the first adapted layer); under ZeRO-3 every such call is an ordinary
module call to DeepSpeed: its pre-forward hook all-gathers the layer's parameters, its
post-forward hook releases them, and the backward hooks of the inner ``autograd.grad`` gather
them again and release them. The inner backward forms no gradient of a base parameter (it
differentiates the fast tensors only), so ZeRO's reduce-scatter hooks never fire for it. (The
order of module calls is the same every step; whether ZeRO's prefetch trace keeps up with the
nested calls is a matter of speed, not of the result.) Measured by
tests/training/test_deepspeed.py: 2 ranks under ZeRO-2 and ZeRO-3 equal one process without
DeepSpeed (losses, gradient norms, inner losses and weights after 4 steps) and resume exactly.
"""

from __future__ import annotations

import contextlib
import os

import torch


def deepspeed_requested(cfg=None, env=os.environ) -> bool:
    """True when this run trains under DeepSpeed (a --deepspeed config, or accelerate's launcher)."""
    return bool(getattr(cfg, "deepspeed", None)) or env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def prepare_deepspeed(cfg=None) -> None:
    """Before DeepSpeed initializes: no shared-memory op compile on a machine without GPUs."""
    if not deepspeed_requested(cfg) or torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if cfg is not None and cfg.world_size > 1 and torch.distributed.is_initialized():
        # The Trainer's CPU process group is gloo, set up without DeepSpeed's comm layer; join
        # it now, or zero.Init (ZeRO-3 loading) counts a world of 1 and rejects the batch sizes.
        from deepspeed import comm

        comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def is_partitioned(param: torch.Tensor) -> bool:
    """A ZeRO-3 parameter (it carries DeepSpeed's ``ds_id``)."""
    return hasattr(param, "ds_id")


def zero3_params(modules) -> list[torch.nn.Parameter]:
    """The ZeRO-3-partitioned parameters of `modules` (empty for an ordinary model)."""
    seen, out = set(), []
    for module in modules:
        for param in module.parameters():
            if is_partitioned(param) and id(param) not in seen:
                seen.add(id(param))
                out.append(param)
    return out


@contextlib.contextmanager
def gathered(modules):
    """Hold the full parameters of `modules` (ZeRO-3) for the block; a no-op otherwise.

    A collective: every rank must enter it with the same modules.
    """
    params = zero3_params(modules)
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def zero3_enabled() -> bool:
    """True when the Trainer's DeepSpeed configuration asks for ZeRO stage 3."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def check_engine(cfg, env=os.environ, adapter: bool | None = None) -> None:
    """Refuse, before any work, what cannot be done under the configured engine.

    `adapter`: the run trains a PEFT adapter (default: ``cfg.use_peft``; an adapter directory
    given as --model also is one).
    """
    from focusft.errors import UserError

    fsdp = bool(getattr(cfg, "fsdp", None)) or env.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")
    if getattr(cfg, "sp_size", 1) > 1 and (fsdp or zero3_enabled()):
        raise UserError(f"--sp_size {cfg.sp_size} under {'FSDP' if fsdp else 'DeepSpeed ZeRO-3'}: "
                        "sequence parallelism is verified exact with DDP and ZeRO-2 only; use one "
                        "of those (e.g. configs/accelerate/deepspeed_zero2.yaml) or --sp_size 1.")
    if fsdp and fsdp_version(cfg, env) != 2:
        raise UserError("FSDP version 1 (accelerate's default fsdp_version: 1): the inner loop "
                        "calls the sharded top layers again inside the forward, which only FSDP2 "
                        "supports. Set fsdp_version: 2 in the accelerate config (as "
                        "configs/accelerate/fsdp.yaml does), or use DeepSpeed or DDP.")
    adapter = getattr(cfg, "use_peft", False) if adapter is None else adapter
    if cfg.merge_adapter and adapter and (fsdp or zero3_enabled()):
        engine = "FSDP" if fsdp else "DeepSpeed ZeRO-3"
        raise UserError(f"--merge_adapter true under {engine}: no rank holds the full base "
                        "weights to merge into. Train without it (final/ is then the adapter) and "
                        "merge on one process afterwards (peft: merge_and_unload), or use ZeRO-2 "
                        "or DDP.")


def fsdp_version(cfg, env=os.environ) -> int:
    """The FSDP version the Trainer will use: accelerate's launcher passes FSDP_VERSION (its
    default 1); the Trainer's own --fsdp reads fsdp_config's "version" (its default 2)."""
    if env.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1") and "FSDP_VERSION" in env:
        return int(env["FSDP_VERSION"])
    return int((getattr(cfg, "fsdp_config", None) or {}).get("version", 2))
