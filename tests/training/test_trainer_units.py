"""Trainer pieces that need no training run: seeds, the leak warning, config validation."""

import logging

import pytest

from focusft.training.config import parse_config
from focusft.errors import UserError
from focusft.training.trainer import FocusTrainer, sample_seed


def test_sample_seed_depends_on_run_epoch_and_sample_only():
    assert sample_seed(0, 0, 5) == sample_seed(0, 0, 5)
    assert len({sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}) == 450


class FakeTrainer:
    _check_leak = FocusTrainer._check_leak

    def __init__(self, **args):
        self.args = type("A", (), {"inner_steps": 2, "leak_warn_ratio": 0.1, "leak_warn_patience": 3,
                                "inner_objective": "response", **args})
        self._leak_windows = 0


def test_leak_warning_fires_after_patience_windows_of_outer_far_below_base(caplog):
    t = FakeTrainer()
    with caplog.at_level(logging.WARNING, logger="focusft"):
        for _ in range(2):
            t._check_leak({"inner_loss_1": 8.0, "outer_loss": 1e-6})
        assert "label leakage" not in caplog.text
        t._check_leak({"inner_loss_1": 8.0, "outer_loss": 1e-6})
        assert "label leakage" in caplog.text


def test_no_leak_warning_for_the_context_objective(caplog):
    # Its inner_loss_1 is a next-token loss on context tokens, not the base's answer loss.
    t = FakeTrainer(inner_objective="context")
    with caplog.at_level(logging.WARNING, logger="focusft"):
        for _ in range(10):
            t._check_leak({"inner_loss_1": 9.0, "outer_loss": 0.01})
    assert "label leakage" not in caplog.text


def test_no_leak_warning_when_outer_tracks_base(caplog):
    t = FakeTrainer()
    with caplog.at_level(logging.WARNING, logger="focusft"):
        for _ in range(10):
            t._check_leak({"inner_loss_1": 2.0, "outer_loss": 1.5})
    assert "label leakage" not in caplog.text


@pytest.mark.parametrize("flags,culprit", [
    (["--method", "dpo"], "--method"),
    (["--inner_steps", "-1"], "--inner_steps"),
    (["--fast_layer_fraction", "0"], "--fast_layer_fraction"),
    (["--attention_kernel", "flex"], "--attention_kernel"),
    (["--truncation", "middle"], "--truncation"),
    (["--diagnostics_mask", "glm,prefix"], "--diagnostics_mask"),
    (["--diagnostics_mask", "glm,glm"], "--diagnostics_mask"),
])
def test_bad_values_name_the_flag(flags, culprit):
    with pytest.raises(UserError, match=culprit):
        parse_config(["--output_dir", "x", *flags])


def test_diagnostics_masks_are_a_comma_list():
    assert parse_config(["--diagnostics_mask", "glm, causal"]).diagnostics_masks == ["glm", "causal"]
    assert parse_config([]).diagnostics_masks == ["causal"]


def test_yaml_config_with_flag_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner_steps: 4\nfast_target_modules: [up_proj, down_proj]\nlearning_rate: 0.001\n")
    cfg = parse_config(["--config", str(f), "--inner_steps", "1"])
    assert cfg.inner_steps == 1 and cfg.learning_rate == 0.001
    assert cfg.fast_target_modules == ["up_proj", "down_proj"]
    f.write_text("inner_stepz: 4\n")
    with pytest.raises(UserError, match="inner_stepz"):
        parse_config(["--config", str(f)])


def test_every_shipped_config_parses():
    from importlib import resources
    root = resources.files("focusft") / "configs"
    for name in ("tiny_default.yaml", "qwen2.5-7b-paper.yaml"):
        cfg = parse_config(["--config", str(root / name), "--bf16", "false"])  # CPU here
        assert cfg.method == "focusft"
