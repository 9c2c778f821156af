"""The trainer says when the inner loop hurts: ``inner_harm`` (outer loss with the adapted fast
weights / without them) is logged every window, and a warning naming --inner_lr / --inner_steps
fires when it stays above --harm_warn_ratio: for an absurd inner learning rate, not a sane one."""

import logging

import pytest

from chat_fixtures import chatml_tokenizer, save_chat_model
from focusft import FocusConfig, FocusTrainer
from focusft.training.trainer import inner_harm

ROWS = [{"messages": [{"role": "user", "content": f"Item {i} is in box {i % 3}. Where is item {i}?"},
                      {"role": "assistant", "content": f"In box {i % 3}."}]} for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model that has learned the rows (loss ~0.2): a random one predicts near-uniform
    logits, which no fast weights can make much worse."""
    root = tmp_path_factory.mktemp("harm")
    base = str(save_chat_model(root / "m", chatml_tokenizer()))
    cfg = FocusConfig(output_dir=str(root / "sft"), method="sft", max_steps=25, learning_rate=1e-2,
                      lr_scheduler_type="constant", per_device_train_batch_size=6, max_length=96,
                      report_to=[], disable_tqdm=True, save_strategy="no")
    trainer = FocusTrainer(model=base, args=cfg, train_dataset=ROWS)
    trainer.train()
    trainer.save_model(str(root / "sft"))
    return str(root / "sft")


def _train(model_dir, tmp_path, objective: str, inner_lr: float):
    cfg = FocusConfig(output_dir=str(tmp_path / f"{objective}-{inner_lr}"), max_steps=2,
                      logging_steps=1, inner_lr=inner_lr, inner_objective=objective,
                      fast_rank=4, max_length=96, per_device_train_batch_size=2,
                      report_to=[], disable_tqdm=True, save_strategy="no")
    trainer = FocusTrainer(model=model_dir, args=cfg, train_dataset=ROWS)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h and "inner_harm" in h]


@pytest.mark.parametrize("objective", ["response", "context"])
def test_an_absurd_inner_lr_is_reported_and_a_sane_one_is_not(model_dir, tmp_path, caplog,
                                                              objective):
    with caplog.at_level(logging.WARNING, logger="focusft"):
        sane = _train(model_dir, tmp_path, objective, 0.01)
    assert len(sane) == 2 and all(0.8 < h["inner_harm"] < 1.2 for h in sane), sane
    assert "inner loop makes the outer loss worse" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="focusft"):
        absurd = _train(model_dir, tmp_path, objective, 100.0)
    assert len(absurd) == 2 and all(h["inner_harm"] > 10 for h in absurd), absurd
    warned = [r.getMessage() for r in caplog.records if "makes the outer loss worse" in r.getMessage()]
    assert len(warned) == 1 and "--inner_lr" in warned[0] and "--inner_steps" in warned[0]
    if objective == "context":  # the loss without fast weights was measured by its own forward
        assert all("outer_loss_no_fast" in h for h in absurd)


def test_inner_harm_needs_both_losses():
    assert inner_harm({"outer_loss": 3.0}, "response") is None
    assert inner_harm({"outer_loss": 3.0, "inner_loss_1": 0.0}, "response") is None
    assert inner_harm({"outer_loss": 3.0, "inner_loss_1": 9.0}, "context") is None
