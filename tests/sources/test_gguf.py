"""GGUF models in (focusft.sources.gguf_file): a tiny Llama written as GGUF is read by transformers'
loader, dequantized, trained, evaluated, diagnosed and inspected through ``--model FILE.gguf``;
what training saves is a plain safetensors model; files it cannot load are refused up front."""

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from gguf_fixtures import write_tiny_gguf  # noqa: E402

from focusft.sources import gguf_file  # noqa: E402
from focusft.cli import main  # noqa: E402
from focusft.errors import UserError  # noqa: E402

ROWS = [{"messages": [{"role": "user", "content": f"Where is item {i}? It is in box {i % 3}."},
                      {"role": "assistant", "content": f"Box {i % 3}."}]} for i in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_load_gives_a_plain_model_with_the_file_weights_dequantized(tiny):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    model, tokenizer, info = gguf_file.load(tiny, "float32")
    assert info.architecture == "llama" and info.tensor_types == {"F32": 19, "Q8_0": 1}
    assert "Q8_0 quantization dequantized to float32" in info.describe("float32")
    assert not hasattr(model.config, "quantization_config")
    assert getattr(model, "hf_quantizer", None) is None
    theirs = AutoModelForCausalLM.from_pretrained(str(tiny.parent), gguf_file=tiny.name,
                                                  dtype=torch.float32).state_dict()
    ours = model.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    stored = {t.name: t for t in GGUFReader(str(tiny)).tensors}
    gate = np.asarray(stored["blk.1.ffn_gate.weight"].data).reshape(64, 32)
    assert torch.equal(ours["model.layers.1.mlp.gate_proj.weight"], torch.from_numpy(gate.copy()))
    up = ours["model.layers.0.mlp.up_proj.weight"]  # stored as Q8_0: close, not equal
    assert up.shape == (64, 32) and 0 < float(up.abs().mean()) < 1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    half, _, _ = gguf_file.load(tiny, "bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_find_takes_a_file_or_a_folder_with_exactly_one(tiny, tmp_path):
    assert gguf_file.find(str(tiny)) == tiny
    assert gguf_file.find(str(tiny.parent)) == tiny
    renamed = tmp_path / "weights.bin"  # found by its magic bytes, whatever its name
    renamed.write_bytes(tiny.read_bytes())
    assert gguf_file.find(str(renamed)) == renamed
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="holds 2 GGUF files"):
        gguf_file.find(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")  # a model directory: not a GGUF source
    assert gguf_file.find(str(tmp_path)) is None


def test_train_a_gguf_file_saves_a_plain_safetensors_model(tiny, rows, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny), "--data", str(rows), "--output_dir", str(out),
                 "--max_steps", "2", "--fast_rank", "2", "--max_length", "96",
                 "--per_device_train_batch_size", "2", "--disable_tqdm", "true"])
    assert code == 0, capsys.readouterr().err
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(str(final), use_safetensors=True)
    base, _, _ = gguf_file.load(tiny, "float32")
    weights = load_file(str(final / "model.safetensors"))
    assert not torch.equal(weights["model.layers.1.mlp.down_proj.weight"],
                           base.state_dict()["model.layers.1.mlp.down_proj.weight"])  # it trained
    assert trained.config.vocab_size == base.config.vocab_size
    source = json.loads((final / "focusft_source.json").read_text())
    assert source["trained_from"] == str(tiny) and "dequantized" in source["base"]["weights"]
    assert "dequantized" in (final / "README.md").read_text()


