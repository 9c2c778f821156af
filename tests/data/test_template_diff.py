"""The ``located`` rule's regions from one render with every assistant turn swapped at once
(focusft.data.template_diff) are the regions of one render per turn, and so the masks are."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chat_fixtures import template_tokenizer
from focusft.data.templates import ChatEncoder

trl = pytest.importorskip("trl")
from test_templates import ORIGINALS, first_rendered, source  # noqa: E402


def longer(messages, times: int = 4):
    """The conversation's turns after its system message repeated, each copy's text numbered."""
    head = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(head):]
    out = list(head)
    for k in range(times):
        for m in body:
            content = m["content"]
            if isinstance(content, str) and content:
                content = f"{content} ({k})"
            out.append({**m, "content": content})
    return out


def both_ways(tok, messages, tools):
    fast = ChatEncoder(tok)
    slow = ChatEncoder(tok)
    slow.at_once = False
    return fast, fast.encode(messages, tools), slow.encode(messages, tools)


@pytest.mark.parametrize("name", ORIGINALS)
def test_one_render_for_all_turns_trains_what_one_render_per_turn_trains(name):
    tok = template_tokenizer(source(name))
    _, messages, tools = first_rendered(tok)
    messages = longer(messages)
    fast, (ids, mask, rule), (slow_ids, slow_mask, slow_rule) = both_ways(tok, messages, tools)
    assert (ids, mask, rule) == (slow_ids, slow_mask, slow_rule)
    if rule != "located":
        return
    full = fast._render(fast.forms.apply(messages), tools, False, "t")
    at_once = fast._regions_at_once(fast.forms.apply(messages), tools, full, "t")
    if at_once is not None:
        assert at_once == fast._regions_one_by_one(fast.forms.apply(messages), tools, full, "t")


def test_qwen3_takes_the_one_render_path_on_long_rows():
    from focusft.benchmarks.tokenize_bench import conversation

    tok = template_tokenizer(source("qwen3"))
    encoder = ChatEncoder(tok)
    assert encoder.rule == "located" and encoder.at_once
    messages = conversation(16, 0)
    full = encoder._render(messages, None, False, "t")
    regions = encoder._regions_at_once(messages, None, full, "t")
    assert regions is not None and len(regions) == 16
    assert regions == encoder._regions_one_by_one(messages, None, full, "t")


_word = st.text(st.sampled_from("ab <>|/\n{}think"), min_size=1, max_size=8).filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(_word)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_word)})
        message = {"role": "assistant", "content": draw(_word)}
        if draw(st.booleans()):
            message["reasoning_content"] = draw(_word)
        messages.append(message)
    return messages


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(conversations())
def test_qwen3_masks_agree_on_awkward_text(messages):
    """Contents that repeat each other and spell template text (``<``, ``think``, newlines)."""
    tok = _qwen3()
    _, fast, slow = both_ways(tok, messages, None)
    assert fast == slow


_CACHE = {}


def _qwen3():
    return _CACHE.setdefault("qwen3", template_tokenizer(source("qwen3")))
