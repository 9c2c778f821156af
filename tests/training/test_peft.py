"""Outer PEFT (LoRA, QLoRA 4-bit on bitsandbytes' CPU backend) with the inner fast weights.

The exactness check: fast weights hooked on a PEFT LoRA layer see exactly what they see on a
plain Linear whose weight is W + s B A (the LoRA merged in), so the FocuSFT step on the PEFT
model (inner losses, outer loss) equals the step on the merged plain model.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from chat_fixtures import chatml_tokenizer, save_chat_model
from focusft.core import attention  # noqa: F401
from focusft.cli import main
from focusft.core.fast_weights import FastWeights
from focusft.core.inner import InnerConfig
from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
from tiny import make_batch, tiny_qwen2

ROWS = [{"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is the cat?"},
                      {"role": "assistant", "content": f"On mat {i}."}]} for i in range(8)]
MLP = ["gate_proj", "up_proj", "down_proj"]


def focus_step(model, batch):
    model.set_attn_implementation("focusft")
    fast = FastWeights(model, rank=4, alpha=8.0)
    bilevel = BilevelStep(model, fast, InnerConfig(steps=2))
    arm_inner(fast, bilevel, batch, [5, 6, 7])
    loss, _ = outer_loss(model, batch, batch_layout(batch, "glm"), None)
    return loss, bilevel.stats, fast


def test_fast_weights_on_a_lora_layer_equal_fast_weights_on_the_merged_linear():
    from peft import LoraConfig, get_peft_model

    batch = make_batch([[(5, 0), (3, 1), (4, 0), (2, 1)], [(6, 0), (4, 1)], [(3, 0), (2, 1)]], seed=1)
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_qwen2(), LoraConfig(r=4, lora_alpha=8, target_modules=MLP + ["q_proj"],
                                                         init_lora_weights=False))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    loss, stats, fast = focus_step(peft_model, batch)
    assert len(fast.slots) == 6 and all(hasattr(s.module, "base_layer") for s in fast.slots)
    want, want_stats, _ = focus_step(merged, batch)
    torch.testing.assert_close(torch.stack(stats.losses), torch.stack(want_stats.losses))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert float(stats.grad_norms[0]) > 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    save_chat_model(root / "model", hidden=64, intermediate=128)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def train(root, out, *extra, model=None):
    code = main(["train", "--model", str(model or root / "model"), "--data", str(root / "train.jsonl"),
                 "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2",
                 "--learning_rate", "1e-2", "--logging_steps", "1", "--fast_rank", "4",
                 "--max_length", "128", "--disable_tqdm", "true", "--report_to", "none", "--seed", "3",
                 "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
                 *extra])
    assert code == 0
    return out


def logs(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def base_unchanged_and_adapter_trained(root, final):
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B moved from 0
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(root / "model")


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], MLP])
def test_lora_on_attention_or_on_the_fast_targets(setup, targets):
    out = train(setup, setup / f"lora-{targets[0]}", "--lora_target_modules", *targets,
                "--save_strategy", "steps", "--save_steps", "4")
    base_unchanged_and_adapter_trained(setup, out / "final")
    history = logs(out / "checkpoint-4")
    assert len(history) == 4 and all(h["inner_grad_norm_1"] > 1e-4 for h in history)
    card = (out / "final" / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card and "`lora_r` | `4`" in card
    keys = load_file(out / "final" / "adapter_model.safetensors").keys()
    assert any(t in k for k in keys for t in targets)


def test_resume_a_peft_run_reproduces_it(setup):
    straight = train(setup, setup / "straight", "--lora_target_modules", *MLP,
                     "--save_strategy", "steps", "--save_steps", "2")
    resumed = train(setup, setup / "resumed", "--lora_target_modules", *MLP,
                    "--save_strategy", "steps", "--save_steps", "2",
                    "--resume_from_checkpoint", str(straight / "checkpoint-2"))
    keys = ("loss", "grad_norm", "inner_loss_1", "inner_loss_2")
    want = [{k: h[k] for k in keys} for h in logs(straight / "checkpoint-4")]
    got = [{k: h[k] for k in keys} for h in logs(resumed / "checkpoint-4")]
    assert got == want
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_dir_as_model_continues_training(setup):
    first = train(setup, setup / "first", "--lora_target_modules", *MLP)
    again = train(setup, setup / "again", model=first / "final")
    before = load_file(first / "final" / "adapter_model.safetensors")
    after = load_file(again / "final" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[k], after[k]) for k in before)  # it trained further
    assert json.loads((again / "final" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(setup / "model")


def test_eval_and_diagnose_read_an_adapter_dir_merged(setup, capsys):
    """`focusft eval` / `diagnose` take a --use_peft run's final/: its base with the adapter
    merged, equal to PEFT's own (unmerged) forward."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from focusft.evaluation.runner import load_checkpoint

    final = train(setup, setup / "for-eval", "--lora_target_modules", "q_proj", "v_proj", *MLP) / "final"
    merged, tokenizer = load_checkpoint(str(final))
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(setup / "model")),
                                          str(final)).eval()
    ids = torch.tensor([tokenizer("Where is the key? It is in the box.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert main(["eval", "--model", str(final), "--tasks", "qa1", "--lengths", "0k", "--samples",
                 "1", "--no_few_shot", "--out", str(setup / "adapter-eval")]) == 0, capsys.readouterr().err
    assert main(["diagnose", "--model", str(final), "--data", str(setup / "train.jsonl"),
                 "--samples", "1", "--out", str(setup / "adapter-diag")]) == 0, capsys.readouterr().err


def test_qlora_4bit_with_checkpointing_then_merge(setup):
    out = train(setup, setup / "qlora", "--load_in_4bit", "true", "--lora_target_modules", *MLP,
                "q_proj", "--gradient_checkpointing", "true", "--merge_adapter", "true",
                "--gradient_checkpointing_kwargs", '{"use_reentrant": true}',
                "--save_strategy", "steps", "--save_steps", "4")
    history = logs(out / "checkpoint-4")
    assert all(h["inner_grad_norm_1"] > 1e-4 for h in history)  # reentrant ckpt: inner loop alive
    final = out / "final"
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    merged = load_file(final / "model.safetensors")
    base = load_file(setup / "model" / "model.safetensors")
    assert merged.keys() == base.keys() and merged["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32
    assert not torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])
    probe = ("import sys; from transformers import AutoModelForCausalLM;"
             f"AutoModelForCausalLM.from_pretrained({str(final)!r}); assert 'peft' not in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_kbit_without_peft_is_refused(setup, capsys):
    code = main(["train", "--model", str(setup / "model"), "--data", str(setup / "train.jsonl"),
                 "--output_dir", str(setup / "refused"), "--load_in_4bit", "true"])
    assert code == 2 and "--use_peft" in capsys.readouterr().err
    assert not (setup / "refused").exists()


@pytest.mark.parametrize("flag,layer", [("load_in_4bit", "Linear4bit"), ("load_in_8bit", "Linear8bitLt")])
def test_kbit_base_carries_fast_weights_on_its_lora_layers(setup, tmp_path, flag, layer):
    from focusft import FocusConfig, FocusTrainer

    args = FocusConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                       fast_rank=4, max_length=128, report_to=[], disable_tqdm=True, use_peft=True,
                       lora_r=4, lora_target_modules=MLP, logging_steps=1, eval_inner_loop=True,
                       inner_lr=0.1, **{flag: True})  # lr 1.0 overshoots on this model (as unquantized)
    trainer = FocusTrainer(model=str(setup / "model"), args=args, train_dataset=ROWS,
                           eval_dataset=ROWS[:2])
    trainer.train()
    metrics = trainer.evaluate()  # eval mode, no grad: the inner loop still differentiates
    assert metrics["eval_focus_loss"] < metrics["eval_loss"]
    assert {type(s.module.base_layer).__name__ for s in trainer.fast.slots} == {layer}
    assert all(h["inner_grad_norm_1"] > 1e-4 for h in trainer.state.log_history if "loss" in h)