def test_an_adapter_trained_on_a_gguf_file_trains_on_and_evaluates(tiny, rows, tmp_path, capsys):
    from safetensors.torch import load_file

    first, second = tmp_path / "lora", tmp_path / "lora2"
    flags = ["--data", str(rows), "--max_steps", "2", "--fast_rank", "2", "--max_length", "96",
             "--disable_tqdm", "true", "--warmup_steps", "0"]
    assert main(["train", "--model", str(tiny), "--output_dir", str(first), "--use_peft", "true",
                 *flags]) == 0, capsys.readouterr().err
    config = json.loads((first / "final" / "adapter_config.json").read_text())
    assert gguf_file.find(config["base_model_name_or_path"]) == tiny  # the adapter names its base
    assert main(["train", "--model", str(first / "final"), "--output_dir", str(second),
                 *flags]) == 0, capsys.readouterr().err
    before = load_file(str(first / "final" / "adapter_model.safetensors"))
    after = load_file(str(second / "final" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the same adapter trained on
    assert main(["eval", "--model", str(second / "final"), "--tasks", "qa1", "--lengths", "0k",
                 "--samples", "1", "--no_few_shot", "--out", str(tmp_path / "ev")]) == 0  # merged


def test_trainer_api_accepts_a_gguf_path(tiny, tmp_path):
    from focusft import FocusConfig, FocusTrainer

    cfg = FocusConfig(output_dir=str(tmp_path / "api"), max_steps=1, fast_rank=2, max_length=96,
                      report_to=[], disable_tqdm=True)
    trainer = FocusTrainer(model=str(tiny), args=cfg, train_dataset=ROWS)
    assert type(trainer.model).__name__ == "LlamaForCausalLM"
    assert trainer.processing_class.chat_template
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_eval_diagnose_and_inspect_accept_a_gguf_file(tiny, rows, tmp_path, capsys):
    assert main(["data", "inspect", "--data", str(rows), "--model", str(tiny), "--rows", "1"]) == 0
    assert "[[Box 0.<|im_end|>]]" in capsys.readouterr().out
    assert main(["eval", "--model", str(tiny), "--tasks", "qa1", "--lengths", "0k", "--samples",
                 "1", "--no_few_shot", "--out", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["models"][f"{tiny} [causal]"]["counts"]["qa1"]
    assert "dequantized" in results["settings"]["weights"]
    assert main(["diagnose", "--model", str(tiny), "--data", str(rows), "--samples", "1",
                 "--mask", "glm", "--out", str(tmp_path / "diag")]) == 0
    meta = json.loads((tmp_path / "diag" / "metrics.json").read_text())
    assert "dequantized" in json.dumps(meta)


# --- refusals: one paragraph, exit 2, nothing written ------------------------------------------


def _refused(argv, capsys, out, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
    return lines[0]


def _train(model, rows, out):
    return ["train", "--model", str(model), "--data", str(rows), "--output_dir", str(out),
            "--max_steps", "1"]


def test_a_file_that_is_not_gguf_is_refused(rows, tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    _refused(_train(fake, rows, tmp_path / "out"), capsys, tmp_path / "out",
             "model.gguf: not a GGUF file", "starts with b'PK")


def test_unsupported_architecture_and_tensor_type_are_refused(rows, tmp_path, capsys):
    arch = write_tiny_gguf(tmp_path / "arch.gguf", architecture="wobble")
    _refused(_train(arch, rows, tmp_path / "out"), capsys, tmp_path / "out",
             "arch.gguf: its architecture 'wobble' is not one transformers", "llama")
    int8 = write_tiny_gguf(tmp_path / "int8.gguf", int8_tensor=True)
    _refused(_train(int8, rows, tmp_path / "out"), capsys, tmp_path / "out",
             "int8.gguf: tensor type(s) I8 cannot be dequantized by the installed gguf")
    _refused(["eval", "--model", str(int8), "--tasks", "qa1", "--lengths", "0k", "--samples", "1",
              "--out", str(tmp_path / "ev")], capsys, tmp_path / "ev", "I8")


def test_missing_gguf_package_is_refused(tiny, rows, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    _refused(_train(tiny, rows, tmp_path / "out"), capsys, tmp_path / "out",
             "needs the 'gguf' package", "pip install 'focusft[gguf]'")


def test_kbit_flags_with_a_gguf_file_are_refused(tiny, rows, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    _refused(_train(tiny, rows, tmp_path / "out") + ["--use_peft", "true", "--load_in_4bit", "true"],
             capsys, tmp_path / "out", "cannot re-quantize a GGUF file")
