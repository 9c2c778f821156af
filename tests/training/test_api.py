"""The Python API, shaped like TRL's SFTTrainer: names, plain datasets, and a plain model after."""

import datasets
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainingArguments

from chat_fixtures import chatml_tokenizer
from focusft import FocusConfig, FocusTrainer

ROWS = [{"messages": [{"role": "user", "content": f"The cat sat on mat number {i}. Where is the cat?"},
                      {"role": "assistant", "content": f"On mat {i}."}]} for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    tok = chatml_tokenizer()
    tiny(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def tiny(tok):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id))


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def small(**kw):
    return dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
                report_to=[], disable_tqdm=True, **kw)


def test_model_by_name_messages_list_and_evaluate(model_dir, tmp_path):
    args = FocusConfig(output_dir=str(tmp_path / "run"), fast_rank=4, max_length=128,
                       eval_inner_loop=True, **small())
    trainer = FocusTrainer(model=str(model_dir), args=args, train_dataset=ROWS, eval_dataset=ROWS[:3])
    assert trainer.model.config._attn_implementation != "focusft" and hooks(trainer.model) == 0
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and metrics["eval_focus_loss"] > 0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(h["inner_grad_norm_1"] > 0 for h in logged)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path / "saved")
    ids = torch.arange(3, 30)[None]
    torch.testing.assert_close(reloaded(ids).logits, trainer.model.eval()(ids).logits)


def test_plain_training_arguments_dataset_and_default_remove_unused_columns(model_dir, tmp_path):
    tok = chatml_tokenizer()
    model = tiny(tok)
    model.set_attn_implementation("eager")
    before = hooks(model)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), **small())
    assert args.remove_unused_columns  # the Trainer's default: our collator's columns survive it
    trainer = FocusTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(ROWS),
                           processing_class=tok)
    assert isinstance(trainer.args, FocusConfig) and trainer.args.learning_rate == 1e-3
    assert trainer.args.method == "focusft" and trainer.args.max_length == 4096
    trainer.train()
    assert trainer.model is model and model.config._attn_implementation == "eager"
    assert hooks(model) == before  # fast-weight and inner-loop hooks are gone
    assert all(h["inner_grad_norm_1"] > 0 for h in trainer.state.log_history if "loss" in h)


def test_peft_config_argument(model_dir, tmp_path):
    from peft import LoraConfig, PeftModel

    args = FocusConfig(output_dir=str(tmp_path / "run"), fast_rank=4, max_length=128, **small())
    trainer = FocusTrainer(model=str(model_dir), args=args, train_dataset=ROWS,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["up_proj", "q_proj"]))
    assert isinstance(trainer.model, PeftModel)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    assert hooks(trainer.model) == 0 and trainer.model.config._attn_implementation != "focusft"
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_a_model_object_needs_its_tokenizer(tmp_path):
    from focusft.errors import UserError

    with pytest.raises(UserError, match="processing_class"):
        FocusTrainer(model=tiny(chatml_tokenizer()), args=FocusConfig(output_dir=str(tmp_path)),
                     train_dataset=ROWS)


def test_rows_of_different_shapes_tools_and_tool_calls(model_dir, tmp_path):
    tool = {"type": "function", "function": {"name": "lookup", "description": "Find a mat.",
                                             "parameters": {"type": "object", "properties": {
                                                 "n": {"type": "integer"}}}}}
    rows = ROWS[:2] + [{"tools": [tool], "messages": [
        {"role": "user", "content": "Where is mat 3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": {"n": 3}}}]},
        {"role": "tool", "content": "Mat 3 is by the door."},
        {"role": "assistant", "content": "By the door."}]}]
    args = FocusConfig(output_dir=str(tmp_path / "run"), fast_rank=4, max_length=256, **small())
    trainer = FocusTrainer(model=str(model_dir), args=args, train_dataset=rows)
    assert len(trainer.train_dataset) == 3
    trainer.train()
    assert trainer.state.global_step == 2


def test_trl_sftconfig_values_carry_over(model_dir, tmp_path):
    trl = pytest.importorskip("trl")
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), bf16=False, max_length=96, packing=True,
                         gradient_checkpointing=False, **small())
    trainer = FocusTrainer(model=str(model_dir), args=args, train_dataset=ROWS)
    assert isinstance(trainer.args, FocusConfig)
    assert (trainer.args.max_length, trainer.args.packing, trainer.args.learning_rate) == (96, True, 1e-3)
    trainer.train()
    assert trainer.state.global_step == 2
