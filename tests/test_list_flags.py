"""Every list-valued flag takes a space-separated list (TRL's form), a comma-separated one, both
mixed, and (other commands) repeated flags; ``all-linear`` stays PEFT's shorthand."""

from __future__ import annotations

import pytest

from focusft.cli import build_parser
from focusft.commands.lists import _ListAction, split_items
from focusft.training.config import _list_fields, parse_config
from focusft.errors import UserError

# field: (two valid items, how the parsed config reads them)
TRAIN_LISTS = {
    "lora_target_modules": (["gate_proj", "up_proj"], lambda c: c.lora_target_modules),
    "fast_target_modules": (["gate_proj", "up_proj"], lambda c: c.fast_target_modules),
    "label_names": (["labels", "mask"], lambda c: c.label_names),
    "include_for_metrics": (["inputs", "loss"], lambda c: c.include_for_metrics),
    "debug": (["underflow_overflow", "tpu_metrics_debug"], lambda c: [d.value for d in c.debug]),
    "report_to": (["tensorboard", "none"], lambda c: c.report_to),
    "optim_target_modules": (["attn", "mlp"], lambda c: c.optim_target_modules),
    "data": (["a.jsonl", "b.jsonl"], lambda c: c.data.split(",")),
    "eval_data": (["a.jsonl", "b.jsonl"], lambda c: c.eval_data.split(",")),
    "diagnostics_mask": (["glm", "causal"], lambda c: c.diagnostics_masks),
}


def test_the_table_covers_every_list_valued_field():
    assert _list_fields() == set(TRAIN_LISTS)


@pytest.mark.parametrize("name", sorted(TRAIN_LISTS))
@pytest.mark.parametrize("form", ["space", "comma", "equals", "mixed"])
def test_train_list_flags_take_space_and_comma_forms(name, form):
    (a, b), read = TRAIN_LISTS[name]
    flags = {"space": [f"--{name}", a, b], "comma": [f"--{name}", f"{a},{b}"],
             "equals": [f"--{name}={a},{b}"], "mixed": [f"--{name}", f"{a},", b]}[form]
    cfg = parse_config(["--output_dir", "x", *flags])
    if name == "report_to":  # "none" in a list: TrainingArguments keeps the real integrations
        assert read(cfg) in (["tensorboard", "none"], ["tensorboard"])
    else:
        assert read(cfg) == [a, b]


def test_the_issue_example_and_yaml_lists(tmp_path):
    cfg = parse_config(["--lora_target_modules", "gate_proj,up_proj,down_proj"])
    assert cfg.lora_target_modules == ["gate_proj", "up_proj", "down_proj"]
    f = tmp_path / "c.yaml"
    f.write_text("data: [a.jsonl, b.jsonl]\nlora_target_modules: q_proj,v_proj\n"
                 "diagnostics_mask: [glm, causal]\n")
    cfg = parse_config(["--config", str(f)])
    assert cfg.data == "a.jsonl,b.jsonl" and cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.diagnostics_masks == ["glm", "causal"]
    f.write_text("learning_rate: [1, 2]\n")
    with pytest.raises(UserError, match="learning_rate"):
        parse_config(["--config", str(f)])


def test_one_optimizer_target_stays_a_regex_and_bad_items_name_the_flag():
    assert parse_config(["--optim_target_modules", r".*attn.*"]).optim_target_modules == r".*attn.*"
    with pytest.raises(UserError, match="--debug"):
        parse_config(["--debug", "underflow_overflow,nonsense"])
    with pytest.raises(UserError, match="--diagnostics_mask"):
        parse_config(["--diagnostics_mask", "glm", "prefix"])


def test_all_linear_is_peft_shorthand():
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from focusft.training.adapters import lora_config

    cfg = parse_config(["--use_peft", "true", "--lora_target_modules", "all-linear", "--lora_r", "2"])
    assert cfg.lora_target_modules == ["all-linear"]
    peft_config = lora_config(cfg)
    assert peft_config.target_modules == "all-linear"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    wrapped = get_peft_model(model, peft_config)
    targets = {name.rsplit(".", 1)[-1] for name in wrapped.peft_config["default"].target_modules}
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= targets  # every Linear but lm_head
    named = lora_config(parse_config(["--use_peft", "true", "--lora_target_modules", "q_proj,v_proj"]))
    assert set(named.target_modules) == {"q_proj", "v_proj"}


# command: (argv before the list flag, flag, two items, argv after)
COMMAND_LISTS = {
    ("eval", "--model"): ([], ["runs/a", "runs/b"], ["--suite", "babilong"]),
    ("eval", "--tasks"): (["--model", "m"], ["qa1", "qa2"], []),
    ("eval", "--lengths"): (["--model", "m"], ["0k", "1k"], []),
    ("diagnose", "--model"): (["--data", "d.jsonl"], ["runs/a", "runs/b"], []),
    ("diagnose", "--data"): (["--model", "m"], ["a.jsonl", "b.jsonl"], []),
    ("data", "--tasks"): (["babilong"], ["qa1", "qa2"], ["--out", "x.jsonl"]),
    ("data", "--lengths"): (["babilong"], ["0k", "1k"], ["--out", "x.jsonl"]),
    ("data", "--data"): (["inspect"], ["a.jsonl", "b.jsonl"], []),
    ("bench", "--lengths"): (["--out", "o"], ["1k", "2k"], []),
    ("bench", "--methods"): (["--out", "o"], ["sft-glm", "focusft"], []),
    ("experiment", "--seeds"): ([], ["0", "1"], []),
    ("experiment", "--methods"): ([], ["sft-causal", "focusft"], []),
    ("experiment", "--tasks"): ([], ["qa1", "qa2"], []),
}
JOINED = {("diagnose", "--data"), ("data", "--data")}


def _list_actions(command: str) -> set[str]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    found = set()
    for action in sub._actions:
        text = (action.help or "").lower()
        if isinstance(action, _ListAction):
            found.add(action.option_strings[0])
        else:  # a flag that still describes a list in its help but is not a list flag
            assert "comma" not in text and "repeat to" not in text, (command, action.option_strings)
    return found


@pytest.mark.parametrize("command", ["eval", "diagnose", "data", "bench", "experiment", "pretrain", "model"])
def test_the_table_covers_every_list_flag_of_the_commands(command):
    assert _list_actions(command) == {flag for cmd, flag in COMMAND_LISTS if cmd == command}


@pytest.mark.parametrize("key", sorted(COMMAND_LISTS))
def test_command_list_flags_take_space_comma_and_repeated_forms(key):
    command, flag = key
    before, (a, b), after = COMMAND_LISTS[key]
    want = f"{a},{b}" if key in JOINED else [a, b]
    for form in ([flag, a, b], [flag, f"{a},{b}"], [flag, a, flag, b]):
        argv = [command, *before, *form, *after]
        args = build_parser(argv).parse_args(argv)
        assert getattr(args, flag[2:]) == want, form


def test_split_items_keeps_an_existing_path_with_a_comma(tmp_path):
    odd = tmp_path / "run,1"
    odd.mkdir()
    assert split_items([str(odd), "b,c"], keep_paths=True) == [str(odd), "b", "c"]
    assert split_items("a,,b ,") == ["a", "b"]
