"""The embedded default: data with evidence, a deterministic tokenizer, and `focusft train` with
no arguments end to end (shortened), with attention diagnostics logged during training."""

import json

import pytest

from focusft.sources import default
from focusft.cli import main


@pytest.fixture(scope="module")
def tokenizer():
    return default.load_default_tokenizer()


def test_rows_are_deterministic_and_splits_differ(tokenizer):
    a = default.default_training_rows(6, seed=3, lengths=64, n_people=2, tokenizer=tokenizer)
    b = default.default_training_rows(6, seed=3, lengths=64, n_people=2, tokenizer=tokenizer)
    held = default.default_eval_rows(6, seed=3, lengths=64, n_people=2, tokenizer=tokenizer)
    assert a == b
    assert not {r["messages"][0]["content"] for r in a} & {r["messages"][0]["content"] for r in held}


@pytest.mark.parametrize("n_people", [1, 3])
def test_evidence_span_is_the_fact_that_answers_the_question(tokenizer, n_people):
    for row in default.default_training_rows(20, seed=1, lengths=96, n_people=n_people,
                                             tokenizer=tokenizer):
        content = row["messages"][0]["content"]
        person = content.rsplit("Where is ", 1)[1].rstrip("?")
        [(start, end)] = row["evidence"]
        fact = content[start:end]
        assert fact.startswith(person + " ") and fact.endswith(f"the {row['target']}.")
        assert row["messages"][1]["content"] == row["target"]


def test_lengths_hit_their_token_budget(tokenizer):
    for length in (64, 256):
        rows = default.default_training_rows(10, seed=0, lengths=length, n_people=1,
                                             tokenizer=tokenizer)
        for row in rows:
            story = row["messages"][0]["content"].split("\n\nQuestion")[0]
            n = len(tokenizer(story, add_special_tokens=False)["input_ids"])
            assert length <= n <= length + 20


def test_answers_are_single_tokens(tokenizer):
    for place in default.PLACES:
        assert len(tokenizer(place, add_special_tokens=False)["input_ids"]) == 1
        assert len(tokenizer(" " + place, add_special_tokens=False)["input_ids"]) == 1


def test_first_word_scoring():
    assert default.first_word("  Kitchen. and more") == "kitchen"
    assert default.first_word("...") == ""


def test_train_with_no_arguments_runs_the_embedded_default(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setitem(default.DEFAULT_RECIPE, "train_samples", 24)
    monkeypatch.setitem(default.DEFAULT_RECIPE, "eval_samples", 6)
    out = tmp_path / "run"
    code = main(["train", "--output_dir", str(out), "--max_steps", "2", "--disable_tqdm", "true",
                 "--per_device_train_batch_size", "4", "--diagnostics_steps", "1",
                 "--diagnostics_samples", "3", "--logging_steps", "1",
                 "--save_strategy", "steps", "--save_steps", "2"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "focusft" and result["steps"] == 2
    assert result["heldout_samples"] == 6 and 0 <= result["heldout_accuracy"] <= 100
    assert result["chance_accuracy"] == pytest.approx(100 / len(default.PLACES), abs=0.1)
    assert (out / "final" / "model.safetensors").exists()
    records = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        mean = r["mean"]
        assert mean["sink"] + mean["context"] + mean["response"] == pytest.approx(1.0, abs=1e-5)
        assert 0 < mean["evidence"] <= mean["context"]
        assert len(r["per_layer"]["sink"]) == default.default_model_config(
            default.load_default_tokenizer()).num_hidden_layers
    # The diagnostics logs do not displace the training logs of the same step.
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert [h["step"] for h in history if "diag/sink" in h] == [0, 1, 2]
    printed = capsys.readouterr().out
    assert '"history"' not in printed  # the full record is in result.json, not on the screen
    summary = printed[printed.index("focusft train: done"):].splitlines()
    assert 8 <= len(summary) <= 15, summary
    assert summary[0] == f"focusft train: done, 2 steps in {result['train_seconds']:g} s"
    text = "\n".join(summary)
    assert "focusft, glm mask, context inner objective (2 inner steps)" in text
    assert (f"held-out:    {result['heldout_accuracy']}% answer accuracy on 6 rows "
            f"(chance {result['chance_accuracy']}%)") in text
    harm = result["history"][-1]["inner_harm"]
    assert f"inner loop:  harm {harm:.3g} (" in text and "leakage: none possible (context" in text
    assert f"final model: {out / 'final'}" in text and f"result:      {out / 'result.json'}" in text
    assert str(out / "diagnostics.jsonl") in text and str(out / "data_report.json") in text
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]  # no accelerator here


def test_data_command_writes_default_task_rows_apart_from_training(tmp_path, tokenizer):
    out = tmp_path / "probe.jsonl"
    assert main(["data", "default", "--lengths", "64,128", "--samples", "4", "--split", "test",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(r["evidence"] and r["task"] == "locate" for r in rows)
    recipe = default.DEFAULT_RECIPE
    train = default.default_training_rows(64, lengths=(64, 128), n_people=recipe["n_people"],
                                          tokenizer=tokenizer)
    contents = {r["messages"][0]["content"] for r in train}
    assert not contents & {r["messages"][0]["content"] for r in rows}
