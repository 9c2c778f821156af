"""FocuSFT's step with FSDP-sharded base weights, on CPU (gloo), compared with the unsharded step.

Accelerate does not turn FSDP on for CPU processes (its FSDP path needs an accelerator), so
this script applies torch's FSDP directly, exactly the wrapping accelerate performs on GPUs
(one unit per decoder layer + the root, optional activation checkpointing), and runs the step
the way `FocusTrainer.compute_loss` does: reset the per-sample fast weights, arm the inner loop,
outer forward + backward. The inner loop calls the sharded top layers again inside the forward.

Usage: torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT {fsdp2|fsdp1}
Writes OUT/rank{R}-{plain|ckpt}.pt (without / with activation checkpointing): the full
gradients of the step (and the same computed without FSDP).

``torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT save MODEL_DIR``: the saved model (and
the same with LoRA adapters) with its weights moved off their initial values (the same on every
rank), FSDP2-sharded with activation checkpointing as accelerate's fsdp.yaml does it, in a
`FocusTrainer`; `save_final` writes ``OUT/run/final`` and ``OUT/run-peft/final`` (every rank
calls it); rank 0 writes the unsharded weights (the adapter's, as PEFT saves them) to
``OUT/want-run.pt`` and ``OUT/want-run-peft.pt``.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny import make_batch, tiny_qwen2  # noqa: E402

from focusft.core.fast_weights import decoder_layers  # noqa: E402
from focusft.core.masks import AttentionLayout  # noqa: E402
from focusft.core.step import InnerJob, outer_loss, response_targets  # noqa: E402
from focusft.training.trainer import attach_fast_weights, sample_seed  # noqa: E402
from focusft.training.config import FocusConfig  # noqa: E402
from focusft.core import attention  # noqa: E402

ROWS = [[(5, 0), (3, 1), (4, 0), (2, 1)], [(9, 0), (6, 1)], [(3, 0), (2, 1), (2, 0), (7, 1)],
        [(6, 0), (4, 1)]]


def step(model, batch, cfg, ids):
    """One FocuSFT micro-step as FocusTrainer does it; returns the (global-sum) loss."""
    fast, bilevel = attach_fast_weights(model, cfg)
    fast.reset([sample_seed(0, 0, int(i)) for i in ids])
    bilevel.arm(InnerJob(response_targets(batch["labels"])))
    layout = AttentionLayout.glm(batch["loss_mask"], batch["attention_mask"].sum(1).tolist())
    n_global = int((make_batch(ROWS)["labels"] != -100).sum())
    loss, _ = outer_loss(model, batch, layout, n_global)
    return loss, fast, bilevel


def full_grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is None:
            continue
        g = g.full_tensor() if hasattr(g, "full_tensor") else g
        clean = name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
        out[clean] = g.detach().clone()
    return out


def main() -> int:
    """Both variants (plain, activation checkpointing) in one process group, one launch."""
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "save":
        return save_final_sharded(out, sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = FocusConfig(output_dir=os.path.join(out, "unused"), fast_rank=4, fast_layer_fraction=0.5,
                      use_cpu=True, report_to="none")
    full = make_batch(ROWS)
    per = len(ROWS) // world
    mine = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}

    # Reference: the whole batch, one process, no FSDP.
    ref = tiny_qwen2(seed=0)
    attention.use_focusft_attention(ref)
    loss, fast, bilevel = step(ref, full, cfg, full["sample_ids"])
    loss.backward()
    want = full_grads(ref)
    for ckpt in (False, True):
        result = sharded_step(mode, ckpt, mine, cfg, world)
        torch.save({**result, "want": want},
                   os.path.join(out, f"rank{rank}-{'ckpt' if ckpt else 'plain'}.pt"))
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    return 0


def sharded_step(mode: str, ckpt: bool, mine: dict, cfg, world: int) -> dict:
    model = tiny_qwen2(seed=0)
    attention.use_focusft_attention(model)
    layer_cls = type(decoder_layers(model)[0])
    if ckpt:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing, checkpoint_wrapper)
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                       check_fn=lambda m: isinstance(m, layer_cls))
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        wrapped = model
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer_cls})
        wrapped = FSDP(model, auto_wrap_policy=policy, device_id=torch.device("cpu"),
                       use_orig_params=True)
    # FocusTrainer attaches before accelerate wraps; under FSDP2 the layer objects stay the same
    # (fully_shard only swaps their class), so attaching here puts the hooks in the same places.
    status, err, bilevel = "ok", "", None
    try:
        loss, fast, bilevel = step(wrapped, mine, cfg, mine["sample_ids"])
        (loss * world).backward()  # FSDP averages gradients over ranks; the loss is a global sum
        got = full_grads(wrapped)
    except Exception:  # noqa: BLE001 - reported to the test
        import traceback
        status, err, got = "error", traceback.format_exc()[-3000:], {}
    stats = bilevel.stats if bilevel is not None else None
    return {"status": status, "error": err, "got": got,
            "inner_losses": [float(x) for x in (stats.losses if stats else [])]}


def save_final_sharded(out: str, model_dir: str) -> int:
    """The full model (OUT/run) and, with --use_peft, the LoRA adapter (OUT/run-peft)."""
    for name, extra in (("run", {}), ("run-peft", {"use_peft": True, "lora_r": 4})):
        cfg = FocusConfig(output_dir=os.path.join(out, name), fast_rank=4, use_cpu=True,
                          report_to="none", save_strategy="no", **extra)
        save_one_sharded(cfg, model_dir, os.path.join(out, f"want-{name}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def save_one_sharded(cfg, model_dir: str, want_path: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from focusft.training import adapters
    from focusft.training.run import save_final
    from focusft.training.trainer import FocusTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if cfg.use_peft:  # as FocusTrainer does, before the engine shards the model
        model = adapters.wrap(model, adapters.lora_config(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # weights that are not the saved ones (LoRA B not zero), on every rank
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if cfg.process_index == 0:
        if cfg.use_peft:
            from peft import get_peft_model_state_dict
            want = get_peft_model_state_dict(model)
        else:
            want = model.state_dict()
        torch.save({k: v.clone() for k, v in want.items()}, want_path)
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing, checkpoint_wrapper)
    from torch.distributed.fsdp import fully_shard

    layer_cls = type(decoder_layers(model)[0])
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda m: isinstance(m, layer_cls))
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = FocusTrainer(model, cfg, processing_class=tok)
    save_final(trainer, tok, cfg, {"train_loss": 1.0})


if __name__ == "__main__":
    sys.exit(main())
