"""Every user-facing input error, through `focusft train`: one paragraph naming the culprit,
exit status 2, no traceback, and nothing written to --output_dir. Plus the non-finite loss
guard and atomic checkpoints (focusft.training.faults)."""

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from chat_fixtures import chatml_tokenizer, prefix_breaking_tokenizer
from focusft.cli import main

OK = {"messages": [{"role": "user", "content": "Where is the cat?"},
                   {"role": "assistant", "content": "On the mat."}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = chatml_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    shutil.copytree(root / "model", root / "breaking")  # same weights, history-rewriting template
    prefix_breaking_tokenizer().save_pretrained(root / "breaking")
    (root / "empty").mkdir()
    shutil.copytree(root / "model", root / "zero_bytes")
    (root / "zero_bytes" / "model.safetensors").write_bytes(b"")
    shutil.copytree(root / "model", root / "no_tokenizer")
    for name in os.listdir(root / "no_tokenizer"):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            os.remove(root / "no_tokenizer" / name)
    shutil.copytree(root / "model", root / "pickle")
    os.remove(root / "pickle" / "model.safetensors")
    (root / "pickle" / "pytorch_model.bin").write_bytes(b"not read")
    shutil.copytree(root / "model", root / "no_template")
    base = chatml_tokenizer()
    base.chat_template = None  # a base model's tokenizer
    base.save_pretrained(root / "no_template")
    for name in os.listdir(root / "no_template"):
        if name.startswith("chat_template"):
            os.remove(root / "no_template" / name)
    (root / "pickle_adapter").mkdir()  # a PEFT adapter directory whose weights are a pickle
    tok.save_pretrained(root / "pickle_adapter")
    (root / "pickle_adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(root / "model"), "peft_type": "LORA"}))
    (root / "pickle_adapter" / "adapter_model.bin").write_bytes(b"not read")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                               n_positions=512)).save_pretrained(root / "gpt2")  # no RoPE
    tok.save_pretrained(root / "gpt2")
    cfg.vocab_size = 64  # fewer embedding rows than the tokenizer has tokens
    Qwen2ForCausalLM(cfg).save_pretrained(root / "small_vocab")
    tok.save_pretrained(root / "small_vocab")
    return root


@pytest.fixture
def run(models, tmp_path, capsys):
    """run(rows_or_path, *flags) -> (exit code, stderr); rows are written as train.jsonl."""

    def go(data, *flags, model="model"):
        if isinstance(data, list):
            path = tmp_path / "train.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in data))
            data = path
        argv = ["train", "--model", str(models / model), "--data", str(data),
                "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--fast_rank", "2",
                "--max_length", "96", "--disable_tqdm", "true", *flags]
        code = main(argv)
        return code, capsys.readouterr().err

    go.out = tmp_path / "out"
    go.tmp = tmp_path
    go.models = models
    return go


DOCS = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"


def assert_refused(run, code, err, *fragments):
    """Exit 2, one paragraph naming the culprit, nothing written, and the message as printed is
    listed in docs/robustness.md (paths shortened: the data folder to data/, models to models/)."""
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("focusft train: error:")]
    assert len(line) == 1, err
    for fragment in fragments:
        assert fragment in line[0], (fragment, line[0])
    assert not run.out.exists(), sorted(os.listdir(run.out))
    shown = line[0].replace(str(run.models), "models").replace(str(run.tmp), "data")
    if os.environ.get("FOCUSFT_ROBUSTNESS_LOG"):  # collect the messages to write the page
        with open(os.environ["FOCUSFT_ROBUSTNESS_LOG"], "a") as log:
            log.write(json.dumps([os.environ.get("PYTEST_CURRENT_TEST", ""), shown]) + "\n")
    assert shown in DOCS.read_text(), f"docs/robustness.md does not list: {shown}"


# --- data files ------------------------------------------------------------------------------


def test_missing_data_file(run):
    code, err = run(run.tmp / "nope.jsonl")
    assert_refused(run, code, err, "nope.jsonl: file not found")


def test_empty_data_file(run):
    (run.tmp / "empty.jsonl").write_text("")
    code, err = run(run.tmp / "empty.jsonl")
    assert_refused(run, code, err, "empty.jsonl: the file has 0 rows")


