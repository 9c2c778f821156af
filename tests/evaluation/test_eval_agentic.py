"""Agentic suite: tool-call conversations over long documents, lengths, splits, ceiling, CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from focusft.cli import main
from focusft.sources.default import load_default_tokenizer
from focusft.evaluation.runner import EvalSpec, generate_outputs, prompt_text, sample_records, score_records
from focusft.evaluation.agentic import AGENTIC_TASKS, MAX_NEW_TOKENS, agentic_rows
from focusft.evaluation.render import continuation


def qwen_tokenizer():
    """The embedded default tokenizer with trl's Qwen2.5 chat template (renders tools/tool calls)."""
    root = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
    tok = load_default_tokenizer()
    tok.chat_template = (root / "qwen2_5.jinja").read_text()
    return tok


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


@pytest.fixture(scope="module")
def rows(tok):
    return agentic_rows(AGENTIC_TASKS, ["2k", "4k"], 2, 0, "test", tok, "procedural")


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_conversations_call_tools_and_fit_the_length(rows, tok):
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        calls = 1 if r["task"] == "lookup" else 2
        assert roles == ["user"] + ["assistant", "tool"] * 2 * calls + ["assistant"]
        names = [m["tool_calls"][0]["function"]["name"] for m in r["messages"] if m.get("tool_calls")]
        assert names == ["search", "open_document"] * calls
        assert {t["function"]["name"] for t in r["tools"]} == {"search", "open_document"}
        text = prompt_text(tok, r)
        assert "<tool_call>" in text and '"name": "open_document"' in text and "<tools>" in text
        used = n_tokens(tok, text) + MAX_NEW_TOKENS
        assert r["length"] * 0.97 <= used <= r["length"], (used, r["length"])
        docs = [m["content"] for m in r["messages"] if m.get("name") == "open_document"]
        if r["task"] == "lookup":  # the answer is only in the opened document
            assert r["target"] in docs[0] and r["target"] not in r["messages"][0]["content"]
        else:  # both birth years are needed
            assert all("was born in the year" in d for d in docs)


def test_splits_do_not_share_answers_and_rows_are_seeded(tok):
    train = agentic_rows(["lookup"], [1024], 20, 0, "train", None, "procedural")
    test = agentic_rows(["lookup"], [1024], 20, 0, "test", None, "procedural")
    assert not {r["target"] for r in train} & {r["target"] for r in test}
    assert test == agentic_rows(["lookup"], [1024], 20, 0, "test", None, "procedural")


def test_ceiling(rows, tok):
    spec = EvalSpec(suite="agentic")
    table = {tuple(tok(prompt_text(tok, r), add_special_tokens=False)["input_ids"]):
             tok(continuation(r["messages"]), add_special_tokens=False)["input_ids"] for r in rows}

    def generate(model, prompts, max_new, pad, stops, mode, prompt_loss_masks=None):
        return [table[tuple(p)][:max_new] for p in prompts]

    outputs = generate_outputs(None, tok, rows, spec, "causal", generate=generate)
    scores = score_records(sample_records(rows, outputs, [""] * len(rows)))[0]
    assert scores == {t: {2048: 100.0, 4096: 100.0} for t in AGENTIC_TASKS}


def test_data_command_writes_trainable_rows(tmp_path):
    out = tmp_path / "a.jsonl"
    assert main(["data", "agentic", "--lengths", "2k", "--samples", "2", "--split", "train",
                 "--haystack", "procedural", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["tools"] and r["messages"][-1]["role"] == "assistant"
                                  for r in rows)
    from focusft.data.pipeline import tokenize_conversation  # the training path accepts the rows

    tok = qwen_tokenizer()
    ids, loss_mask = tokenize_conversation(tok, rows[0]["messages"], tools=rows[0]["tools"])
    trained = tok.decode([t for t, m in zip(ids, loss_mask) if m])
    assert rows[0]["target"] in trained and "open_document" in trained  # answer and tool calls
