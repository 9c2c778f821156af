"""Content as text parts and tool-call turns without content, under every chat template TRL
ships and under a template that reads ``message.content`` unguarded (focusft.data.message_forms)."""

from __future__ import annotations

import json

import jinja2
import pytest
from chat_fixtures import chatml_tokenizer, template_tokenizer

from focusft.cli import main
from focusft.data.pipeline import load_rows, normalize_row, tokenize_rows
from focusft.errors import UserError
from focusft.data.templates import ChatEncoder

trl = pytest.importorskip("trl")
from test_templates import CALL, ORIGINALS, PLAIN, TOOLS, first_rendered, runs, source  # noqa: E402

# ChatML that concatenates role, content and calls without checking that content exists.
UNGUARDED = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content -}}"
    "{%- if message.tool_calls -%}{%- for call in message.tool_calls -%}"
    "{{- '<tool_call>' + (call.function | tojson) + '</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
TOOL_ROW = {"messages": [
    {"role": "user", "content": "Weather in Lyon?"},
    {"role": "assistant", "content": None, "tool_calls": CALL},
    {"role": "tool", "content": "CLOUDLESS-42", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "Sunny."}], "tools": TOOLS}


def as_parts(messages, split=False):
    """Every string content as text parts (two parts, cut in the middle, with ``split``)."""
    out = []
    for m in messages:
        text = m["content"]
        cut = len(text) // 2 if split else len(text)
        parts = [{"type": "text", "text": text[:cut]}] + ([{"type": "text", "text": text[cut:]}] if split else [])
        out.append({**m, "content": parts})
    return out


def encode(tok, row):
    messages, tools = normalize_row(row, "r")
    return ChatEncoder(tok).encode(messages, tools)[:2]


@pytest.mark.parametrize("name", ORIGINALS)
def test_text_parts_train_like_strings(name):
    """One text part per message trains exactly what the string does, whether the template
    reads parts itself or they are joined; two parts are joined where the template reads strings."""
    tok = template_tokenizer(source(name))
    shape, messages, _ = first_rendered(tok)
    if shape == "content blocks":  # the template wants parts: they reach it as given
        ids, mask = encode(tok, {"messages": messages})
        assert ChatEncoder(tok).forms.parts_roles
        assert "Paris." in tok.decode([t for t, m in zip(ids, mask) if m])
        return
    messages = [m for m in messages if "tool_calls" not in m and m["role"] != "tool"]
    plain = encode(tok, {"messages": messages})
    assert encode(tok, {"messages": as_parts(messages)}) == plain
    forms = ChatEncoder(tok).forms
    if not forms.parts_roles & {m["role"] for m in messages}:
        assert encode(tok, {"messages": as_parts(messages, split=True)}) == plain


@pytest.mark.parametrize("name", ORIGINALS)
def test_tool_call_turn_with_null_content_trains_its_calls(name):
    """OpenAI's ``"content": null`` on a tool-calling turn renders under every template that
    renders the turn at all, and the trained tokens hold the call the template renders."""
    tok = template_tokenizer(source(name))
    empty = {**TOOL_ROW, "messages": [dict(m, content=m["content"] or "") for m in TOOL_ROW["messages"]]}
    try:
        tok.apply_chat_template(empty["messages"], tools=TOOLS, tokenize=False)
    except (jinja2.TemplateError, TypeError, ValueError):
        pytest.skip("the template renders no tool-calling conversation")
    encoder = ChatEncoder(tok)
    ids, mask = encode(tok, TOOL_ROW)
    if encoder.forms.empty_tool_call_content:
        assert (ids, mask) == encode(tok, empty)
    full, trained = tok.decode(ids), tok.decode([t for t, m in zip(ids, mask) if m])
    assert "Sunny." in trained and "CLOUDLESS-42" not in trained
    if "Lyon" in full.replace("Weather in Lyon?", ""):  # the template renders the call's arguments
        assert "get_weather" in trained and "Lyon" in trained.replace("Weather in Lyon?", "")


def test_unguarded_template_gets_empty_content_and_reports_it():
    tok = template_tokenizer(UNGUARDED)
    messages, tools = normalize_row(TOOL_ROW, "r")
    with pytest.raises(jinja2.exceptions.UndefinedError):  # what plain transformers does
        tok.apply_chat_template(messages, tools=tools, tokenize=False)
    encoder = ChatEncoder(tok)
    assert encoder.forms.empty_tool_call_content
    ids, mask, _ = encoder.encode(messages, tools)
    assert runs(tok, ids, mask) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call><|im_end|>',
        "Sunny.<|im_end|>"]
    _, report = tokenize_rows([TOOL_ROW, {"messages": as_parts(PLAIN, split=True)}], tok, 512,
                              "error", "r")
    assert report.message_forms == {
        "content_parts": dict.fromkeys(("system", "user", "assistant", "tool"), "joined"),
        "tool_call_without_content": "empty content"}
    assert report.rows_by_form == {"empty tool-call content": 1, "parts joined": 1}
    assert "; 1 rows with empty tool-call content; 1 rows with parts joined" in report.summary()
    _, guarded = tokenize_rows([TOOL_ROW], chatml_tokenizer(), 512, "error", "r")
    assert guarded.message_forms["tool_call_without_content"] == "as given"
    assert guarded.rows_by_form == {}


def test_parts_in_a_file_reach_inspect_and_training(tmp_path, capsys):
    data = tmp_path / "parts.jsonl"
    row = {"messages": as_parts(PLAIN[1:], split=True)}
    data.write_text(json.dumps(row) + "\n")
    chatml_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "mask.json"
    assert main(["data", "inspect", "--data", str(data), "--model", str(tmp_path / "tok"),
                 "--json", str(out)]) == 0
    assert "[[Paris.<|im_end|>]]" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["message_forms"]["content_parts"]["user"] == "joined"
    dataset, _ = tokenize_rows(load_rows(str(data)), chatml_tokenizer(), 512, "error", "d")
    strings, _ = tokenize_rows([{"messages": PLAIN[1:]}], chatml_tokenizer(), 512, "error", "s")
    assert dataset[0]["input_ids"] == strings[0]["input_ids"]
    assert dataset[0]["loss_mask"] == strings[0]["loss_mask"]


def test_non_text_parts_are_refused_naming_file_line_and_part(tmp_path, capsys):
    data = tmp_path / "mm.jsonl"
    image = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]},
                        {"role": "assistant", "content": "A cat."}]}
    data.write_text(json.dumps({"messages": PLAIN}) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError) as err:
        load_rows(str(data))
    message = str(err.value)
    assert message.startswith(f"{data} line 3: messages[0].content[1] is a part of type 'image_url'")
    assert "only text parts" in message
    out = tmp_path / "mask.json"
    assert main(["data", "inspect", "--data", str(data), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "content[1]" in err and "Traceback" not in err
    assert not out.exists()
    for part, fragment in (({"type": "text", "text": 7}, "'text' is int"), ({"text": "x"}, "no 'type'")):
        row = {"messages": [{"role": "user", "content": [part]}, {"role": "assistant", "content": "x"}]}
        with pytest.raises(UserError, match=fragment):
            normalize_row(row, "f line 1")