def test_unreadable_parquet(run):
    (run.tmp / "bad.parquet").write_bytes(b"this is not parquet at all")
    code, err = run(run.tmp / "bad.parquet")
    assert_refused(run, code, err, "bad.parquet: cannot read it as a parquet file")


def test_bad_jsonl_line(run):
    (run.tmp / "bad.jsonl").write_text(json.dumps(OK) + "\n{oops\n")
    code, err = run(run.tmp / "bad.jsonl")
    assert_refused(run, code, err, "bad.jsonl line 2: not valid JSON")


def test_wrong_column_name(run):
    code, err = run([{"conversation": OK["messages"]}])
    assert_refused(run, code, err, "train.jsonl line 1", "no 'messages' or 'prompt' field", "conversation")


def test_messages_not_a_list(run):
    code, err = run([OK, {"messages": "hello"}])
    assert_refused(run, code, err, "train.jsonl line 2", "field 'messages' must be a list", "got str")


def test_unknown_role(run):
    rows = [{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "a"}]}]
    code, err = run(rows)
    assert_refused(run, code, err, "line 1", "messages[0].role is 'wizard'", "allowed roles")


def test_non_string_content(run):
    rows = [OK, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}]
    code, err = run(rows)
    assert_refused(run, code, err, "line 2",
                   "messages[0].content must be a string or a list of text parts, got int")


def test_non_text_content_part(run):
    image = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    rows = [OK, {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]},
                              {"role": "assistant", "content": "A cat."}]}]
    code, err = run(rows)
    assert_refused(run, code, err, "line 2", "messages[0].content[1] is a part of type 'image_url'")


def test_no_assistant_turn(run):
    code, err = run([OK, {"messages": [{"role": "user", "content": "hello?"}]}])
    assert_refused(run, code, err, "line 2", "has no assistant turn")


def test_sample_longer_than_max_length(run):
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    code, err = run([OK, long], "--truncation", "error")
    assert_refused(run, code, err, "line 2", "longer than --max_length 96", "--truncation left")


def test_template_that_rewrites_history_trains_with_the_located_rule(run):
    two_turns = {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "A."},
                              {"role": "user", "content": "b?"}, {"role": "assistant", "content": "B."}]}
    code, err = run([two_turns], model="breaking")
    assert code == 0, err
    report = json.loads((run.out / "data_report.json").read_text())
    assert report["template_rule"] == "located" and report["rows_by_rule"] == {"located": 1}


def test_parquet_with_wrong_column_through_cli(run):
    pq.write_table(pa.table({"text": ["hello"]}), run.tmp / "t.parquet")
    code, err = run(run.tmp / "t.parquet")
    assert_refused(run, code, err, "t.parquet row 0", "no 'messages' or 'prompt' field", "['text']")


# --- configuration ---------------------------------------------------------------------------


def test_unknown_yaml_key(run):
    (run.tmp / "c.yaml").write_text("learning_rate: 1e-4\nlearnin_rate: 3\n")
    code, err = run([OK], "--config", str(run.tmp / "c.yaml"))
    assert_refused(run, code, err, "c.yaml", "unknown key(s) ['learnin_rate']")


def test_bad_yaml_value_type(run):
    (run.tmp / "c.yaml").write_text("fast_rank: many\n")
    code, err = run([OK], "--config", str(run.tmp / "c.yaml"))
    assert_refused(run, code, err, "--fast_rank", "invalid int value: 'many'")


def test_bad_yaml_value_range(run):
    (run.tmp / "c.yaml").write_text("fast_layer_fraction: 1.5\n")
    code, err = run([OK], "--config", str(run.tmp / "c.yaml"))
    assert_refused(run, code, err, "--fast_layer_fraction must be in (0.0, 1.0], got 1.5")


def test_bad_flag_type(run):
    code, err = run([OK], "--max_length", "abc")
    assert_refused(run, code, err, "--max_length", "invalid int value: 'abc'")


