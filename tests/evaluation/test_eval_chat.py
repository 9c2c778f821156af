"""Chat rows and the `focusft data` command: format, disjoint splits, determinism."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from focusft.cli import main
from focusft.evaluation.babi import babi_samples
from focusft.evaluation.chat import babi_key, make_chat_rows
from focusft.evaluation.splits import split_of


def _users(rows):
    return {r["messages"][0]["content"] for r in rows}


def test_babilong_rows_format_and_evidence(tokenizer):
    rows = make_chat_rows("babilong", ["qa1", "qa5"], ["0k", "1k"], 3, seed=0, split="train",
                          tokenizer=tokenizer)
    assert len(rows) == 2 * 2 * 3
    for r in rows:
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == r["target"] and r["references"] == [r["target"]]
        assert r["evidence"] and all(user["content"][a:e].endswith(".") for a, e in r["evidence"])
        assert r["question"] in user["content"]
    # Same bAbI samples at every length: questions line up across 0k and 1k.
    q0 = [r["question"] for r in rows if r["task"] == "qa1" and r["length"] == 0]
    q1 = [r["question"] for r in rows if r["task"] == "qa1" and r["length"] == 1000]
    assert q0 == q1


def test_splits_share_no_sample():
    # At 0k the prompt is a function of (facts, question) alone, so equal prompts = equal samples.
    kw = dict(suite="babilong", tasks=["qa1", "qa4"], lengths=["0k"], n=150, seed=0)
    train = make_chat_rows(split="train", **kw)
    test = make_chat_rows(split="test", **kw)
    val = make_chat_rows(split="validation", **kw)
    assert not _users(train) & _users(test)
    assert not _users(train) & _users(val) and not _users(val) & _users(test)
    assert len(_users(test)) == len(test)  # no duplicates inside a split
    # Another seed for train still never lands in test.
    assert not _users(make_chat_rows(split="train", **{**kw, "seed": 9})) & _users(test)


def test_split_keys_are_partitioned():
    keys = [babi_key(s) for s in babi_samples("qa2", 400, 0)]
    shares = {k: sum(split_of(x) == k for x in keys) / len(keys) for k in ("train", "test")}
    assert 0.7 < shares["train"] < 0.9 and 0.04 < shares["test"] < 0.17


def test_ruler_rows_and_split(tokenizer):
    rows = make_chat_rows("ruler", ["niah_single_1", "qa_1"], [1024], 2, seed=1, split="test",
                          tokenizer=tokenizer)
    assert len(rows) == 4
    for r in rows:
        user, assistant = r["messages"]
        assert all(ref in assistant["content"] for ref in r["references"])
        assert all(split_of(ref) == "test" for ref in r["references"])
        assert not user["content"].endswith("are") and not user["content"].endswith("Answer:")
        assert all(user["content"][a:e] for a, e in r["evidence"])


def test_rows_are_deterministic(tokenizer):
    a = make_chat_rows("babilong", ["qa3"], ["1k"], 2, 3, "validation", tokenizer)
    assert a == make_chat_rows("babilong", ["qa3"], ["1k"], 2, 3, "validation", tokenizer)


def test_data_command_parquet_and_jsonl(tmp_path):
    out = tmp_path / "d.parquet"
    assert main(["data", "babilong", "--tasks", "qa1,qa2", "--lengths", "0k", "--samples", "2",
                 "--tokenizer", "default", "--out", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    assert len(table) == 4 and table[0]["messages"][1]["content"] == table[0]["target"]
    out2 = tmp_path / "r.jsonl"
    assert main(["data", "ruler", "--tasks", "vt", "--lengths", "1024", "--samples", "1",
                 "--split", "test", "--out", str(out2)]) == 0
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["metric"] == "all"
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("argv,flag", [
    (["--tasks", "qa9"], "--tasks"), (["--lengths", "4x"], "--lengths"),
    (["--samples", "0"], "--samples"), (["--haystack", "/no/such/dir"], "--haystack"),
    (["--tokenizer", "/no/such/tok"], "--tokenizer"),
])
def test_data_command_user_errors(tmp_path, capsys, argv, flag):
    code = main(["data", "babilong", *argv, "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_data_command_bad_extension(tmp_path, capsys):
    assert main(["data", "babilong", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--out" in capsys.readouterr().err
