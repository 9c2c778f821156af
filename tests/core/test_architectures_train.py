"""The matrix, end to end: a 3-step `focusft train` per family (in process) on a tiny model saved
with save_pretrained (safetensors) and the embedded default's tokenizer, reloaded in plain
transformers; refusals before anything is written; the self-check catching broken families and
leaving the model as it was."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from architectures import EXACT, build, cases
from focusft.sources import default
from focusft.core import models, selfcheck
from focusft.training.config import FocusConfig
from focusft.errors import UserError
from focusft.training.run import train

TOKENIZER = default.load_default_tokenizer()
ROWS = [{"messages": [{"role": "user", "content": f"Where is item {i}? It sat in the box {i} for a while."},
                      {"role": "assistant", "content": f"In the box {i}."},
                      {"role": "user", "content": "And then?"},
                      {"role": "assistant", "content": "Still there."}]} for i in range(4)]


def saved_model(tmp_path, name):
    model = build(name, vocab_size=len(TOKENIZER), pad_token_id=TOKENIZER.pad_token_id,
                  eos_token_id=TOKENIZER.eos_token_id, bos_token_id=None)
    path = tmp_path / "base"
    model.save_pretrained(path, safe_serialization=True)
    TOKENIZER.save_pretrained(path)
    return path


def config(tmp_path, model_dir, **extra):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    values = dict(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), max_steps=3,
                  per_device_train_batch_size=2, learning_rate=1e-3, max_length=128, logging_steps=1,
                  use_cpu=True, report_to=[], save_strategy="no", inner_objective="context")
    return FocusConfig(**{**values, **extra})


@pytest.mark.parametrize("name", cases(EXACT))
def test_focusft_train_three_steps_and_reload(tmp_path, name):
    base = saved_model(tmp_path, name)
    result = train(config(tmp_path, base))
    assert result["steps"] == 3 and result["train_loss"] == result["train_loss"]  # finite
    final = tmp_path / "run" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)
    before, after = load_file(base / "model.safetensors"), load_file(final / "model.safetensors")
    assert set(after) == set(before)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) >= len(before) // 2, f"only {len(moved)} of {len(before)} tensors trained"
    logits = reloaded(torch.tensor([[3, 4, 5]])).logits
    assert torch.isfinite(logits).all()


def test_refused_family_fails_before_anything_is_written(tmp_path):
    base = saved_model(tmp_path, "llama4-text")
    with pytest.raises(UserError, match="chunked attention"):
        train(config(tmp_path, base))
    assert not (tmp_path / "run").exists()


def test_selfcheck_catches_a_layer_that_drops_the_layout():
    model = build("llama")
    for layer in models.decoder_layers(model):
        attn_forward = layer.self_attn.forward
        layer.self_attn.forward = lambda *a, _f=attn_forward, **k: _f(*a, **{**k, "layout": None})
    with pytest.raises(UserError, match=r"llama.*attention logits differs by"):
        selfcheck.check_model(model, FocusConfig(output_dir="unused", use_cpu=True))


def test_selfcheck_catches_a_head_it_does_not_know():
    model = build("llama")  # a family whose forward scales its logits (unknown to focusft)
    model.register_forward_hook(lambda mod, args, out: out.__setitem__("logits", out.logits * 3.0))
    with pytest.raises(UserError, match="inner-loop logits differs by"):
        selfcheck.check_model(model, FocusConfig(output_dir="unused", use_cpu=True))


def _hooks(model):
    return [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()]


@pytest.mark.parametrize("name", ["stablelm", "mixtral"])
def test_selfcheck_leaves_the_model_as_it_was(name):
    model = build(name).train()
    impl, hooks = model.config._attn_implementation, _hooks(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    errors = selfcheck.check_model(model, FocusConfig(output_dir="unused", use_cpu=True))
    assert max(errors.values()) < 1e-5 and set(errors) == {"attention logits", "inner-loop logits",
                                                           "outer loss"}
    assert model.training and model.config._attn_implementation == impl
    assert _hooks(model) == hooks and not hasattr(model, "_focusft_prepared")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(p.grad is not None for p in model.parameters())


def test_skip_model_check_still_refuses_unsupported_families(tmp_path):
    base = saved_model(tmp_path, "llama4-text")
    with pytest.raises(UserError, match="chunked attention"):
        train(config(tmp_path, base, skip_model_check=True))


@pytest.mark.parametrize("name", ["llama", "mixtral", "gemma2"])
def test_selfcheck_passes_in_bfloat16_and_still_catches_a_dropped_layout(name):
    cfg = FocusConfig(output_dir="unused", use_cpu=True)
    model = build(name).to(torch.bfloat16)
    assert max(selfcheck.check_model(model, cfg).values()) < selfcheck.TOLERANCE[torch.bfloat16]
    for layer in models.decoder_layers(model):
        attn_forward = layer.self_attn.forward
        layer.self_attn.forward = lambda *a, _f=attn_forward, **k: _f(*a, **{**k, "layout": None})
    with pytest.raises(UserError, match="attention logits differs by"):
        selfcheck.check_model(model, cfg)


def test_failed_self_check_stops_training_before_anything_is_written(tmp_path, monkeypatch):
    base = saved_model(tmp_path, "llama")
    # as if focusft got the Llama head wrong: the self-check must see it, before any output
    monkeypatch.setitem(models.FAMILIES, "llama", models.Family(post_logits=lambda m, logits: logits * 2))
    with pytest.raises(UserError, match=r"model self-check failed for LlamaForCausalLM.*inner-loop logits"):
        train(config(tmp_path, base))
    assert not (tmp_path / "run").exists()


def test_eval_prefix_and_diagnose_glm_refuse_before_writing(tmp_path, capsys):
    from focusft.cli import main

    base = saved_model(tmp_path, "llama4-text")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["diagnose", "--model", str(base), "--data", str(data), "--mask", "glm",
                 "--out", str(tmp_path / "diag")]) == 2
    assert main(["eval", "--model", str(base), "--mask", "prefix", "--samples", "1", "--tasks", "qa1",
                 "--lengths", "0k", "--out", str(tmp_path / "ev")]) == 2
    assert "chunked attention" in capsys.readouterr().err
    assert not (tmp_path / "diag").exists() and not (tmp_path / "ev").exists()