def test_bad_flag_range_and_choice(run):
    code, err = run([OK], "--inner_steps", "-1")
    assert_refused(run, code, err, "--inner_steps must be in [0, inf], got -1")
    code, err = run([OK], "--attention", "sparse")
    assert_refused(run, code, err, "--attention must be one of glm | causal, got 'sparse'")
    code, err = run([OK], "--lr_scheduler_type", "wobble")
    assert_refused(run, code, err, "wobble is not a valid SchedulerType")


def test_unknown_flag(run):
    code, err = run([OK], "--fast_rnak", "4")
    assert_refused(run, code, err, "not used", "--fast_rnak")


# --- model and output ------------------------------------------------------------------------


def test_fast_target_modules_not_in_model(run):
    code, err = run([OK], "--fast_target_modules", "gate_proj", "w_in")
    assert_refused(run, code, err, "--fast_target_modules", "no Linear named ['w_in']", "'up_proj'")


def test_missing_model_path(run):
    code, err = run([OK], model="no-such-model-dir")
    assert_refused(run, code, err, "--model ", "no-such-model-dir: cannot load a causal LM",
                   "no such local directory")


def test_output_dir_not_empty(run):
    run.out.mkdir()
    (run.out / "keep.txt").write_text("mine")
    code, err = run([OK])
    assert code == 2 and "Traceback" not in err
    assert "--output_dir" in err and "is not empty" in err and "--resume_from_checkpoint last" in err
    assert sorted(os.listdir(run.out)) == ["keep.txt"] and (run.out / "keep.txt").read_text() == "mine"


def test_resume_without_checkpoint(run):
    code, err = run([OK], "--resume_from_checkpoint", "last")
    assert_refused(run, code, err, "--resume_from_checkpoint last: no checkpoint-N folder")


# --- values that used to crash later, or train nothing -------------------------------------


@pytest.mark.parametrize("flags, fragment", [
    (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size must be in [1, inf], got 0"),
    (("--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps must be in [1, inf], got 0"),
    (("--learning_rate", "-1"), "--learning_rate must be in [0.0, inf], got -1.0"),
    (("--inner_lr", "nan"), "--inner_lr must be a finite number, got nan"),
    (("--max_steps", "0"), "--max_steps must be >= 1"),
    (("--max_steps", "-1", "--num_train_epochs", "0"), "--num_train_epochs must be > 0"),
    (("--dataset_num_proc", "0"), "--dataset_num_proc must be in [1, inf], got 0"),
])
def test_bad_training_values(run, flags, fragment):
    code, err = run([OK], *flags)
    assert_refused(run, code, err, fragment)


def test_yaml_list_for_a_scalar_key(run):
    (run.tmp / "c.yaml").write_text("learning_rate: [1e-4, 2e-4]\n")
    code, err = run([OK], "--config", str(run.tmp / "c.yaml"))
    assert_refused(run, code, err, "c.yaml", "key 'learning_rate' is a list", "takes one value")


@pytest.mark.parametrize("model, fragment", [
    ("empty", "the directory is empty"),
    ("zero_bytes", "model.safetensors is empty (0 bytes)"),
    ("no_tokenizer", "no tokenizer files"),
    ("pickle", "only pickle weights (pytorch_model.bin)"),
    ("pickle_adapter", "a PEFT adapter directory without adapter_model.safetensors"),
    ("small_vocab", "embedding table has 64 rows"),
])
def test_bad_model_dirs(run, model, fragment):
    code, err = run([OK], model=model)
    assert_refused(run, code, err, f"--model {run.models / model}", fragment)


@pytest.mark.parametrize("value, model, fragment", [
    ("type=wobble,factor=4", "model", "unknown type 'wobble'"),
    ("type=yarn,factor=1", "model", "factor must be a number > 1"),
    ("type=llama3,factor=8,low_freq_factor=1", "model", "Missing required keys"),
    ("type=yarn,factor=4", "gpt2", "the model (gpt2) has no rotary position embedding"),
])
def test_bad_rope_scaling(run, value, model, fragment):
    code, err = run([OK], "--rope_scaling", value, model=model)
    assert_refused(run, code, err, "--rope_scaling ", fragment)


def test_tokenizer_without_chat_template(run):
    code, err = run([OK], model="no_template")
    assert_refused(run, code, err, "train.jsonl: the model's tokenizer (--model): the tokenizer has no chat_template")


def test_unterminated_jsonl_line_names_its_end(run):
    bad = '{"messages": [{"role": "user", "content": "hi"}'
    (run.tmp / "bad.jsonl").write_text(json.dumps(OK) + "\n\n" + bad + "\n")
    code, err = run(run.tmp / "bad.jsonl")
    assert_refused(run, code, err, "bad.jsonl line 3: not valid JSON", f"column {len(bad) + 1}")


def test_glob_matching_nothing(run):
    code, err = run(str(run.tmp / "shards" / "*.jsonl"))
    assert_refused(run, code, err, "*.jsonl: the pattern matches no file")


def test_sharegpt_unknown_role(run):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}
    code, err = run([row])
    assert_refused(run, code, err, "train.jsonl line 1: conversations[1].from is 'bot'")


def test_bad_weight(run):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]}
    code, err = run([row])
    assert_refused(run, code, err, "train.jsonl line 1: messages[1].weight is 2")


