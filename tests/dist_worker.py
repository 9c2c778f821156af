"""One FocuSFT optimizer step on a tiny model, for the distributed equivalence tests.

Run alone (1 process) or under a launcher (``torchrun --nproc_per_node 2 tests/dist_worker.py``
or ``accelerate launch --config_file ... tests/dist_worker.py``). Every process builds the same
tiny Qwen2 (fixed seed) and the same fixed dataset, trains exactly ONE optimizer step with
`FocusTrainer` (sequential sampler), and writes ``OUT/rank{R}-{full|emptyI}.pt`` with

* ``grads``:  every base parameter's gradient as the optimizer sees it (``on_pre_optimizer_step``:
  after accumulation and the cross-rank reduction, before clipping and the update), gathered to
  full tensors under FSDP;
* ``weights``: every base parameter after the step (full tensors);
* ``sample_ids``: the sample ids this rank trained on, ``world_size``, ``loss``.

Usage: dist_worker.py OUT [--batch B] [--accum G] [--empty none|I ...] [--extra FLAG ...]
``--empty I`` strips the response tokens of sample I in the collator (a rank, or a micro-batch,
without any loss token: the deadlock / collective check); ``none`` keeps every sample's. Several
values: one step each, one after the other in the same processes (one launch).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def build(model_dir: str) -> None:
    """A tiny Qwen2 + ChatML tokenizer saved to `model_dir` (deterministic)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from chat_fixtures import chatml_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = chatml_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)


def rows(n: int) -> list[dict]:
    """n fixed chats of different lengths."""
    out = []
    for i in range(n):
        words = " ".join(f"w{i}{j}" for j in range(3 + 4 * i))
        answer = f"On mat {i}." + " Yes, there." * (1 + 4 * i)  # response lengths differ a lot
        out.append({"messages": [
            {"role": "user", "content": f"The cat sat on mat {i}. {words}. Where is the cat?"},
            {"role": "assistant", "content": answer}]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--empty", nargs="+", default=["none"],
                   help="runs, one after the other: 'none', or a sample index without response tokens")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    for empty in a.empty:
        one_step(a, None if empty == "none" else int(empty))
    return 0


def one_step(a, empty: int | None) -> None:
    """One optimizer step; writes OUT/rank{R}-{full|emptyI}.pt."""
    import datasets
    from transformers import TrainerCallback

    from focusft.training.config import parse_config
    from focusft.data.pipeline import Collator, tokenize_rows
    from focusft.training.loading import load_model_and_tokenizer
    from focusft.training.trainer import FocusTrainer

    tag = "full" if empty is None else f"empty{empty}"
    cfg = parse_config([
        "--model", a.model, "--output_dir", os.path.join(a.out, f"run-{tag}"), "--max_steps", "1",
        "--per_device_train_batch_size", str(a.batch), "--gradient_accumulation_steps", str(a.accum),
        "--train_sampling_strategy", "sequential", "--optim", "sgd", "--learning_rate", "0.1", "--warmup_steps", "0",
        "--lr_scheduler_type", "constant", "--fast_rank", "4", "--max_length", "256",
        "--fast_layer_fraction", "0.5", "--max_grad_norm", "0", "--logging_steps", "1",
        "--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no",
        "--dataloader_num_workers", "0", *a.extra])
    model, tok = load_model_and_tokenizer(cfg)
    train_set, _ = tokenize_rows(datasets.Dataset.from_list(rows(a.samples)), tok,
                                 cfg.max_length, cfg.truncation, "dist_worker")[:2]

    seen: list[int] = []
    captured: dict = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            captured["grads"] = full_tensors(trainer, grads=True)

    class SeeIds(Collator):
        def __call__(self, features):
            batch = super().__call__(features)
            if empty is not None:  # this sample keeps its tokens but has no loss (no targets)
                drop = (batch["sample_ids"] == empty)[:, None]
                batch["loss_mask"] &= ~drop
                batch["labels"] = batch["labels"].masked_fill(drop, -100)
            seen.extend(batch["sample_ids"].tolist())
            return batch

    trainer = FocusTrainer(model, cfg, train_dataset=train_set,
                           data_collator=SeeIds(pad_id=tok.pad_token_id,
                                                pad_to_multiple_of=cfg.sp_size if cfg.sp_size > 1 else None),
                           processing_class=tok,
                           callbacks=[Capture()])
    out = trainer.train()
    weights = full_tensors(trainer, grads=False)
    rank = trainer.accelerator.process_index
    torch.save({"grads": captured["grads"], "weights": weights, "sample_ids": seen,
                "world_size": trainer.accelerator.num_processes, "loss": out.training_loss,
                "fsdp": trainer.is_fsdp_enabled, "wrapper": type(trainer.model_wrapped).__name__},
               os.path.join(a.out, f"rank{rank}-{tag}.pt"))
    trainer.accelerator.wait_for_everyone()


def full_tensors(trainer, grads: bool) -> dict[str, torch.Tensor]:
    """Base parameters (or their grads) as full CPU tensors, FSDP-sharded or not."""
    model = trainer.model
    out = {}
    for name, param in model.named_parameters():
        t = param.grad if grads else param
        if t is None:
            continue
        t = t.detach()
        if hasattr(t, "full_tensor"):  # FSDP2 DTensor shard -> full tensor (a collective)
            t = t.full_tensor()
        out[name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")] = t.clone().cpu()
    return out


if __name__ == "__main__":
    sys.exit(main())
