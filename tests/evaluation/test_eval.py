"""Evaluation inside training: eval_loss is the saved model's own loss under the configured mask.

Reference: the model's own eager forward under the dense element-wise GLM mask (test_masks'
brute force), one sample at a time, full-vocabulary logits, no fast weights.
"""

import json

import datasets
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback, Qwen2Config, Qwen2ForCausalLM

from chat_fixtures import chatml_tokenizer
from focusft.cli import main
from focusft.training.config import FocusConfig
from focusft.data.pipeline import Collator, tokenize_rows
from focusft.core.fast_weights import FastWeights
from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
from focusft.core.inner import InnerConfig
from focusft.training.trainer import FocusTrainer, sample_seed
from references import brute_force_glm

ROWS = [{"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is it?"},
                      {"role": "assistant", "content": f"On mat {i}."},
                      {"role": "user", "content": "Sure?"},
                      {"role": "assistant", "content": f"Yes, {i}."}]} for i in range(10)]


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(cfg)


def make_trainer(tok, tmp_path, rows=ROWS, model=None, **kwargs):
    data, _ = tokenize_rows(datasets.Dataset.from_list(rows), tok, 256, "error", "test rows")
    args = dict(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                per_device_eval_batch_size=len(rows), learning_rate=1e-3, logging_steps=1,
                fast_rank=4, report_to=[], disable_tqdm=True, seed=3, eval_inner_loop=True)
    cfg = FocusConfig(**{**args, **kwargs.pop("args", {})})
    return FocusTrainer(model or tiny_model(tok), cfg, train_dataset=data, eval_dataset=data,
                        data_collator=Collator(pad_id=tok.pad_token_id), processing_class=tok, **kwargs)


def reference_eval_loss(model, data) -> float:
    """Token mean of assistant-token CE over all samples: eager attention, dense GLM mask."""
    model = model.eval()
    model.set_attn_implementation("eager")
    total, count = 0.0, 0
    with torch.no_grad():
        for row in data:
            ids, lm = torch.tensor(row["input_ids"]), torch.tensor(row["loss_mask"]).bool()
            n = len(ids)
            allowed = brute_force_glm(lm.int().tolist(), n, n)
            mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
            logits = model(ids[None], attention_mask=mask).logits[0]
            pos = lm[1:].nonzero()[:, 0]
            total += F.cross_entropy(logits[pos], ids[pos + 1], reduction="sum").item()
            count += len(pos)
    return total / count


def test_evaluate_gives_the_saved_models_loss_and_the_inner_loop_loss(tok, tmp_path):
    trainer = make_trainer(tok, tmp_path)
    metrics = trainer.evaluate()
    want = reference_eval_loss(tiny_model(tok), trainer.eval_dataset)
    assert metrics["eval_loss"] == pytest.approx(want, rel=1e-5)
    # The second metric: fast weights adapted on each eval sample first (same code path as a
    # training step, seeded by the sample id); test_step checks that path against a dense reference.
    model = tiny_model(tok)
    model.set_attn_implementation("focusft")
    fast = FastWeights(model, rank=4, alpha=64.0)
    step = BilevelStep(model, fast, InnerConfig())
    batch = Collator(pad_id=tok.pad_token_id)([trainer.eval_dataset[i] for i in range(len(ROWS))])
    seeds = [sample_seed(3, 0, int(s)) for s in batch["sample_ids"]]
    arm_inner(fast, step, batch, seeds)
    focus, _ = outer_loss(model, batch, batch_layout(batch, "glm"), None)
    assert metrics["eval_focus_loss"] == pytest.approx(float(focus), rel=1e-5)
    assert metrics["eval_focus_loss"] < metrics["eval_loss"] - 1e-3  # the inner loop did adapt
    assert all(s.a is None for s in trainer.fast.slots)  # cleared again after evaluation


def test_predict_logits_line_up_with_label_ids(tok, tmp_path):
    trainer = make_trainer(tok, tmp_path, args={"per_device_eval_batch_size": 3})
    out = trainer.predict(trainer.eval_dataset)
    logits, labels = torch.tensor(out.predictions), torch.tensor(out.label_ids)
    assert logits.shape[:2] == labels.shape and logits.shape[-1] == len(tok)
    keep = labels != -100
    ce = F.cross_entropy(logits[keep], labels[keep]).item()
    want = reference_eval_loss(tiny_model(tok), trainer.eval_dataset)
    assert ce == pytest.approx(want, rel=1e-5)  # every label scored once, by its own logits


def test_compute_metrics_and_sft_method(tok, tmp_path):
    def accuracy(pred):
        logits, labels = pred.predictions, pred.label_ids
        keep = labels != -100
        return {"token_accuracy": float((logits.argmax(-1) == labels)[keep].mean())}

    trainer = make_trainer(tok, tmp_path, args={"method": "sft"}, compute_metrics=accuracy)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_token_accuracy"] <= 1.0 and "eval_focus_loss" not in metrics
    assert metrics["eval_loss"] == pytest.approx(
        reference_eval_loss(tiny_model(tok), trainer.eval_dataset), rel=1e-5)


def test_early_stopping_and_load_best_model_at_end(tok, tmp_path):
    # threshold 100: no evaluation counts as an improvement after the first, so with patience 1
    # training stops at the second evaluation, and the best (first) checkpoint is loaded back.
    args = {"max_steps": 20, "eval_strategy": "steps", "eval_steps": 1, "save_strategy": "steps",
            "save_steps": 1, "load_best_model_at_end": True, "metric_for_best_model": "eval_loss"}
    stop = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=100.0)
    trainer = make_trainer(tok, tmp_path, args=args, callbacks=[stop])
    trainer.train()
    assert trainer.state.global_step == 2
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2] and all("eval_focus_loss" in h for h in evals)
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    best = load_file(tmp_path / "run" / "checkpoint-1" / "model.safetensors")
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in best.items())
    assert not all(torch.equal(state[k], v) for k, v in
                   load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors").items())


def test_cli_eval_strategy_steps(tok, tmp_path):
    model = tiny_model(tok)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "cli"
    code = main(["train", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--eval_data", str(data), "--eval_strategy", "steps", "--eval_steps", "2",
                 "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2",
                 "--fast_rank", "4", "--max_length", "256", "--disable_tqdm", "true",
                 "--save_strategy", "steps", "--save_steps", "4", "--report_to", "none",
                 "--eval_inner_loop", "true"])
    assert code == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(h["eval_focus_loss"] > 0 and h["eval_loss"] > 0 for h in evals)


def test_inner_loop_metric_is_opt_in(tok, tmp_path):
    assert FocusConfig(output_dir=str(tmp_path)).eval_inner_loop is False
    metrics = make_trainer(tok, tmp_path, args={"eval_inner_loop": False}).evaluate()
    assert "eval_focus_loss" not in metrics
    assert metrics["eval_loss"] == pytest.approx(
        reference_eval_loss(tiny_model(tok), make_trainer(tok, tmp_path).eval_dataset), rel=1e-5)