def test_unknown_lora_target_is_a_user_error(setup, capsys):
    code = main(["train", "--model", str(setup / "model"), "--data", str(setup / "train.jsonl"),
                 "--output_dir", str(setup / "bad-target"), "--use_peft", "--lora_target_modules", "nope_proj"])
    err = capsys.readouterr().err
    assert code == 2 and "--lora_target_modules" in err and "nope_proj" in err
    assert not (setup / "bad-target").exists()


def test_4bit_layers_repacked_for_cpu_inference_are_made_differentiable_again(setup, tmp_path):
    """bitsandbytes repacks a CPU 4-bit weight at its first eval-mode no-grad call, and that
    kernel has no backward through the input; FocusTrainer undoes it and turns it off."""
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from peft import LoraConfig
    from focusft import FocusConfig, FocusTrainer

    model = AutoModelForCausalLM.from_pretrained(setup / "model", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    with torch.no_grad():
        model.eval()(torch.arange(3, 20)[None])
    packed = lambda: [m for m in model.modules() if isinstance(m, Linear4bit)  # noqa: E731
                      and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    if not packed():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    args = FocusConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
                       fast_rank=4, max_length=128, report_to=[], disable_tqdm=True, logging_steps=1)
    trainer = FocusTrainer(model=model, args=args, train_dataset=ROWS, processing_class=chatml_tokenizer(),
                           peft_config=LoraConfig(r=4, target_modules=MLP))
    assert not packed()
    trainer.train()
    assert all(h["inner_grad_norm_1"] > 1e-4 for h in trainer.state.log_history if "loss" in h)
