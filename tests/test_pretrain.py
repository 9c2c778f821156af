"""`focusft pretrain`: a short next-token stage writes a plain, reloadable checkpoint."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from focusft.errors import UserError
from focusft.pretrain import PretrainConfig, pretrain


def test_pretrain_writes_reloadable_checkpoint(tmp_path):
    out = tmp_path / "base"
    summary = pretrain(PretrainConfig(output_dir=str(out), steps=4, seq_len=64, batch_size=2,
                                      warmup=1, log_every=2), log=lambda *_: None)
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 64
    assert len(summary["history"]) == 2 and math.isfinite(summary["final_loss"])
    assert json.loads((out / "pretrain.json").read_text())["final_loss"] == summary["final_loss"]
    assert (out / "model.safetensors").exists() and not list(tmp_path.glob(".base-*"))
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.arange(1, 17)[None]
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_pretrain_rejects_bad_sizes(tmp_path):
    with pytest.raises(UserError, match="--steps"):
        pretrain(PretrainConfig(output_dir=str(tmp_path / "x"), steps=0), log=lambda *_: None)
    assert not (tmp_path / "x").exists()
