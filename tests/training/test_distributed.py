"""Distributed FocuSFT on CPU (gloo): DDP equivalence, FSDP2 with sharded base weights, launchers.

The multi-process tests launch real processes with torchrun (2 ranks, CPU, gloo). They are
marked slow but stay in the default run. See docs/distributed.md for what they establish.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import pytest
import torch
import yaml

import dist_worker
from focusft.core.distributed import launch_problem

from multiproc import BIN, CONFIGS, HERE, logged_losses, run, safetensors_of, srun_like, torchrun


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "model"
    dist_worker.build(str(path))
    return path


def worker(out: Path, model: Path, *flags: str, ranks: int = 1, extra: tuple = ()) -> None:
    cmd = [str(HERE / "dist_worker.py"), str(out), "--model", str(model), *flags]
    if ranks == 1:
        run([sys.executable, *cmd, *(("--extra", *extra) if extra else ())])
    else:
        run(torchrun(*cmd, "--extra", "--use_cpu", "true", *extra))


def results(out: Path, tag: str) -> list[dict]:
    """The worker's records of one variant ('full' or 'emptyI'), rank by rank."""
    return [torch.load(f) for f in sorted(glob.glob(str(out / f"rank*-{tag}.pt")))]


@pytest.fixture(scope="module")
def ddp_runs(model_dir, tmp_path_factory) -> Path:
    """Launches shared by the DDP tests: 1 rank x batch 2 and 2 ranks x 1 sample (each with and
    without a sample that has no loss token), 1 rank x 1 sample x 2 accumulation steps, and batch
    2 with each sequence split over 2 ranks (--sp_size 2) beside its 1-rank reference. The SP
    pair uses inner lr 0.3: at 1.0 this tiny model amplifies the float rounding of a different
    summation order (the group's all-reduce) to ~2e-4 relative in single gradient entries."""
    out = tmp_path_factory.mktemp("ddp")
    worker(out / "one", model_dir, "--batch", "2", "--empty", "none", "1")
    worker(out / "acc", model_dir, "--batch", "1", "--accum", "2")
    worker(out / "ddp", model_dir, "--batch", "1", "--empty", "none", "1", ranks=2)
    worker(out / "sp-one", model_dir, "--batch", "2", extra=("--inner_lr", "0.3"))
    worker(out / "sp", model_dir, "--batch", "2", ranks=2, extra=("--sp_size", "2", "--inner_lr", "0.3"))
    return out


def assert_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"{what}: {name}")


# ---------------------------------------------------------------------------------------------
# Shipped launch configs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_shipped_accelerate_config_parses(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = CONFIGS / f"{name}.yaml"
    cfg = ClusterConfig.from_yaml_file(str(path))  # rejects unknown keys
    raw = yaml.safe_load(path.read_text())
    want = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP}.get(
        name, DistributedType.DEEPSPEED)
    assert cfg.distributed_type == want
    assert cfg.mixed_precision == "bf16" and cfg.num_machines == 1
    if name == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_activation_checkpointing"] is True
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # final/ is a plain HF model
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
            auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
            activation_checkpointing=True, state_dict_type=fsdp["fsdp_state_dict_type"],
            cpu_ram_efficient_loading=fsdp["fsdp_cpu_ram_efficient_loading"])
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    if name.startswith("deepspeed"):
        stage = int(name[-1])
        assert raw["deepspeed_config"]["zero_stage"] == stage
        assert raw["deepspeed_config"].get("zero3_save_16bit_model", False) == (stage == 3)


def test_launcher_without_a_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = launch_problem(world_size=1, use_cpu=False)
    assert message and "own model copy" in message
    assert launch_problem(world_size=2, use_cpu=True) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_problem(world_size=1, use_cpu=False) is None


