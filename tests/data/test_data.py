"""Tests for focusft.data.pipeline: loading, row normalization, loss masks, truncation and collation."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from chat_fixtures import chatml_tokenizer, llama3_tokenizer, prefix_breaking_tokenizer

from focusft.data.pipeline import (
    Collator,
    DataReport,
    load_rows,
    normalize_row,
    tokenize_conversation,
    tokenize_rows,
)
from focusft.data.templates import encoder_for
from focusft.errors import UserError

FRANCE = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
THREE_TURNS = FRANCE + [
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_TURNS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": "sunny, 21 degrees", "tool_call_id": "call_0"},
    {"role": "assistant", "content": "It is sunny and 21 degrees."},
]


def loss_runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """Decode each maximal run of loss tokens."""
    runs, current = [], []
    for token, flag in zip(ids + [None], mask + [0]):
        if flag:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def masked(tokenizer, messages, tools=None) -> list[str]:
    messages, tools = normalize_row({"messages": messages, "tools": tools}, "test row 0")
    ids, mask = tokenize_conversation(tokenizer, messages, tools, "test row 0")
    assert len(ids) == len(mask)
    return loss_runs(tokenizer, ids, mask)


# ---------------------------------------------------------------------------- loss masks


def test_chatml_single_turn_with_injected_system_prompt():
    tok = chatml_tokenizer()
    full = tok.apply_chat_template(FRANCE, tokenize=False)
    assert full.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert masked(tok, FRANCE) == ["Paris.<|im_end|>"]


def test_chatml_explicit_system_prompt_is_not_loss():
    tok = chatml_tokenizer()
    messages = [{"role": "system", "content": "Answer briefly."}] + FRANCE
    assert "helpful" not in tok.apply_chat_template(messages, tokenize=False)
    assert masked(tok, messages) == ["Paris.<|im_end|>"]


def test_chatml_three_assistant_turns():
    runs = masked(chatml_tokenizer(), THREE_TURNS)
    assert runs == ["Paris.<|im_end|>", "Rome.<|im_end|>", "Madrid.<|im_end|>"]


def test_chatml_tool_turn():
    tok = chatml_tokenizer()
    full = tok.apply_chat_template(TOOL_TURNS, tools=[WEATHER_TOOL], tokenize=False)
    assert "# Tools" in full and "sunny, 21 degrees" in full
    runs = masked(tok, TOOL_TURNS, tools=[WEATHER_TOOL])
    assert runs == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is sunny and 21 degrees.<|im_end|>",
    ]


def test_llama3_multi_turn_never_trains_header_or_bos():
    tok = llama3_tokenizer()
    messages, _ = normalize_row({"messages": THREE_TURNS}, "x")
    ids, mask = tokenize_conversation(tok, messages)
    assert ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert loss_runs(tok, ids, mask) == ["Paris.<|eot_id|>", "Rome.<|eot_id|>", "Madrid.<|eot_id|>"]
    header_ids = {tok.convert_tokens_to_ids(t) for t in ("<|start_header_id|>", "<|end_header_id|>")}
    assert not any(m and t in header_ids for t, m in zip(ids, mask))


def test_non_ascii_content_and_template_trimming():
    chat = [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui ☕ très — 東京"}]
    assert masked(chatml_tokenizer(), chat) == ["Oui ☕ très — 東京<|im_end|>"]
    # The llama3 template trims content; the span follows the rendered text, not the raw message.
    chat[1]["content"] = "  Oui ☕  "
    assert masked(llama3_tokenizer(), chat) == ["Oui ☕<|eot_id|>"]


def test_header_tokens_never_in_loss_chatml():
    tok = chatml_tokenizer()
    messages, tools = normalize_row({"messages": TOOL_TURNS, "tools": [WEATHER_TOOL]}, "x")
    ids, mask = tokenize_conversation(tok, messages, tools)
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert start not in [t for t, m in zip(ids, mask) if m]
    loss_text = "".join(loss_runs(tok, ids, mask))
    assert "assistant" not in loss_text and "sunny, 21" not in loss_text
    assert sum(mask) > 0


def test_template_that_rewrites_history_gets_the_located_rule():
    # Earlier assistant turns render empty once a later message exists: only what R holds is trained.
    tok = prefix_breaking_tokenizer()
    assert encoder_for(tok).rule == "located"
    ids, mask = tokenize_conversation(tok, THREE_TURNS, where="data.jsonl row 4")
    # Earlier turns render nothing of their own (R does not change with them): nothing to train.
    assert loss_runs(tok, ids, mask) == ["Madrid.<|im_end|>"]


def test_prefix_breaking_template_is_fine_with_one_assistant_turn():
    # Only earlier assistant turns are rewritten; one final turn renders consistently.
    tok = prefix_breaking_tokenizer()
    ids, mask = tokenize_conversation(tok, FRANCE)
    assert loss_runs(tok, ids, mask) == ["Paris.<|im_end|>"]


def test_tokenizer_without_template_and_failing_template():
    tok = chatml_tokenizer()
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat_template"):
        tokenize_conversation(tok, FRANCE, where="d.jsonl row 0")
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(UserError, match="d.jsonl row 0.*roles must alternate"):
        tokenize_conversation(tok, FRANCE, where="d.jsonl row 0")


# ---------------------------------------------------------------------------- normalize_row


def test_prompt_completion_strings():
    messages, tools = normalize_row({"prompt": "What is the capital of France?", "completion": "Paris."}, "r")
    assert messages == FRANCE and tools is None
    assert masked(chatml_tokenizer(), messages) == ["Paris.<|im_end|>"]


def test_prompt_completion_conversational_lists():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, FRANCE[0]],
        "completion": [FRANCE[1]],
    }
    messages, _ = normalize_row(row, "r")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert masked(llama3_tokenizer(), messages) == ["Paris.<|eot_id|>"]


def test_null_keys_from_columnar_formats_are_dropped_and_tools_json_string_accepted():
    row = {
        "messages": [
            {"role": "user", "content": "hi", "tool_calls": None, "name": None},
            {"role": "assistant", "content": "yo", "tool_calls": None},
        ],
        "tools": json.dumps([WEATHER_TOOL]),
    }
    messages, tools = normalize_row(row, "r")
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tools == [WEATHER_TOOL]
    assert normalize_row({"messages": FRANCE, "tools": []}, "r")[1] is None


def test_extra_message_keys_pass_through():
    messages, _ = normalize_row({"messages": TOOL_TURNS}, "r")
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "content" not in messages[1]  # null content on a tool-call turn means "absent"
    assert messages[2]["tool_call_id"] == "call_0"


@pytest.mark.parametrize(
    "row, fragments",
    [
        ({"text": "hi", "label": 1}, ["'messages'", "'prompt'", "['label', 'text']"]),
        ({"messages": "hello"}, ["'messages'", "must be a list", "str"]),
        ({"messages": None}, ["'messages'", "null"]),
        ({"messages": [FRANCE[0], "Paris."]}, ["messages[1]", "must be a dict"]),
        (
            {"messages": [{"role": "bot", "content": "x"}, FRANCE[1]]},
            ["messages[0].role", "'bot'", "system, user, assistant, tool"],
        ),
        ({"messages": [{"role": "user", "content": 3}, FRANCE[1]]}, ["messages[0].content", "string", "int"]),
        (
            {"messages": [FRANCE[0], {"role": "assistant", "content": None}]},
            ["messages[1].content", "tool_calls"],
        ),
        ({"messages": [{"role": "user"}, FRANCE[1]]}, ["messages[0].content", "missing"]),
        ({"messages": [FRANCE[0]]}, ["'messages'", "no assistant turn"]),
        ({"prompt": "hi"}, ["'completion'", "missing"]),
        ({"prompt": 5, "completion": "x"}, ["'prompt'", "string or a list"]),
        ({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "robot", "content": "x"}]},
         ["completion[0].role", "'robot'"]),
        ({"messages": FRANCE, "tools": {"a": 1}}, ["'tools'", "list"]),
        ({"messages": FRANCE, "tools": "[oops"}, ["'tools'", "not valid JSON"]),
    ],
)
def test_normalize_row_errors_name_row_and_field(row, fragments):
    with pytest.raises(UserError) as err:
        normalize_row(row, "data.jsonl row 17")
    message = str(err.value)
    assert message.startswith("data.jsonl row 17:")
    for fragment in fragments:
        assert fragment in message


def test_assistant_tool_call_may_have_null_content():
    messages, _ = normalize_row({"messages": TOOL_TURNS}, "r")
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]


# ---------------------------------------------------------------------------- load_rows

ROWS = [{"messages": FRANCE}, {"messages": TOOL_TURNS, "tools": [WEATHER_TOOL]}]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_jsonl_json_parquet_and_saved_dirs(tmp_path):
    jsonl = load_rows(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert len(jsonl) == 2
    messages, tools = normalize_row(jsonl[1], "d.jsonl row 1")
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert tools[0]["function"]["name"] == "get_weather"

    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "a", "completion": "b"}] * 3))
    assert len(load_rows(str(tmp_path / "d.json"))) == 3

    simple = datasets.Dataset.from_list([{"messages": FRANCE}] * 4)
    simple.to_parquet(str(tmp_path / "d.parquet"))
    assert normalize_row(load_rows(str(tmp_path / "d.parquet"))[3], "r")[0] == FRANCE

    simple.save_to_disk(str(tmp_path / "saved"))
    assert len(load_rows(str(tmp_path / "saved"))) == 4
    datasets.DatasetDict({"train": simple, "test": simple.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(str(tmp_path / "dd"))) == 4


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[0]) + "\n")
    assert len(load_rows(str(path))) == 2


def load_error(path) -> str:
    with pytest.raises(UserError) as err:
        load_rows(str(path))
    assert str(path) in str(err.value)
    return str(err.value)


def test_load_errors(tmp_path):
    assert "not found" in load_error(tmp_path / "missing.jsonl")

    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "0 rows" in load_error(tmp_path / "empty.jsonl")

    (tmp_path / "empty.json").write_text("")
    assert "empty" in load_error(tmp_path / "empty.json")

    datasets.Dataset.from_dict({"messages": []}).to_parquet(str(tmp_path / "empty.parquet"))
    assert "0 rows" in load_error(tmp_path / "empty.parquet")

    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    assert "parquet" in load_error(tmp_path / "bad.parquet")

    lines = [json.dumps(ROWS[0]), json.dumps(ROWS[0]), '{"messages": [oops]}']
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    message = load_error(tmp_path / "bad.jsonl")
    assert "line 3" in message and "not valid JSON" in message

    (tmp_path / "list.jsonl").write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    assert "line 2" in load_error(tmp_path / "list.jsonl")

    (tmp_path / "bad.json").write_text("[" + json.dumps(ROWS[0]) + ',\n {"a": }]')
    assert "line 2" in load_error(tmp_path / "bad.json")

    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    message = load_error(tmp_path / "d.csv")
    assert "extension" in message and ".parquet" in message and ".jsonl" in message

    (tmp_path / "not_a_dataset").mkdir()
    assert "save_to_disk" in load_error(tmp_path / "not_a_dataset")

    simple = datasets.Dataset.from_list([{"messages": FRANCE}])
    datasets.DatasetDict({"validation": simple}).save_to_disk(str(tmp_path / "no_train"))
    assert "'train'" in load_error(tmp_path / "no_train")


# ---------------------------------------------------------------------------- tokenize_rows

LONG = " ".join(["What is the weather in Paris today?"] * 8)
ROW_SHORT = {"messages": FRANCE}  # fits exactly (max_length is set to its length)
ROW_LONG_PROMPT = {
    "messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Paris."}]
}
ROW_LONG_TAIL = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": LONG},
    ]
}


def three_rows():
    tok = chatml_tokenizer()
    rows = datasets.Dataset.from_list([ROW_SHORT, ROW_LONG_PROMPT, ROW_LONG_TAIL])
    lengths = [len(tokenize_conversation(tok, *normalize_row(r, "r"))[0]) for r in rows]
    assert lengths[0] < lengths[1] and lengths[0] < lengths[2]
    return tok, rows, lengths[0]


def test_truncation_right_drops_rows_whose_answer_is_cut_off():
    tok, rows, max_length = three_rows()
    data, report = tokenize_rows(rows, tok, max_length, "right", "d.jsonl")
    assert data["sample_id"] == [0, 2]
    counts = (report.rows_read, report.rows_kept, report.truncated, report.dropped_no_assistant_tokens)
    assert counts == (3, 2, 2, 1)
    assert data["length"] == [max_length, max_length] and report.max_len == max_length
    assert loss_runs(tok, data[1]["input_ids"], data[1]["loss_mask"]) == ["Paris.<|im_end|>"]
    assert report.total_tokens == 2 * max_length


def test_truncation_left_keeps_the_tail():
    tok, rows, max_length = three_rows()
    data, report = tokenize_rows(rows, tok, max_length, "left", "d.jsonl")
    assert data["sample_id"] == [0, 1]
    assert (report.rows_kept, report.truncated, report.dropped_no_assistant_tokens) == (2, 2, 1)
    full_ids, _ = tokenize_conversation(tok, *normalize_row(ROW_LONG_PROMPT, "r"))
    assert data[1]["input_ids"] == full_ids[-max_length:]
    assert loss_runs(tok, data[1]["input_ids"], data[1]["loss_mask"]) == ["Paris.<|im_end|>"]
    assert report.loss_tokens == sum(sum(m[1:]) for m in data["loss_mask"])
    assert report.summary().startswith("read 3 rows, kept 2 (2 truncated, 1 dropped")


def test_truncation_error_names_row_length_and_flags():
    tok, rows, max_length = three_rows()
    with pytest.raises(UserError) as err:
        tokenize_rows(rows, tok, max_length, "error", "d.jsonl")
    message = str(err.value)
    assert "d.jsonl row 1" in message and f"--max_length {max_length}" in message
    assert "--truncation" in message and "tokens" in message


def test_no_truncation_needed_and_bad_flags():
    tok, rows, _ = three_rows()
    data, report = tokenize_rows(rows, tok, 4096, "error", "d.jsonl")
    assert len(data) == 3 and report.truncated == 0 and report.dropped_no_assistant_tokens == 0
    assert data.features["input_ids"].feature.dtype == "int32"
    assert set(data.column_names) == {"input_ids", "loss_mask", "sample_id", "length"}
    with pytest.raises(UserError, match="--truncation"):
        tokenize_rows(rows, tok, 100, "middle", "d.jsonl")
    with pytest.raises(UserError, match="--max_length"):
        tokenize_rows(rows, tok, 0, "left", "d.jsonl")


def test_all_rows_dropped_is_an_error_and_row_errors_name_the_source():
    tok, rows, _ = three_rows()
    with pytest.raises(UserError, match="d.jsonl: no usable rows"):
        tokenize_rows(rows.select([1]), tok, 5, "right", "d.jsonl")
    bad = datasets.Dataset.from_list([{"messages": FRANCE}, {"messages": [FRANCE[0]]}])
    with pytest.raises(UserError, match="d.jsonl row 1: field 'messages' has no assistant turn"):
        tokenize_rows(bad, tok, 100, "error", "d.jsonl")


def test_data_report_defaults():
    assert DataReport().summary().startswith("read 0 rows, kept 0")


# ---------------------------------------------------------------------------- Collator


def test_collator_pads_to_longest_and_shifts_labels():
    features = [
        {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1], "sample_id": 3, "length": 3},
        {"input_ids": [8, 9, 10, 11, 12], "loss_mask": [0, 0, 1, 0, 1], "sample_id": 9, "length": 5},
    ]
    batch = Collator(pad_id=99)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 99, 99], [8, 9, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["loss_mask"].dtype == torch.bool
    assert batch["loss_mask"].tolist() == [
        [False, True, True, False, False],
        [False, False, True, False, True],
    ]
    assert batch["labels"].tolist() == [[6, 7, -100, -100, -100], [-100, 10, -100, 12, -100]]
    assert batch["sample_ids"].tolist() == [3, 9]
    for key in ("input_ids", "attention_mask", "labels", "sample_ids"):
        assert batch[key].dtype == torch.long


def test_collator_pad_to_multiple_and_pads_never_loss():
    tok, rows, _ = three_rows()
    data, _ = tokenize_rows(rows, tok, 4096, "error", "d.jsonl")
    batch = Collator(pad_id=tok.pad_token_id, pad_to_multiple_of=64)([data[i] for i in range(3)])
    assert batch["input_ids"].shape[1] % 64 == 0
    assert batch["input_ids"].shape[1] - max(data["length"]) < 64
    pads = batch["attention_mask"] == 0
    assert not batch["loss_mask"][pads].any()
    assert (batch["input_ids"][pads] == tok.pad_token_id).all()
    # Every label is the next real token and a loss token; the count matches the report.
    b, t = torch.nonzero(batch["labels"] != -100, as_tuple=True)
    assert torch.equal(batch["labels"][b, t], batch["input_ids"][b, t + 1])
    assert batch["loss_mask"][b, t + 1].all() and batch["attention_mask"][b, t + 1].all()
    assert batch["sample_ids"].tolist() == [0, 1, 2]


def test_collator_rejects_bad_config():
    with pytest.raises(ValueError):
        Collator(pad_id=None)
    with pytest.raises(ValueError):
        Collator(pad_id=0)([])


# ---------------------------------------------------------------------------- rules and speed-ups


def test_default_template_marks_the_same_tokens_as_the_prefix_rule():
    """The embedded default's trained numbers do not move: its generation markers train exactly
    what the prefix rule trained (content + <|im_end|>), and transformers agrees."""
    from focusft.sources.default import default_training_rows, load_default_tokenizer
    from focusft.data.templates import ChatEncoder

    tok = load_default_tokenizer()
    marked, prefix = ChatEncoder(tok), ChatEncoder(tok, rule="prefix")
    assert marked.rule == "generation"
    for row in default_training_rows(12, lengths=(32, 64), tokenizer=tok) + [{"messages": THREE_TURNS}]:
        ids, mask, _ = marked.encode(row["messages"])
        assert (ids, mask) == prefix.encode(row["messages"])[:2]
        out = tok.apply_chat_template(row["messages"], return_dict=True, return_assistant_tokens_mask=True)
        assert list(out["input_ids"]) == ids and list(out["assistant_masks"]) == mask


def test_default_template_renders_and_trains_tool_calls():
    from focusft.sources.default import load_default_tokenizer

    tok = load_default_tokenizer()
    text = tok.apply_chat_template(TOOL_TURNS, tools=[WEATHER_TOOL], tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools\n") and '"name": "get_weather"' in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 degrees\n</tool_response><|im_end|>\n" in text
    assert masked(tok, TOOL_TURNS, tools=[WEATHER_TOOL]) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is sunny and 21 degrees.<|im_end|>",
    ]
    # arguments given as a JSON string render as given
    as_string = [dict(m) for m in TOOL_TURNS]
    as_string[1] = {**as_string[1], "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert '"arguments": {"city":"Paris"}}' in masked(tok, as_string)[0]


def test_num_proc_gives_the_same_dataset_and_reruns_hit_the_cache(tmp_path, monkeypatch):
    from focusft.data import templates

    tok = chatml_tokenizer()
    rows = [{"messages": THREE_TURNS}, {"messages": FRANCE}, ROW_LONG_PROMPT] * 4
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    one, report_one = tokenize_rows(load_rows(path), tok, 4096, "error", "d.jsonl")
    two, report_two = tokenize_rows(load_rows(path), tok, 4096, "error", "d.jsonl", num_proc=2)
    assert one.to_dict() == two.to_dict() and vars(report_one) == vars(report_two)
    assert report_one.template_rule == "prefix" and report_one.rows_by_rule == {"prefix": 12}

    calls = []
    original = templates.ChatEncoder.encode
    monkeypatch.setattr(templates.ChatEncoder, "encode", lambda self, *a: calls.append(1) or original(self, *a))
    again, _ = tokenize_rows(load_rows(path), tok, 4096, "error", "d.jsonl")
    assert calls == [] and again.to_dict() == one.to_dict()  # read back from the datasets cache
    tokenize_rows(load_rows(path), tok, 4000, "error", "d.jsonl")
    assert len(calls) == 12  # other arguments: tokenized afresh
