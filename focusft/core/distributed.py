"""Distributed-training helpers: launch checks, SLURM's srun, and FSDP2's re-entrant inner loop.

The inner loop is rank-local: it differentiates the fast tensors only
(``torch.autograd.grad``), so no AccumulateGrad node of a base parameter runs, no DDP reducer
hook fires and nothing is all-reduced. Two things still need care:

* ``launch_problem``: transformers' Trainer only goes multi-process on a CPU-only machine when
  told ``--use_cpu true``; otherwise every process trains its own copy and nobody notices. And
  ``accelerate launch --cpu --num_processes N`` starts one process. Both are refused, with the
  command that works.
* ``adopt_slurm``: processes that ``srun`` starts directly (one task per device) learn their
  rank and the world from SLURM's variables, as under torchrun.
* ``nested_fsdp_call``: under FSDP2 (``fully_shard``, accelerate ``fsdp_version: 2``) the inner
  loop calls the sharded top layers again, forward and backward, from inside the outer forward
  of the first adapted layer. FSDP's own bookkeeping assumes one forward then one backward per
  iteration; the guard keeps it consistent (see its docstring). Every rank runs the inner loop
  (even with no loss token), so every rank issues the same all-gathers.
"""

from __future__ import annotations

import contextlib
import os

import torch


# Process counts a launcher leaves in the environment: torchrun / accelerate / deepspeed, MPI, and
# srun (SLURM_STEP_NUM_TASKS: the tasks of this job step; SLURM_NTASKS alone is also set in a
# batch script that runs one process, so it counts only inside a step, with SLURM_STEP_ID).
SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
             "SLURM_STEP_NUM_TASKS")


def launched_processes(env=os.environ) -> int:
    """How many processes the launcher says it started (1 when none says)."""
    counts = [int(env[v]) for v in SIZE_VARS if env.get(v, "").isdigit()]
    if "SLURM_STEP_ID" in env and env.get("SLURM_NTASKS", "").isdigit():
        counts.append(int(env["SLURM_NTASKS"]))
    return max(counts or [1])