# ---------------------------------------------------------------------------------------------
# DDP: gradient accumulation and loss normalisation across ranks
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_two_ranks_equal_one_rank_batch_and_accumulation(ddp_runs):
    """2 ranks x 1 sample == 1 rank x batch 2 == 1 rank x 1 sample x 2 accumulation steps.

    The samples' responses differ 5x in length, so normalising per rank or per micro-batch
    (instead of by the global token count) would change the gradient; the outer optimizer is
    SGD, so the weights after the step check the same thing without Adam's sign-like first step.
    """
    (one,), (acc,) = results(ddp_runs / "one", "full"), results(ddp_runs / "acc", "full")
    ddp = results(ddp_runs / "ddp", "full")
    assert one["sample_ids"] == acc["sample_ids"] == [0, 1]
    assert [r["sample_ids"] for r in ddp] == [[0], [1]]
    assert all(r["world_size"] == 2 and r["wrapper"] == "DistributedDataParallel" for r in ddp)
    for name, run_ in [("accumulation", acc), ("ddp rank 0", ddp[0]), ("ddp rank 1", ddp[1])]:
        assert_close(run_["grads"], one["grads"], f"grads, {name}")
        assert_close(run_["weights"], one["weights"], f"weights, {name}")
    for name in ddp[0]["weights"]:  # every rank holds the same model after the step
        assert torch.equal(ddp[0]["weights"][name], ddp[1]["weights"][name]), name
    assert ddp[0]["loss"] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.slow
def test_sequence_parallel_trainer_step_equals_one_process(ddp_runs):
    """FocusTrainer with --sp_size 2 on 2 ranks (both hold batch 2, each runs half of every
    sequence) == 1 rank x batch 2: gradients as the optimizer sees them, weights after the step."""
    (one,), sp = results(ddp_runs / "sp-one", "full"), results(ddp_runs / "sp", "full")
    assert [r["sample_ids"] for r in sp] == [[0, 1], [0, 1]]  # the group shares its batches
    for r in sp:
        assert_close(r["grads"], one["grads"], "grads, sequence parallel")
        assert_close(r["weights"], one["weights"], "weights, sequence parallel")


@pytest.mark.slow
def test_ddp_rank_without_response_tokens_neither_hangs_nor_skews(ddp_runs):
    """Rank 1's sample has no loss token: same collectives on both ranks, same gradients."""
    (one,), ddp = results(ddp_runs / "one", "empty1"), results(ddp_runs / "ddp", "empty1")
    full = results(ddp_runs / "one", "full")[0]
    assert len(ddp) == 2 and [r["sample_ids"] for r in ddp] == [[0], [1]]
    assert not torch.allclose(one["grads"]["lm_head.weight"], full["grads"]["lm_head.weight"])
    for r in ddp:
        assert_close(r["grads"], one["grads"], "grads, empty rank")
        assert_close(r["weights"], one["weights"], "weights, empty rank")


# ---------------------------------------------------------------------------------------------
# FSDP2: the inner loop calls the sharded top layers again inside the forward
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fsdp2_sharded_step_matches_unsharded(tmp_path):
    """Without and with activation checkpointing (one launch for both)."""
    run(torchrun(str(HERE / "fsdp_worker.py"), str(tmp_path), "fsdp2"))
    for variant in ("plain", "ckpt"):
        for rank in (0, 1):
            result = torch.load(tmp_path / f"rank{rank}-{variant}.pt")
            assert result["status"] == "ok", result["error"]
            assert len(result["got"]) == len(result["want"]) > 0
            assert len(result["inner_losses"]) == 2
            assert_close(result["got"], result["want"], f"fsdp2 {variant} rank {rank}")


