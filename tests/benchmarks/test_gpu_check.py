"""The GPU check's CPU-runnable parts: flags, the page, log parsing, commands, and the equality
check on tiny shapes where FlexAttention runs (eagerly, forward only) on CPU."""

import json
from pathlib import Path

import pytest
import torch

from focusft.benchmarks import flex_equality, gpu_check


def test_flags():
    args = gpu_check.parse_args(["--out", "x", "--parts", "equality,bench", "--turns", "1,64"])
    assert args.parts == ["equality", "bench"] and args.turns == [1, 64] and args.device == "cuda"
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--parts", "equality,nope"])
    with pytest.raises(SystemExit):  # only the equality part runs on CPU
        gpu_check.parse_args(["--out", "x", "--device", "cpu"])


def test_logged_losses_reads_trainer_log_lines():
    text = "noise\n{'loss': 11.25, 'grad_norm': 3.0, 'epoch': 0.5}\n{'train_runtime': 3.0}\n{'loss': '10.5'}\n"
    assert gpu_check.logged_losses(text) == [11.25, 10.5]


def test_run_losses_prefer_the_result_file(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"history": [{"loss": 2.5}, {"eval": 1}, {"loss": 2.25}]}))
    assert gpu_check.run_losses(tmp_path, "{'loss': 9.0}") == [2.5, 2.25]
    assert gpu_check.run_losses(tmp_path / "none", "{'loss': 9.0}") == [9.0]


def test_bench_command_spells_the_qwen_shape_and_turns():
    cmd = gpu_check.bench_command(Path("o"), "4k,16k", "flex", 64, 100)
    text = " ".join(cmd)
    for flag in ("--layers 24", "--hidden 896", "--heads 14", "--kv-heads 2", "--intermediate 4864",
                 "--vocab 151936", "--tied true", "--attention-kernel flex", "--turns 64",
                 "--dtype bfloat16", "--lengths 4k,16k"):
        assert flag in text
    assert "--turns" not in gpu_check.bench_command(Path("o"), "4k", "sdpa", None, 9)


def test_bench_command_parses_with_focusft_bench_flags():
    from focusft import cli
    from focusft.commands.bench import spec_from_args

    cmd = gpu_check.bench_command(Path("o"), "4k,16k,32k", "flex", None, 100)
    spec = spec_from_args(cli.build_parser(cmd[3:]).parse_args(cmd[3:]))
    assert spec.model.layers == 24 and spec.model.vocab == 151936 and spec.model.tied
    assert spec.attention_kernel == "flex" and spec.lengths == (4096, 16384, 32768) and not spec.isolate


def test_train_command_parses_with_focusft_train_flags(tmp_path):
    from focusft.training.config import parse_config

    cmd = gpu_check.train_command(tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "out", "flex")
    cuda = torch.cuda.is_available()
    if not cuda:  # flex and bf16 are refused without CUDA: the rest of the command is checked
        cmd[cmd.index("flex")] = "sdpa"
        cmd[cmd.index("--bf16") + 1] = "false"
    cfg = parse_config(cmd[4:])
    assert cfg.max_steps == 3 and cfg.bf16 == cuda and cfg.max_length == 8192
    assert cfg.attention_kernel == ("flex" if cuda else "sdpa") and cfg.save_strategy == "no"


def fake_report():
    return {"command": "python -m focusft.benchmarks.gpu_check --out docs", "created": "2026-01-01 00:00 UTC",
            "wall_s": 400.0,
            "machine": {"torch": "2.13.0", "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3",
                        "gpu_memory_gib": 79.1, "capability": "9.0", "cuda": "12.8"},
            "parts": {
                "equality": {"rows": [{"check": "backward", "dtype": "bfloat16", "output": 3e-3, "grad": 9e-3,
                                       "tensors": 40, "passed": True,
                                       "tolerance": flex_equality.TOLERANCE["bfloat16"]},
                                      {"check": "kernel", "dtype": "float32", "error": "boom", "passed": False}],
                             "passed": False},
                "train": {"runs": {"flex": {"status": "ok", "losses": [12.1, 11.9, 11.7], "wall_s": 80.0}},
                          "passed": True},
                "syncs": {"kernels": {"flex": {"total": 3, "sites": {"core/step.py:62 (_make_targets)": 3}, "recompiled": 0}},
                          "passed": True},
                "bench": {"cells": [{"kernel": "sdpa", "turns": 1, "status": "ok", "command": "focusft bench --x",
                                     "results": [{"method": "focusft", "seq_len": 4096, "status": "ok",
                                                  "median_s": 0.5, "peak_mem_bytes": 3 * 2**30}]},
                                    {"kernel": "flex", "turns": 1, "status": "not run (time budget)"}],
                          "note": "`focusft bench` has no --turns yet: 1 turn only", "passed": False}}}


def test_page_names_the_device_and_every_result():
    page = gpu_check.render_page(fake_report())
    for text in ("NVIDIA H100 80GB HBM3", "torch 2.13.0", "| backward | bfloat16 | 3.0e-03 | 9.0e-03 | 2e-02 / 5e-02 | pass |",
                 "error: boom", "12.100, 11.900, 11.700", "`core/step.py:62 (_make_targets)` (3) | 0 |",
                 "| sdpa | 1 | focusft | 4096 | 0.50 | 3.00 | ok |", "not run (time budget)",
                 "no --turns yet", "    focusft bench --x"):
        assert text in page, text


def test_the_cpu_equality_part_writes_a_passing_page(tmp_path):
    code = gpu_check.main(["--out", str(tmp_path), "--parts", "equality", "--device", "cpu"])
    report = json.loads((tmp_path / "benchmark-gpu.json").read_text())
    rows = report["parts"]["equality"]["rows"]
    assert code == 0 and rows and all(r["passed"] for r in rows)
    assert {r["check"] for r in rows} >= {"forward", "forward, packed rows", "kernel: sinks+window"}
    assert max(r["output"] for r in rows) < 1e-5  # float32, eager: the same math
    assert "| forward | float32 |" in (tmp_path / "benchmark-gpu.md").read_text()


@pytest.mark.parametrize("inner, checkpointing, packed", [("response", False, False), ("context", True, False),
                                                          ("response", False, True)])
def test_the_step_the_gpu_compares_runs_on_the_sdpa_side(inner, checkpointing, packed):
    # The flex side needs CUDA for its backward; the SDPA side (and the wiring) runs here.
    model = flex_equality.tiny_model("cpu", torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    batch = flex_equality.make_batch("cpu", packed)
    out = flex_equality._step(model, batch, "sdpa", inner, backward=True)
    again = flex_equality._step(model, batch, "sdpa", inner, backward=True)
    assert len(out["inner losses"]) == 2 and sum(k.startswith("grad") for k in out) > 10
    assert flex_equality._compare(again, out)["grad"] == 0.0
