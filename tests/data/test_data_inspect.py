"""`focusft data inspect`: the terminal view brackets exactly the trained tokens, the JSON lists
every token with its id, text and trained flag, as training would tokenize the row."""

import json

from chat_fixtures import chatml_tokenizer

from focusft.cli import main
from focusft.data.pipeline import load_rows, tokenize_rows

ROW = {"messages": [{"role": "user", "content": "Where is Mary?"},
                    {"role": "assistant", "content": "kitchen"},
                    {"role": "user", "content": "And John?"},
                    {"role": "assistant", "content": "garden"}]}


def test_inspect_shows_the_training_mask(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    chatml_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "mask.json"
    code = main(["data", "inspect", "--data", str(data), "--model", str(tmp_path / "tok"),
                 "--rows", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "[[kitchen<|im_end|>]]\n<|im_start|>user\nAnd John?" in printed
    assert printed.split("\n---")[0].count("[[") == 2 and "line 1: " in printed and "rule: prefix" in printed
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 1 and report["rule"] == "prefix"
    tokens = report["rows"][0]["tokens"]
    expected, _ = tokenize_rows(load_rows(str(data)), chatml_tokenizer(), 512, "error", "d")
    assert [t["id"] for t in tokens] == expected[0]["input_ids"]
    assert [int(t["trained"]) for t in tokens] == expected[0]["loss_mask"]
    assert "".join(t["text"] for t in tokens if t["trained"]) == "kitchen<|im_end|>garden<|im_end|>"


def test_inspect_defaults_to_the_embedded_tokenizer_and_refuses_bad_flags(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    assert main(["data", "inspect", "--data", str(data)]) == 0
    assert "rule: generation" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", "--data", str(data), "--model", str(tmp_path / "empty")]) == 2
    assert "the directory is empty" in capsys.readouterr().err
    assert main(["data", "inspect", "--data", str(data), "--rows", "0"]) == 2
    assert "--rows is 0" in capsys.readouterr().err