@pytest.mark.slow
def test_fsdp2_final_is_the_whole_model_in_plain_transformers(model_dir, tmp_path):
    """`save_final` of a FocusTrainer whose model is FSDP2-sharded over 2 ranks (with activation
    checkpointing, as fsdp.yaml): final/ is one safetensors model, gathered from the shards
    (torch's full state dict on the main process), that plain transformers loads with exactly
    the unsharded weights, wrapper names stripped; with --use_peft, the adapter's weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    proc = run(torchrun(str(HERE / "fsdp_worker.py"), str(tmp_path), "save", str(model_dir)))
    assert proc.stderr.count("gathered from the FSDP shards") == 2  # main process, 2 saves
    final = tmp_path / "run" / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "focusft.yaml", "README.md"):
        assert (final / name).is_file(), name
    got = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True).state_dict()
    want = torch.load(tmp_path / "want-run.pt")
    initial = safetensors_of(model_dir)
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    assert all(not torch.equal(want[name], initial[name]) for name in initial)  # not the input

    adapter = tmp_path / "run-peft" / "final"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    got, want = load_file(adapter / "adapter_model.safetensors"), torch.load(tmp_path / "want-run-peft.pt")
    assert got.keys() == want.keys() and len(want) > 0
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


# ---------------------------------------------------------------------------------------------
# The CLI under the launchers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dist_worker.rows(4)))
    return path


def cli_flags(model_dir: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--output_dir", str(out),
            "--max_steps", "2", "--fast_rank", "4", "--max_length", "256", "--disable_tqdm", "true",
            "--report_to", "none"]


@pytest.mark.slow
def test_torchrun_cli_outputs_complete_and_resumable(model_dir, data_file, tmp_path):
    """`torchrun -m focusft.cli train` on 2 ranks: one complete output, and a resumable checkpoint.

    Run A trains 4 steps, saving checkpoints at steps 2 and 4; run B starts from a copy of A's
    checkpoint-2 and trains steps 3-4, launched as `srun --ntasks 2` starts processes (SLURM's
    variables only), so it also checks that `focusft train` joins those into one world. final/ is written by rank 0 alone, so it holds the
    model (not only what every rank writes) and reloads in plain transformers with the weights
    rank 0 saved in its last checkpoint; B's logged losses and final weights equal A's.
    """
    import json
    import shutil

    from transformers import AutoModelForCausalLM

    flags = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
             "--logging_steps", "1", "--use_cpu", "true"]
    a, b = tmp_path / "a", tmp_path / "b"
    proc = run(torchrun("-m", "focusft.cli", *cli_flags(model_dir, data_file, a), *flags))
    assert proc.stdout.count("focusft train: done, 4 steps") == 1  # the main process's summary
    assert proc.stdout.count(f"final model: {a / 'final'}") == 1
    assert proc.stderr.count("focusft data ") == 1  # the run's report lines: the main process's
    assert sorted(p.name for p in a.iterdir()) == [
        "checkpoint-2", "checkpoint-4", "data_report.json", "final", "result.json"]
    assert json.loads((a / "result.json").read_text())["steps"] == 4
    final = a / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "focusft.yaml", "README.md"):
        assert (final / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(final)
    saved = safetensors_of(a / "checkpoint-4")  # rank 0's weights after the last step
    reloaded = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(reloaded[name], tensor), name
    initial = safetensors_of(model_dir)
    assert any(not torch.equal(initial[name], t) for name, t in saved.items())  # it trained

    b.mkdir()  # resumed under srun (2 tasks, no torchrun): the world comes from SLURM's variables
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    srun_like([sys.executable, "-m", "focusft.cli", *cli_flags(model_dir, data_file, b), *flags,
               "--resume_from_checkpoint", "last"])
    assert json.loads((b / "result.json").read_text())["steps"] == 4
    want, got = logged_losses(a / "checkpoint-4"), logged_losses(b / "checkpoint-4")
    assert sorted(want) == [1, 2, 3, 4] and sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):  # trained after the resume
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    resumed = safetensors_of(b / "final")
    for name, tensor in safetensors_of(final).items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_accelerate_launch_cli_entry(model_dir, data_file, tmp_path):
    """`accelerate launch --config_file ddp.yaml -m focusft.cli train` (CPU: one process; multi-
    process CPU launching in accelerate needs MPI, so the 2-rank runs above use torchrun)."""
    out = tmp_path / "run"
    run([str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "ddp.yaml"), "--cpu",
         "--num_processes", "1", "--mixed_precision", "no", "-m", "focusft.cli",
         *cli_flags(model_dir, data_file, out)])
    assert (out / "final" / "model.safetensors").exists()
