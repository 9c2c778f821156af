"""Interrupt a run with SIGINT / SIGTERM, resume it, and get exactly the uninterrupted run.

The signal is sent by the process to itself from inside the training loop (at the end of a
chosen optimizer step), which is what a Ctrl-C or a scheduler's SIGTERM does, but at a
deterministic point. 8 samples, batch 2: 4 steps per epoch, 6 steps cross an epoch boundary,
so both the in-epoch data position and the epoch-seeded fast-weight draws must resume exactly.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from chat_fixtures import save_chat_model
from focusft.training import faults
from focusft.cli import main

ROWS = [{"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is the cat?"},
                      {"role": "assistant", "content": f"On mat {i}."}]} for i in range(8)]
KEYS = ("loss", "grad_norm", "learning_rate", "inner_loss_1", "inner_loss_2", "outer_loss", "epoch")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_chat_model(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def train(root, out, *extra):
    return main(["train", "--model", str(root / "model"), "--data", str(root / "train.jsonl"),
                 "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "2",
                 "--learning_rate", "1e-3", "--logging_steps", "1", "--fast_rank", "4",
                 "--fast_dropout", "0.1",  # the inner loop draws from the global RNG too
                 "--max_length", "128", "--disable_tqdm", "true", "--seed", "7",
                 "--save_strategy", "steps", "--save_steps", "6", *extra])


def history(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [{k: h[k] for k in KEYS if k in h} for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    out = setup / "straight"
    assert train(setup, out) == 0
    return out


def interrupt_at(monkeypatch, step, signum):
    original = faults.GracefulStop.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step and self.signum is None:
            os.kill(os.getpid(), signum)  # handled at once by the installed handler
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(faults.GracefulStop, "on_step_end", on_step_end)


@pytest.mark.parametrize("step,signum", [(3, signal.SIGINT), (5, signal.SIGTERM)])
def test_interrupt_then_resume_reproduces_the_uninterrupted_run(setup, uninterrupted, monkeypatch,
                                                                capsys, step, signum):
    out = setup / f"cut-{step}"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupt_at(monkeypatch, step, signum)
    code = train(setup, out)
    err = capsys.readouterr().err
    assert code == 128 + signum, err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    name = signal.Signals(signum).name
    assert f"stopped by {name} after the current step" in err
    assert f"checkpoint-{step}" in err and "--resume_from_checkpoint last" in err and str(out) in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}"]
    assert not (out / "final").exists()
    assert len(history(out / f"checkpoint-{step}")) == step

    monkeypatch.undo()
    assert train(setup, out, "--resume_from_checkpoint", "last") == 0
    want, got = history(uninterrupted / "checkpoint-6"), history(out / "checkpoint-6")
    assert len(want) == 6
    assert got == want  # exact: same floats, step by step
    a = load_file(uninterrupted / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_signal_aborts_at_once():
    stop = faults.GracefulStop()
    with stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_from_outside_a_real_process(setup):
    """The real thing: a separate `focusft train` process, SIGTERM once it has logged a step."""
    out = setup / "external"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "focusft.cli", "train", "--model", str(setup / "model"),
           "--data", str(setup / "train.jsonl"), "--output_dir", str(out), "--max_steps", "100000",
           "--per_device_train_batch_size", "2", "--logging_steps", "1", "--fast_rank", "4",
           "--max_length", "128", "--disable_tqdm", "true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # the Trainer prints one dict per logged step
            if "'loss'" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume_from_checkpoint last" in err
    assert "Traceback" not in err
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").exists()
    assert not list(out.glob("_staging-*")) and not (out / "final").exists()
