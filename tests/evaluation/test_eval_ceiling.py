"""Ceiling: a model that emits exactly the training answers scores 100 on every task.

The stand-in generator returns, for each rendered prompt, the tokens of the training answer
after its answer prefix (``render.continuation``), cut at the task's max_new_tokens by the
runner, so the test fails whenever a prefix does not reach the prompt or an answer does not
fit its generation length in the embedded default's tokenizer.
"""

from __future__ import annotations

import pytest

from focusft.sources.default import load_default_tokenizer
from focusft.evaluation.runner import (EvalSpec, generate_outputs, make_rows, prompt_text,
                                 sample_records, score_records)
from focusft.evaluation.chat import BABILONG_TASKS
from focusft.evaluation.render import continuation
from focusft.evaluation.ruler import RULER_TASKS


def oracle(tokenizer, rows, chat: bool):
    """A generate function that answers every row's prompt with its training answer."""
    table = {}
    for row in rows:
        ids = tokenizer(prompt_text(tokenizer, row, chat), add_special_tokens=False)["input_ids"]
        answer = continuation(row["messages"], row.get("answer_prefix", ""))
        table[tuple(ids)] = tokenizer(answer, add_special_tokens=False)["input_ids"]

    def generate(model, prompts, max_new_tokens, pad, stops, mode, prompt_loss_masks=None):
        return [table[tuple(p)][:max_new_tokens] for p in prompts]

    return generate


def run(spec: EvalSpec):
    tokenizer = load_default_tokenizer()
    rows = make_rows(spec, tokenizer)
    outputs = generate_outputs(None, tokenizer, rows, spec, "causal",
                               generate=oracle(tokenizer, rows, spec.chat_template))
    prompts = [prompt_text(tokenizer, r, spec.chat_template) for r in rows]
    return rows, score_records(sample_records(rows, outputs, prompts))[0]


PROMPT_SETS = ["focusft", pytest.param("lm-eval", marks=pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("lm_eval") is None, reason="lm-eval not installed"))]


@pytest.mark.parametrize("prompts", PROMPT_SETS)
@pytest.mark.parametrize("chat", [True, False])
def test_ruler_ceiling(prompts, chat):
    spec = EvalSpec(suite="ruler", tasks=list(RULER_TASKS), lengths=["4k"], samples=1,
                    haystack="procedural", prompts=prompts, chat_template=chat)
    rows, scores = run(spec)
    assert {t: v[4096] for t, v in scores.items()} == {t: 100.0 for t in RULER_TASKS}
    tok = load_default_tokenizer()
    for row in rows:  # the prefix is in the prompt, not left to the model
        text = prompt_text(tok, row, chat)
        assert text.endswith(row["answer_prefix"]) and ("<|im_start|>" in text) == chat
        # RULER's length counts the whole input, chat template included (3 % tolerance).
        used = len(tok(text, add_special_tokens=False)["input_ids"]) + row["max_new_tokens"]
        assert 4096 * 0.97 <= used <= 4096, (row["task"], used)


@pytest.mark.parametrize("prompts", PROMPT_SETS)
def test_babilong_ceiling(prompts):
    spec = EvalSpec(suite="babilong", tasks=list(BABILONG_TASKS), lengths=["0k", "1k"],
                    samples=2, haystack="procedural", prompts=prompts)
    _, scores = run(spec)
    assert scores == {t: {0: 100.0, 1000: 100.0} for t in BABILONG_TASKS}


def test_prefix_mask_marks_the_answer_prefix_and_earlier_tool_calls():
    """Under --mask prefix the prompt's assistant tokens are response tokens, as in training."""
    from focusft.evaluation.runner import response_mask

    tok = load_default_tokenizer()
    spec = EvalSpec(suite="ruler", tasks=["vt"], lengths=["2k"], samples=1, haystack="procedural")
    row = make_rows(spec, tok)[0]
    for chat in (True, False):
        ids = tok(prompt_text(tok, row, chat), add_special_tokens=False)["input_ids"]
        mask = response_mask(tok, row, ids, chat)
        marked = tok.decode([t for t, m in zip(ids, mask) if m]).strip()
        assert len(mask) == len(ids) and marked == row["answer_prefix"]
    from test_eval_agentic import qwen_tokenizer

    from focusft.evaluation.agentic import agentic_rows

    qwen = qwen_tokenizer()
    row = agentic_rows(["lookup"], ["2k"], 1, 0, "test", qwen, "procedural")[0]
    ids = qwen(prompt_text(qwen, row), add_special_tokens=False)["input_ids"]
    marked = qwen.decode([t for t, m in zip(ids, response_mask(qwen, row, ids, True)) if m])
    assert marked.count("<tool_call>") == 2 and "Notes on the life" not in marked
