"""Launchers that start N processes the trainer would not join together are refused (exit 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from focusft.core.distributed import launch_problem, launched_processes

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("env", [
    {"WORLD_SIZE": "2"},  # torchrun / deepspeed / accelerate's multi-GPU launcher
    {"OMPI_COMM_WORLD_SIZE": "4"},  # mpirun (Open MPI)
    {"PMI_SIZE": "3"},  # mpirun (MPICH / Intel MPI), accelerate --mpirun_hostfile
])
def test_n_processes_but_a_world_of_one(env):
    message = launch_problem(world_size=1, use_cpu=False, env=env)
    n = launched_processes(env)
    assert message and f"started {n} processes" in message and "own model copy" in message
    assert f"torchrun --nproc_per_node {n} -m focusft.cli train" in message
    assert launch_problem(world_size=n, use_cpu=True, env=env) is None


def test_plain_runs_pass():
    assert launch_problem(world_size=1, use_cpu=False, env={}) is None
    assert launch_problem(world_size=1, use_cpu=False, env={"WORLD_SIZE": "1"}) is None
    # accelerate launch --cpu --num_processes 1: no MASTER_ADDR
    assert launch_problem(world_size=1, use_cpu=True, env={"ACCELERATE_USE_CPU": "True"}) is None


def test_accelerate_launch_cpu_with_two_processes_is_refused(tmp_path):
    """The real launcher: it starts one process; focusft says so and names the command that works."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "run"
    proc = subprocess.run([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2",
                           "--mixed_precision", "no", "-m", "focusft.cli", "train",
                           "--output_dir", str(out), "--max_steps", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "started a single process" in proc.stderr
    assert "torchrun --nproc_per_node 2 -m focusft.cli train" in proc.stderr
    assert not out.exists()


def test_sequence_parallel_settings_that_cannot_work_are_refused():
    """accelerate's own sp_size, GLM under cp_size, --sp_size with packing or without a
    launcher: each stops before any work, saying what works."""
    from types import SimpleNamespace

    from focusft.training.config import parse_config
    from focusft.core.distributed import parallelism_problem
    from focusft.errors import UserError

    assert parse_config(["--sp_size", "2", "--output_dir", "unused"]).sp_size == 2
    with pytest.raises(UserError, match="--sp_size 2 with --packing true is not supported"):
        parse_config(["--sp_size", "2", "--packing", "true", "--output_dir", "unused"])
    from focusft.core.sequence_parallel import groups

    with pytest.raises(UserError, match="needs 2 or more processes started by a launcher"):
        groups(2)
    from focusft.core.distributed import sequence_parallel_problem

    assert "but 1 process was started" in sequence_parallel_problem(2, env={})
    assert "but 3 processes were started" in sequence_parallel_problem(2, env={"WORLD_SIZE": "3"})
    assert sequence_parallel_problem(2, env={"WORLD_SIZE": "4"}) is None
    assert sequence_parallel_problem(1, env={}) is None
    from focusft.core.zero import check_engine

    sp_cfg = SimpleNamespace(sp_size=2, fsdp=None, merge_adapter=False, use_peft=False)
    with pytest.raises(UserError, match="--sp_size 2 under FSDP: .* DDP and ZeRO-2 only"):
        check_engine(sp_cfg, env={"ACCELERATE_USE_FSDP": "true"})
    check_engine(sp_cfg, env={})  # DDP: fine
    one = SimpleNamespace(sp_size=1, fsdp=None, fsdp_config={}, merge_adapter=False, use_peft=False)
    with pytest.raises(UserError, match="FSDP version 1.*fsdp_version: 2"):  # accelerate's default
        check_engine(one, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    check_engine(one, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    with pytest.raises(UserError, match="FSDP version 1"):  # the Trainer's own --fsdp
        check_engine(SimpleNamespace(**{**vars(one), "fsdp": "full_shard",
                                        "fsdp_config": {"version": 1}}), env={})
    merge = SimpleNamespace(**{**vars(one), "merge_adapter": True})
    check_engine(merge, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})  # no adapter
    with pytest.raises(UserError, match="--merge_adapter true under FSDP: no rank holds"):
        check_engine(merge, env={"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, adapter=True)
    check_engine(merge, env={}, adapter=True)  # DDP: the main process merges
    with pytest.raises(UserError, match="--sp_size must be"):
        parse_config(["--sp_size", "0", "--output_dir", "unused"])
    assert parse_config(["--sp_size", "1", "--output_dir", "unused"]).sp_size == 1
    cfg = SimpleNamespace(parallelism_config=None, attention="glm")
    assert parallelism_problem(cfg, env={}) is None
    message = parallelism_problem(cfg, env={"PARALLELISM_CONFIG_SP_SIZE": "4"})
    assert "sp_size 4" in message and "--sp_size N to focusft train" in message
    assert "causal" in parallelism_problem(cfg, env={"PARALLELISM_CONFIG_CP_SIZE": "2"})
    cfg.attention = "causal"
    assert parallelism_problem(cfg, env={"PARALLELISM_CONFIG_CP_SIZE": "2"}) is None


def test_srun_tasks_get_a_torch_world():
    """srun without torchrun: SLURM's variables become RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*."""
    from focusft.core.distributed import slurm_world
    from focusft.errors import UserError

    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    with pytest.raises(UserError, match="export MASTER_ADDR"):
        slurm_world(step)
    world = slurm_world({**step, "MASTER_ADDR": "node1"})
    assert world == {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                     "MASTER_PORT": "29500"}
    one_node = {**step, "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_TASKS_PER_NODE": "4"}
    assert slurm_world(one_node)["MASTER_ADDR"] == "127.0.0.1"
    assert slurm_world({**step, "WORLD_SIZE": "8"}) == {}  # srun + torchrun: torchrun's world
    batch_script = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}  # sbatch: one process, no step
    assert slurm_world(batch_script) == {} and launched_processes(batch_script) == 1
    assert launched_processes(step) == 4
    assert "started 4 processes" in launch_problem(world_size=1, use_cpu=False, env=step)