def slurm_world(env=os.environ) -> dict[str, str]:
    """torch.distributed's variables for processes that ``srun`` started directly (one task per
    device, no torchrun): RANK = SLURM_PROCID, WORLD_SIZE = the step's tasks, LOCAL_RANK =
    SLURM_LOCALID, rendezvous at MASTER_ADDR:MASTER_PORT (127.0.0.1:29500 on one node).

    Empty when this is not an srun step of several tasks, or when a launcher inside it (torchrun,
    accelerate) already set WORLD_SIZE. On several nodes MASTER_ADDR must be exported (rank 0's
    host); without it a `UserError` says how.
    """
    tasks = env.get("SLURM_STEP_NUM_TASKS") or (env.get("SLURM_NTASKS") if "SLURM_STEP_ID" in env else "")
    if not (tasks or "").isdigit() or int(tasks) < 2 or "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return {}
    world = {"WORLD_SIZE": tasks, "RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
             "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "")).split("(")[0]
    if per_node.isdigit():
        world["LOCAL_WORLD_SIZE"] = per_node
    nodes = env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1"))
    if "MASTER_ADDR" not in env:
        if nodes != "1":
            from focusft.errors import UserError

            raise UserError(f"srun started {tasks} tasks on {nodes} nodes: export MASTER_ADDR, rank "
                            "0's host, before srun, e.g. export MASTER_ADDR=$(scontrol show hostnames "
                            '"$SLURM_JOB_NODELIST" | head -n 1)')
        world["MASTER_ADDR"] = "127.0.0.1"
    return world


def adopt_slurm(env=os.environ) -> None:
    """Under ``srun`` without torchrun: set torch.distributed's variables (see `slurm_world`)."""
    for key, value in slurm_world(env).items():
        env.setdefault(key, value)


def launch_problem(world_size: int, use_cpu: bool, env=os.environ) -> str | None:
    """A message when the processes that were asked for will not train together.

    * N processes started (torchrun, accelerate, deepspeed, mpirun), but the trainer sees a world
      of 1: on a machine without GPUs transformers forms a process group only with --use_cpu.
    * ``accelerate launch --cpu --num_processes N`` (N > 1) without ``--mpirun_hostfile`` starts
      one process (accelerate launches several CPU processes only through mpirun); it leaves
      ``ACCELERATE_USE_CPU`` and ``MASTER_ADDR`` set, and no world size.
    """
    launched = launched_processes(env)
    if launched > 1 and world_size == 1:
        return (f"the launcher started {launched} processes but the trainer sees a world of 1, so "
                f"each process would train its own model copy. {_working_command(launched)}")
    accelerate_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    if launched == 1 and world_size == 1 and accelerate_cpu and "MASTER_ADDR" in env:
        return ("`accelerate launch --cpu --num_processes N` started a single process (accelerate "
                "starts several CPU processes only through mpirun, with --mpirun_hostfile), so the "
                f"run would not be distributed. {_working_command(2)} For one process, launch "
                "with --num_processes 1 (or run `focusft train` directly).")
    return None


def sequence_parallel_problem(sp_size: int, env=os.environ) -> str | None:
    """A message when ``--sp_size`` cannot form groups of the processes the launcher started."""
    launched = launched_processes(env)
    if sp_size > 1 and launched % sp_size:
        return (f"--sp_size {sp_size} splits each sequence over {sp_size} processes, but "
                f"{launched} process{'es were' if launched > 1 else ' was'} started; launch a "
                f"multiple of {sp_size}, e.g. torchrun --nproc_per_node {sp_size} -m focusft.cli "
                "train ... --sp_size " + str(sp_size))
    return None


def sequence_parallel_refusal(what: str) -> str:
    """Why `what` (a launcher setting asking for accelerate's own sequence parallelism) is refused."""
    return (f"{what}: accelerate's sequence parallelism replaces the attention and the loss with "
            "its own (DeepSpeed ALST), which knows neither focusft's GLM block layout nor its "
            "per-sample inner loop. Leave sp_size out of the accelerate config and pass "
            "--sp_size N to focusft train instead (the same Ulysses split, with the GLM layout and "
            "the inner loop kept exact); see docs/distributed.md.")


def parallelism_problem(cfg, env=os.environ) -> str | None:
    """A message when the accelerate parallelism config asks for what focusft cannot do exactly.

    * sequence parallelism (``sp_size`` > 1): see `sequence_parallel_refusal`;
    * torch context parallelism (``cp_size`` > 1): accelerate's hook drops the attention mask
      and forces causal attention, so GLM blocks would silently train as causal.
    """
    pc = getattr(cfg, "parallelism_config", None)
    sp = getattr(pc, "sp_size", None) or int(env.get("PARALLELISM_CONFIG_SP_SIZE", "1") or 1)
    cp = getattr(pc, "cp_size", None) or int(env.get("PARALLELISM_CONFIG_CP_SIZE", "1") or 1)
    if sp > 1:
        return sequence_parallel_refusal(f"the accelerate parallelism config's sp_size {sp}")
    if cp > 1 and cfg.attention == "glm":
        return (f"the accelerate parallelism config's cp_size {cp}: torch context parallelism "
                "drops the attention mask and attends causally, so --attention glm would silently "
                "train as causal. Use cp_size 1 (or --attention causal).")
    return None


def _working_command(n: int) -> str:
    cpu = "" if torch.cuda.is_available() else " --use_cpu true"
    return (f"Launch with: torchrun --nproc_per_node {n} -m focusft.cli train <your flags>{cpu}"
            + ("" if cpu else " (or accelerate launch --num_processes N -m focusft.cli train ...)")
            + ".")


@contextlib.contextmanager
def nested_fsdp_call(layer: torch.nn.Module):
    """Run the inner loop re-entrantly on FSDP2-sharded layers; a no-op for anything else.

    `layer` is the first adapted decoder layer, whose forward pre-hook runs the inner loop
    after FSDP has unsharded it. Inside the block:

    * the root's post-backward final callback is marked as already queued, so the inner
      ``autograd.grad`` calls do not run it (it would reshard the root, whose norm and lm_head
      the inner loop and the outer forward still use, and end the iteration);
    * the layers' own hooks all-gather / reshard around each nested call as usual, and the
      post-backward of a nested call finds no base gradient (none is formed), so it reduces
      nothing.

    On exit every non-root FSDP state is set back to IDLE (as the final callback would do) and
    `layer` is unsharded again, since its nested calls resharded it; the outer forward then
    continues as if the inner loop had not happened, and the outer backward is FSDP's usual one.
    Relies on FSDP2 internals (``_get_fsdp_state``, ``_state_ctx``, ``_training_state``) of
    torch 2.13; checked by tests/training/test_distributed.py.
    """
    get_state = getattr(layer, "_get_fsdp_state", None)
    if get_state is None:
        yield
        return
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    ctx = get_state()._state_ctx
    queued, ctx.post_backward_final_callback_queued = ctx.post_backward_final_callback_queued, True
    try:
        yield
    finally:
        ctx.post_backward_final_callback_queued = queued
    for state in ctx.all_states:
        if getattr(state, "_is_root", False):
            continue  # the root is in the middle of its forward
        for group in state._fsdp_param_groups:
            group._training_state = TrainingState.IDLE
        state._training_state = TrainingState.IDLE
    layer.unshard()
