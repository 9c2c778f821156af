"""`focusft train` end to end on a tiny model: checkpoint is plain HF, logs carry the inner loop."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from chat_fixtures import save_chat_model
from focusft.cli import main

ROWS = [
    {"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is the cat?"},
                  {"role": "assistant", "content": f"On mat {i}."}]}
    for i in range(12)
]


@pytest.fixture
def tiny_dir(tmp_path):
    save_chat_model(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return tmp_path


def train(tiny_dir, *extra):
    out = tiny_dir / "run"
    code = main(["train", "--model", str(tiny_dir / "model"), "--data", str(tiny_dir / "train.jsonl"),
                 "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "3",
                 "--learning_rate", "1e-3", "--logging_steps", "1", "--fast_rank", "4",
                 "--max_length", "128", "--disable_tqdm", "true", *extra])
    assert code == 0
    return out


def logged(out):
    state = json.loads(sorted(out.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [h for h in state["log_history"] if "loss" in h]


def test_focusft_run_saves_plain_hf_checkpoint_that_reproduces_logits(tiny_dir):
    out = train(tiny_dir, "--save_strategy", "steps", "--save_steps", "4")
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "focusft.yaml").exists()
    logs = logged(out)
    assert len(logs) == 4
    assert all("inner_loss_1" in h and "inner_loss_2" in h and "inner_grad_norm_1" in h for h in logs)
    assert all("tokens_per_s" in h for h in logs)
    # Reload with plain transformers in a fresh interpreter that never imports focusft.
    probe = (
        "import sys, torch, json; from transformers import AutoModelForCausalLM;"
        f"m = AutoModelForCausalLM.from_pretrained({str(final)!r}).eval();"
        "assert 'focusft' not in sys.modules;"
        "ids = torch.arange(3, 40)[None];"
        "print(json.dumps(m(ids).logits[0, -1, :8].tolist()))"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    check=True).stdout)
    from safetensors.torch import load_file
    keys = load_file(final / "model.safetensors").keys()
    assert not any("fast" in k or "lora" in k for k in keys)
    cfg = Qwen2Config.from_pretrained(final)
    model = Qwen2ForCausalLM(cfg)
    model.load_state_dict(load_file(final / "model.safetensors"), strict=False)
    model.tie_weights()
    want = model.eval()(torch.arange(3, 40)[None]).logits[0, -1, :8].tolist()
    assert got == pytest.approx(want, abs=1e-6)
    base = Qwen2ForCausalLM.from_pretrained(tiny_dir / "model").eval()(torch.arange(3, 40)[None])
    assert base.logits[0, -1, :8].tolist() != pytest.approx(got, abs=1e-4)  # training moved it


@pytest.mark.parametrize("method,attention,extra", [
    ("sft", "causal", []), ("sft", "glm", []), ("focusft", "glm", ["--packing", "true"]),
    ("focusft", "causal", []),  # FocuSFT-causal: both loops under the causal mask
    ("focusft", "glm", ["--inner_objective", "context", "--train_sampling_strategy", "group_by_length"]),
])
def test_methods_and_options_run_through_the_same_pipeline(tiny_dir, method, attention, extra):
    out = train(tiny_dir, "--method", method, "--attention", attention, *extra)
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == method and result["steps"] == 4


def test_output_dir_not_empty_is_refused(tiny_dir, capsys):
    (tiny_dir / "run").mkdir()
    (tiny_dir / "run" / "x").write_text("keep me")
    with pytest.raises(AssertionError):
        train(tiny_dir)
    assert "--output_dir" in capsys.readouterr().err
    assert (tiny_dir / "run" / "x").read_text() == "keep me"


def test_summary_is_short_and_reads_the_inner_loop():
    """The end of `focusft train`: <= 15 lines; harm and leakage judged by the warning thresholds."""
    from focusft.commands.train import summary
    from focusft.training.config import parse_config

    cfg = parse_config(["--output_dir", "runs/x", "--model", "m", "--inner_objective", "response",
                        "--report_to", "tensorboard", "--logging_steps", "5"])
    result = {"checkpoint": "runs/x/final", "method": "focusft", "train_loss": 0.5, "steps": 10,
              "train_seconds": 12.5, "eval_loss": 1.25, "eval_focus_loss": 1.0,
              "history": [{"inner_harm": 0.9, "outer_loss": 0.01, "inner_loss_1": 3.0}] * 2}
    lines = summary(result, cfg)
    assert len(lines) <= 15 and lines[0] == "focusft train: done, 10 steps in 12.5 s"
    text = "\n".join(lines)
    assert "eval:        eval_loss 1.25, eval_focus_loss 1" in text
    assert "inner loop:  harm 0.9 (ok;" in text
    assert "leakage 0.00333 (LEAKING: the inner loop learns the answer" in text
    assert "final model: runs/x/final" in text and "runs/x/runs (tensorboard)" in text
    result["history"] = [{"inner_harm": 2.0, "outer_loss": 2.9, "inner_loss_1": 3.0}]
    text = "\n".join(summary(result, cfg))
    assert "harm 2 (overshooting;" in text and "leakage 0.967 (ok;" in text
    assert "no logged step" in "\n".join(summary({**result, "history": []}, cfg))
    sft = parse_config(["--output_dir", "runs/x", "--method", "sft", "--attention", "causal"])
    text = "\n".join(summary(result, sft))
    assert "method:      sft, causal mask\n" in text and "inner loop" not in text
    assert "embedded default" in text and "held-out" not in text