def test_sharegpt_and_alpaca_rows_train(run):
    rows = [{"conversations": [{"from": "human", "value": "Where is the cat?"}, {"from": "gpt", "value": "On the mat."}]},
            {"instruction": "Where is the cat?", "output": "On the mat."}, OK]
    code, err = run(rows)
    assert code == 0, err
    report = json.loads((run.out / "data_report.json").read_text())
    assert report["rows_kept"] == 3 and report["template_rule"] == "prefix"


def test_utf8_bom_jsonl_is_accepted(run):
    (run.tmp / "bom.jsonl").write_text("\ufeff" + json.dumps(OK) + "\n", encoding="utf-8")
    code, err = run(run.tmp / "bom.jsonl")
    assert code == 0, err


# --- faults during training ------------------------------------------------------------------


def test_non_finite_loss_stops_before_saving(run, monkeypatch):
    """A loss that turns NaN at step 3 stops the run before the update; final/ is never written."""
    from focusft.training import trainer as trainer_module

    original = trainer_module.FocusTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(trainer_module.FocusTrainer, "compute_loss", poisoned)
    code, err = run([OK] * 4, "--max_steps", "5", "--save_strategy", "steps", "--save_steps", "1",
                    "--per_device_train_batch_size", "2")
    assert code == 3, err
    assert "Traceback" not in err
    assert "the training loss became nan at optimizer step 3" in err
    assert "checkpoint-2" in err
    assert sorted(p.name for p in run.out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (run.out / "final").exists() and not (run.out / "result.json").exists()
    from safetensors.torch import load_file
    weights = load_file(run.out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_checkpoints_are_staged_then_renamed(run, monkeypatch):
    """While a checkpoint is being written no `checkpoint-N` exists; afterwards no staging dir."""
    from transformers import Trainer

    seen = []
    original = Trainer._save_optimizer_and_scheduler

    def spy(self, output_dir):
        seen.append((output_dir, sorted(p.name for p in run.out.iterdir())))
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", spy)
    code, err = run([OK] * 2, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                    "--save_total_limit", "1")
    assert code == 0, err
    assert [os.path.basename(os.path.dirname(d)) for d, _ in seen] == [
        "_staging-checkpoint-1", "_staging-checkpoint-2"]
    assert "checkpoint-1" not in seen[0][1] and "checkpoint-2" not in seen[1][1]
    left = sorted(p.name for p in run.out.iterdir())
    assert left == ["checkpoint-2", "data_report.json", "final", "result.json"]
    state = json.loads((run.out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_diagnose_and_eval_load_safetensors_only(models, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(OK) + "\n")
    for model, fragment in (("pickle", "only pickle weights (pytorch_model.bin)"),
                            ("pickle_adapter", "without adapter_model.safetensors")):
        for argv in (["diagnose", "--model", str(models / model), "--data", str(data), "--out", str(tmp_path / "o")],
                     ["eval", "--model", str(models / model), "--suite", "babilong", "--out", str(tmp_path / "o")]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert fragment in err and "Traceback" not in err
            assert not (tmp_path / "o").exists()
