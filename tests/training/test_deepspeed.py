"""DeepSpeed ZeRO-2 / ZeRO-3 with FocuSFT's inner loop, through the CLI and the shipped configs.

Each stage runs `accelerate launch --config_file focusft/configs/accelerate/deepspeed_zeroN.yaml
--num_processes 2 -m focusft.cli train ... --use_cpu true` (2 CPU ranks, gloo) twice: run A
trains 4 optimizer steps (checkpoints at 2 and 4), run B resumes from a copy of A's checkpoint-2.
A is compared with one process without DeepSpeed at the same global batch (1 sample x 2
accumulation steps = 2 ranks x 1 sample): per step the loss, the gradient norm, the outer loss
and every inner step's loss and gradient norm; the weights after the 4 steps (rtol 1e-4). The
outer optimizer is SGD, so the weights carry the gradients of every step. (The learning rates
are kept small: with --inner_lr 1.0 this tiny model is so sensitive that even one process with
batch 2 and one with 2 accumulation steps drift apart by 1e-2 in the gradient norm by step 4.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import dist_worker
from multiproc import accelerate_launch, log_history, run, safetensors_of, torchrun

pytest.importorskip("deepspeed")

STEPS = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
         "--optim", "sgd", "--learning_rate", "0.01", "--inner_lr", "0.3", "--warmup_steps", "0", "--lr_scheduler_type",
         "constant", "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", "1",
         "--use_cpu", "true"]


def cli(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "focusft.cli", "train", "--model", str(model), "--data", str(data), "--output_dir",
            str(out), "--fast_rank", "4", "--max_length", "512", "--disable_tqdm", "true",
            "--report_to", "none", *STEPS, *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny model and 8 chats."""
    root = tmp_path_factory.mktemp("ds")
    dist_worker.build(str(root / "model"))
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dist_worker.rows(8)))
    return root / "model", data


@pytest.fixture(scope="module")
def setup(base):
    """The tiny model, 8 chats, and the 1-process reference run (no DeepSpeed)."""
    import sys

    model, data = base
    ref = model.parent / "ref"
    run([sys.executable, *cli(model, data, ref, "--gradient_accumulation_steps", "2")])
    return model, data, ref


def assert_same_logs(got: dict[int, dict], want: dict[int, dict], steps, per_micro_batch=True) -> None:
    """Every step's loss, gradient norm and inner statistics; with `per_micro_batch`, also the
    statistics that are means over micro-batches (outer loss, inner harm)."""
    for step in steps:
        names = [k for k in want[step] if k == "loss" or k == "grad_norm" or k.startswith(("outer_", "inner_"))]
        assert {"loss", "grad_norm", "outer_loss", "inner_loss_1", "inner_loss_2"} <= set(names)
        if not per_micro_batch:
            names = [k for k in names if k not in ("outer_loss", "inner_harm")]
        for name in names:
            assert got[step][name] == pytest.approx(want[step][name], rel=1e-4, abs=1e-6), (step, name)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_ranks_equal_one_process_and_resume(setup, tmp_path, stage):
    """ZeRO-3 also recomputes activations (--gradient_checkpointing): the layers are gathered
    again in the backward, and the inner loop must not run again there."""
    model, data, ref = setup
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ["--gradient_checkpointing", "true"] if stage == 3 else []
    proc = run(accelerate_launch(f"deepspeed_zero{stage}", *cli(model, data, a, *extra)))
    assert "ZeRO" in proc.stdout + proc.stderr  # the engine ran (its optimizer warning)
    want = log_history(ref / "checkpoint-4")
    assert sorted(want) == [1, 2, 3, 4]
    assert_same_logs(log_history(a / "checkpoint-4"), want, [1, 2, 3, 4])
    initial, reference = safetensors_of(model), safetensors_of(ref / "final")
    final = safetensors_of(a / "final")  # a plain HF model, gathered from the shards (ZeRO-3)
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    moved = max(float((reference[n] - initial[n]).abs().max()) for n in reference)
    assert moved > 1e-3  # the 4 SGD steps moved the weights far more than the tolerance

    b.mkdir()
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    run(accelerate_launch(f"deepspeed_zero{stage}", *cli(model, data, b, *extra,
                                                             "--resume_from_checkpoint", "last")))
    assert_same_logs(log_history(b / "checkpoint-4"), log_history(a / "checkpoint-4"), [3, 4])
    resumed = safetensors_of(b / "final")
    for name, tensor in final.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_zero2_with_sequence_parallelism_equals_one_process(setup, tmp_path):
    """ZeRO-2 + --sp_size 2: both ranks hold the same 2 samples and run half of each sequence;
    every step equals the 1-process reference (no doubled gradients: each rank's loss is its
    shard's partial sum, and DeepSpeed's average over the 2 ranks times 2 adds them up). The
    reference takes the 2 samples as 2 accumulation steps, so the means over micro-batches
    (outer loss, inner harm) are not compared; the gradients and inner statistics are."""
    model, data, ref = setup
    out = tmp_path / "sp"
    run(accelerate_launch("deepspeed_zero2", *cli(model, data, out, "--sp_size", "2",
                                                  "--per_device_train_batch_size", "2")))
    assert_same_logs(log_history(out / "checkpoint-4"), log_history(ref / "checkpoint-4"),
                     [1, 2, 3, 4], per_micro_batch=False)
    final, reference = safetensors_of(out / "final"), safetensors_of(ref / "final")
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_zero3_final_is_a_plain_model_without_the_gather_flag(base, tmp_path):
    """A minimal ZeRO-3 json (stage 3, batch sizes "auto", no
    stage3_gather_16bit_weights_on_model_save) through `torchrun -m focusft.cli train
    --deepspeed`: the checkpoint keeps DeepSpeed's sharded format (for resuming); final/ is the
    whole model in safetensors, loaded by plain transformers, equal to DeepSpeed's own
    consolidation of that last checkpoint (zero_to_fp32), with its model card and tokenizer."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    model, data = base
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": "auto",
                              "train_micro_batch_size_per_gpu": "auto",
                              "gradient_accumulation_steps": "auto"}))
    out = tmp_path / "run"
    proc = run(torchrun("-m", "focusft.cli", "train", "--model", str(model), "--data", str(data),
                        "--output_dir", str(out), "--deepspeed", str(ds), "--use_cpu", "true",
                        "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "3",
                        "--optim", "sgd", "--learning_rate", "0.05", "--fast_rank", "4",
                        "--max_length", "512", "--disable_tqdm", "true", "--report_to", "none"))
    assert "gathered from the DeepSpeed ZeRO-3 shards" in proc.stderr
    assert proc.stdout.count(f"final model: {out / 'final'}") == 1  # printed by the main process
    checkpoint, final = out / "checkpoint-3", out / "final"
    assert (checkpoint / "global_step3").is_dir() and not (checkpoint / "model.safetensors").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "focusft.yaml", "README.md"):
        assert (final / name).is_file(), name
    assert not (final / "global_step3").exists() and not (final / "latest").exists()
    got = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True).state_dict()
    want = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    initial = safetensors_of(model)
    assert max(float((got[n] - initial[n]).abs().max()) for n in initial) > 1e-3  # it trained
