"""Helpers of the multi-process tests: launch commands (2 CPU ranks) and reading a run's outputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ROOT / "focusft" / "configs" / "accelerate"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}


GLOO_ABORT = "terminate called without an active exception"


def run(cmd: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    """Run a launch; must exit 0. A rank that dies in gloo's C++ threads (SIGABRT with
    GLOO_ABORT, rare, seen once on a loaded 2-core machine) is an infrastructure fault, not a
    result: that launch is retried once. Every assertion of the worker still holds on the retry."""
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and GLOO_ABORT in proc.stderr:
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]


def accelerate_launch(config: str, *args: str) -> list[str]:
    """`accelerate launch` of a shipped config on 2 CPU processes (no mixed precision on CPU)."""
    return [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
            "--num_processes", "2", "--main_process_port", str(free_port()),
            "--mixed_precision", "no", *args]


def log_history(checkpoint: Path) -> dict[int, dict]:
    """step -> the training log line of that step (loss, grad_norm, outer/inner statistics)."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


def logged_losses(checkpoint: Path) -> dict[int, float]:
    return {step: h["loss"] for step, h in log_history(checkpoint).items()}


def safetensors_of(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def srun_like(cmd: list[str], tasks: int = 2, timeout: int = 180) -> list[str]:
    """Start `cmd` as `srun --ntasks N` would on one node: N processes that only have SLURM's
    variables (no torchrun); every one must exit 0. Returns their stdouts."""
    port = str(free_port())
    procs = []
    for rank in range(tasks):
        env = {k: v for k, v in ENV.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(SLURM_JOB_ID="1", SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS=str(tasks),
                   SLURM_NTASKS=str(tasks), SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                   SLURM_STEP_NUM_NODES="1", SLURM_NNODES="1", SLURM_STEP_TASKS_PER_NODE=str(tasks),
                   MASTER_PORT=port)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{' '.join(cmd)}\n{out[-3000:]}\n{err[-6000:]}"
    return [out for out, _ in outs]
