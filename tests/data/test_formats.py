"""Formats converted on load (ShareGPT / LLaMA-Factory, Alpaca, OpenAI weights), several files,
parquet tool data kept exactly as written, and errors that name file, line and field."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_fixtures import chatml_tokenizer, prefix_breaking_tokenizer

from focusft.data.pipeline import load_rows, normalize_row, tokenize_rows
from focusft.sources.default import load_default_tokenizer
from focusft.errors import UserError
from focusft.data.templates import ChatEncoder

CALC = {"type": "function", "function": {"name": "calc", "parameters": {
    "type": "object", "properties": {"expr": {"type": "string"}}}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}


def tool_row(name, arguments, tool, answer):
    return {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": answer}], "tools": [tool]}


def write_jsonl(path, rows, prefix=""):
    path.write_text(prefix + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def trained(tok, row) -> list[str]:
    messages, tools = normalize_row(row, "r")
    ids, mask, _ = ChatEncoder(tok).encode(messages, tools)
    out, cur = [], []
    for t, m in zip(ids + [None], mask + [0]):
        if m:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out


def test_sharegpt_and_llama_factory_rows_convert():
    row = {"system": "Be brief.", "tools": json.dumps([CALC]), "conversations": [
        {"from": "human", "value": "2+2?"},
        {"from": "function_call", "value": json.dumps({"name": "calc", "arguments": {"expr": "2+2"}})},
        {"from": "observation", "value": "4"},
        {"from": "gpt", "value": "Four."}], "id": 7}
    messages, tools = normalize_row(row, "r")
    assert messages == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "calc", "arguments": {"expr": "2+2"}}}]},
        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "Four."}]
    assert tools == [CALC]
    assert trained(load_default_tokenizer(), row) == [
        '<tool_call>\n{"name": "calc", "arguments": {"expr": "2+2"}}\n</tool_call><|im_end|>',
        "Four.<|im_end|>"]


def test_alpaca_rows_convert():
    row = {"instruction": "Translate.", "input": "chat", "output": "cat", "system": "Be exact.",
           "history": [["Hi", "Hello."]]}
    messages, _ = normalize_row(row, "r")
    assert messages == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Translate.\nchat"},
                        {"role": "assistant", "content": "cat"}]
    assert normalize_row({"instruction": "Say hi.", "output": "hi"}, "r")[0] == [
        {"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


@pytest.mark.parametrize("make", [chatml_tokenizer, load_default_tokenizer, prefix_breaking_tokenizer])
def test_openai_weight_zero_turn_is_context(make):
    row = {"messages": [{"role": "user", "content": "a?"},
                        {"role": "assistant", "content": "Wrong.", "weight": 0},
                        {"role": "user", "content": "b?"},
                        {"role": "assistant", "content": "Right.", "weight": 1}]}
    assert trained(make(), row) == ["Right.<|im_end|>"]


def test_parquet_tool_arguments_come_back_as_written(tmp_path):
    rows = [tool_row("calc", {"expr": "2+2"}, CALC, "4."),
            tool_row("weather", {"city": "Paris", "days": 2}, WEATHER, "Sunny."),
            tool_row("calc", '{"expr": "1"}', CALC, "1.")]  # a JSON string stays a string
    # one column per field, as pyarrow infers it: row 0's arguments gain city/days = null
    table = pa.Table.from_pylist([{**r, "messages": r["messages"][:]} for r in rows[:2]])
    assert table.to_pylist()[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "expr": "2+2", "city": None, "days": None}
    pq.write_table(table, tmp_path / "tools.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "more.parquet")
    loaded = load_rows(f"{tmp_path / 'tools.parquet'},{tmp_path / 'more.parquet'}")
    tok = load_default_tokenizer()
    for index, original in enumerate(rows):
        messages, tools = normalize_row(loaded[index], "x")
        assert messages == normalize_row(original, "x")[0] and tools == original["tools"]
        assert trained(tok, loaded[index]) == trained(tok, original)
    assert loaded[1]["where"].endswith("tools.parquet row 1")
    assert loaded[2]["where"].endswith("more.parquet row 0")


def test_several_files_globs_dirs_and_bom(tmp_path):
    row = {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "A."}]}
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", [row] * 2)
    write_jsonl(tmp_path / "d" / "b.jsonl", [row] * 3, prefix="\ufeff")  # UTF-8 BOM
    (tmp_path / "d" / "c.json").write_text(json.dumps([row]))
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    assert len(load_rows(str(tmp_path / "d"))) == 6
    assert len(load_rows(str(tmp_path / "d" / "*.jsonl"))) == 5
    both = load_rows(f"{tmp_path / 'd' / 'b.jsonl'}, {tmp_path / 'd' / 'a.jsonl'}")
    assert [w.rsplit("/", 1)[1] for w in both["where"]] == [
        "b.jsonl line 1", "b.jsonl line 2", "b.jsonl line 3", "a.jsonl line 1", "a.jsonl line 2"]
    data, report = tokenize_rows(both, chatml_tokenizer(), 512, "error", "both")
    assert report.rows_kept == 5


def error(tmp_path, lines: list[str], name="d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        load_rows(str(path))
    assert str(path) in str(err.value)
    return str(err.value).replace(str(tmp_path) + "/", "")


OK = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})


def test_errors_name_file_line_and_field(tmp_path):
    assert error(tmp_path, [OK, "", "", '{"messages": [{"role": "bot", "content": "x"}]}']).startswith(
        "d.jsonl line 4: messages[0].role is 'bot'")
    unterminated = '{"messages": [{"role": "user", "content": "a"}'
    message = error(tmp_path, [OK, unterminated])
    assert message.startswith("d.jsonl line 2: not valid JSON") and f"column {len(unterminated) + 1}" in message
    assert "conversations[1].from is 'robot'" in error(
        tmp_path, [json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]})])
    assert "conversations[1].value of a function_call turn must be JSON" in error(
        tmp_path, [json.dumps({"conversations": [{"from": "human", "value": "a"},
                                                 {"from": "function_call", "value": "calc(2)"}]})])
    assert "field 'output' must be a string" in error(tmp_path, [json.dumps({"instruction": "a"})])
    assert "messages[1].weight is 0.5" in error(tmp_path, [json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}]})])
    assert "no assistant turn (with weight 1)" in error(tmp_path, [json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]})])
    message = error(tmp_path, ["[", OK + ",", '{"text": "x"}', "]"], name="d.json")
    assert message.startswith("d.json line 3 (item 1): no 'messages' or 'prompt' field")
