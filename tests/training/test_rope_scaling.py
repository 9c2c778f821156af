"""--rope_scaling (focusft.sources.rope_scaling): the model focusft builds has transformers' own
rotary frequencies for the scaled config, whatever the source (directory, GGUF file, the embedded
default, a PEFT adapter's base); final/config.json carries the scaling and `focusft eval`'s loader
uses it. The refusals (unknown type, factor <= 1, a family without RoPE) are in
tests/training/test_robustness.py with the other bad inputs."""

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from chat_fixtures import chatml_tokenizer
from focusft.cli import main
from focusft.errors import UserError
from focusft.sources import rope_scaling
from focusft.training.config import FocusConfig, parse_config
from focusft.training.loading import load_model_and_tokenizer

THETA = 50000.0  # not transformers' default: the scaling must keep the model's own
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, LlamaRotaryEmbedding, dict(num_key_value_heads=4)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, Qwen2RotaryEmbedding, dict(num_key_value_heads=2)),
}
ROWS = [{"messages": [{"role": "user", "content": f"Where is item {i}? It is in box {i % 3}."},
                      {"role": "assistant", "content": f"Box {i % 3}."}]} for i in range(4)]


def _kwargs(family: str, vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=512, **FAMILIES[family][3])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny Llama and a tiny Qwen2 (rope_theta 50000, no scaling) saved with a chat tokenizer."""
    root = tmp_path_factory.mktemp("rope_models")
    tok = chatml_tokenizer()
    for family, (config_class, model_class, _, _) in FAMILIES.items():
        torch.manual_seed(0)
        config = config_class(**_kwargs(family, len(tok)), pad_token_id=tok.pad_token_id,
                              rope_parameters={"rope_type": "default", "rope_theta": THETA})
        model_class(config).save_pretrained(root / family)
        tok.save_pretrained(root / family)
    return root


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def reference_rotary(family: str, scaling: dict, vocab: int):
    """transformers' rotary module for the same config, built directly with the scaling."""
    config_class, _, rotary_class, _ = FAMILIES[family]
    config = config_class(**_kwargs(family, vocab), rope_parameters={"rope_theta": THETA, **scaling})
    return rotary_class(config)


def assert_same_rotary(model, reference) -> None:
    rotary = model.model.rotary_emb
    assert rotary.rope_type == reference.rope_type
    assert torch.equal(rotary.inv_freq, reference.inv_freq)
    assert rotary.attention_scaling == reference.attention_scaling


CASES = [
    ("llama", "type=yarn,factor=4", {"rope_type": "yarn", "factor": 4.0}),
    ("llama", '{"rope_type": "linear", "factor": 2}', {"rope_type": "linear", "factor": 2.0}),
    ("llama", "rope_type=llama3,factor=8,low_freq_factor=1,high_freq_factor=4,"
              "original_max_position_embeddings=128",
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1, "high_freq_factor": 4,
      "original_max_position_embeddings": 128}),
    ("qwen2", '{"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "attention_factor": 1.25}',
     {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "attention_factor": 1.25}),
    ("qwen2", "rope_type=linear,factor=2", {"rope_type": "linear", "factor": 2.0}),
    ("qwen2", "type=dynamic,factor=3", {"rope_type": "dynamic", "factor": 3.0}),
]


@pytest.mark.parametrize("family,flag,scaling", CASES, ids=[f"{c[0]}-{c[2]['rope_type']}" for c in CASES])
def test_the_built_model_has_transformers_own_scaled_rotary(model_dirs, family, flag, scaling):
    cfg = parse_config(["--model", str(model_dirs / family), "--rope_scaling", flag])
    assert cfg.rope_scaling == scaling
    model, tokenizer = load_model_and_tokenizer(cfg)
    reference = reference_rotary(family, scaling, len(tokenizer))
    assert_same_rotary(model, reference)
    assert model.config.rope_parameters["rope_theta"] == THETA
    plain = reference_rotary(family, {"rope_type": "default"}, len(tokenizer))
    assert not torch.equal(model.model.rotary_emb.inv_freq, plain.inv_freq) or \
        model.model.rotary_emb.attention_scaling != plain.attention_scaling or scaling["rope_type"] == "dynamic"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_train_saves_the_scaling_and_eval_loads_it(model_dirs, rows, tmp_path, capsys, family):
    from focusft.evaluation.runner import load_checkpoint

    out = tmp_path / "out"
    assert main(["train", "--model", str(model_dirs / family), "--data", str(rows),
                 "--output_dir", str(out), "--max_steps", "1", "--fast_rank", "2",
                 "--max_length", "96", "--disable_tqdm", "true",
                 "--rope_scaling", "type=yarn,factor=4"]) == 0, capsys.readouterr().err
    scaling = {"rope_type": "yarn", "factor": 4.0}
    saved = json.loads((out / "final" / "config.json").read_text())["rope_parameters"]
    assert saved == {"rope_theta": THETA, **scaling, "original_max_position_embeddings": 512}
    assert yaml.safe_load((out / "final" / "focusft.yaml").read_text())["rope_scaling"] == scaling
    assert "RoPE scaling: **yarn, factor 4.0**" in (out / "final" / "README.md").read_text()
    model, tokenizer = load_checkpoint(str(out / "final"))  # what `focusft eval` loads
    assert_same_rotary(model, reference_rotary(family, scaling, len(tokenizer)))


def test_a_yaml_config_takes_a_mapping_or_the_short_form(tmp_path):
    for value in ({"rope_type": "yarn", "factor": 4}, "type=yarn,factor=4"):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"rope_scaling": value}))
        assert parse_config(["--config", str(path)]).rope_scaling == {"rope_type": "yarn", "factor": 4.0}
    resolved = tmp_path / "resolved.yaml"  # focusft.yaml reads back
    resolved.write_text(parse_config(["--config", str(path)]).to_yaml())
    assert parse_config(["--config", str(resolved)]).rope_scaling == {"rope_type": "yarn", "factor": 4.0}
    assert FocusConfig(rope_scaling={"type": "linear", "factor": 2}).rope_scaling == \
        {"rope_type": "linear", "factor": 2.0}


def test_the_embedded_default_is_built_scaled():
    from focusft.sources.default import default_model_config

    model, tokenizer = load_model_and_tokenizer(FocusConfig(rope_scaling="type=linear,factor=2"))
    config = rope_scaling.scaled(default_model_config(tokenizer), {"rope_type": "linear", "factor": 2.0})
    assert_same_rotary(model, Qwen2RotaryEmbedding(config))
    assert config.rope_parameters["factor"] == 2.0


def test_a_gguf_file_is_built_scaled(tmp_path):
    pytest.importorskip("gguf")
    from gguf_fixtures import write_tiny_gguf
    from transformers import AutoConfig

    file = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _ = load_model_and_tokenizer(FocusConfig(model=str(file), rope_scaling="type=yarn,factor=4"))
    config = AutoConfig.from_pretrained(str(tmp_path), gguf_file=file.name)
    config.rope_parameters = {**config.rope_parameters, "rope_type": "yarn", "factor": 4.0}
    config.standardize_rope_params()
    assert config.rope_parameters["original_max_position_embeddings"] == 512
    assert_same_rotary(model, LlamaRotaryEmbedding(config))


def test_an_adapter_records_the_scaling_and_its_base_is_loaded_under_it(model_dirs, rows, tmp_path,
                                                                         capsys):
    pytest.importorskip("peft")
    from focusft.evaluation.runner import load_checkpoint

    out = tmp_path / "out"
    assert main(["train", "--model", str(model_dirs / "llama"), "--data", str(rows),
                 "--output_dir", str(out), "--max_steps", "1", "--fast_rank", "2",
                 "--max_length", "96", "--disable_tqdm", "true", "--use_peft", "true",
                 "--rope_scaling", "type=linear,factor=2"]) == 0, capsys.readouterr().err
    scaling = {"rope_type": "linear", "factor": 2.0}
    assert json.loads((out / "final" / "focusft_rope_scaling.json").read_text()) == scaling
    model, tokenizer = load_checkpoint(str(out / "final"))  # merged into its base, as eval measures
    assert_same_rotary(model, reference_rotary("llama", scaling, len(tokenizer)))
    again = FocusConfig(model=str(out / "final"), use_peft=True)  # continued: under it again
    model, _ = load_model_and_tokenizer(again)
    assert again.rope_scaling == scaling
    assert_same_rotary(model.get_base_model(), reference_rotary("llama", scaling, len(tokenizer)))


def test_a_model_passed_built_must_already_carry_it(model_dirs, tmp_path):
    from focusft import FocusTrainer

    tok = chatml_tokenizer()
    model = LlamaForCausalLM.from_pretrained(model_dirs / "llama")
    args = FocusConfig(output_dir=str(tmp_path / "out"), max_steps=1, report_to=[],
                       rope_scaling="type=yarn,factor=4", max_length=96)
    with pytest.raises(UserError, match="passed already built"):
        FocusTrainer(model=model, args=args, train_dataset=ROWS, processing_class=tok)
    config = rope_scaling.scaled(model.config, args.rope_scaling)
    FocusTrainer(model=LlamaForCausalLM(config), args=args, train_dataset=ROWS, processing_class=tok)


@pytest.mark.parametrize("value,fragment", [
    ("type=yarn", None), ('{"type": "yarn", "rope_type": "linear", "factor": 2}', "disagree"),
    ("factor=2", "no rope_type"), ("type=linear,factor=true", "factor must be a number > 1"),
    ("type=linear,factr=2", "unknown key(s) ['factr']"), ("[1, 2]", "is not key=value"),
])
def test_parse_refusals(value, fragment):
    if fragment is None:  # yarn without factor: transformers' own check, once a config is known
        with pytest.raises(UserError, match="Missing required keys"):
            rope_scaling.scaled(LlamaConfig(), rope_scaling.parse(value))
        return
    with pytest.raises(UserError) as err:
        rope_scaling.parse(value)
    assert fragment in str(err.value) and str(err.value).startswith("--rope_scaling ")
