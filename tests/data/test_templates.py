"""Loss masks on every chat template TRL ships, against transformers' own assistant mask.

For each original template T in ``trl/chat_templates`` (read from the installed package, paired
with a locally built byte-level BPE that has T's control tokens added), a multi-turn
conversation (system, reasoning, a tool call, its result, a final answer; simpler shapes for
templates that refuse those) is tokenized by ``focusft.data.templates.ChatEncoder`` and compared with
``apply_chat_template(..., return_assistant_tokens_mask=True)`` under T's ``*_training`` variant:

* same rendering: the masks must be equal token for token, except for the documented
  differences below;
* the training variant renders differently (it always shows reasoning, where T drops it from
  earlier turns): focusft's rule runs on the training variant's own text (its markers removed)
  and must match the same way; on T itself the trained text must be exactly the assistant parts;
* no training variant: T's own markers if it has them, else the assistant-parts check.

Documented differences (docs/robustness.md, "Loss masks on real templates"); any other
difference fails the test:
  layout   whitespace right after the end-of-turn token (the training variants put the newline
           inside the generation block; focusft treats it as layout);
  eos      an eos the template appends after the last turn's end-of-turn token (Phi-3);
  header   the assistant header or a control token right before the turn's text (gpt-oss and
           Muse put ``<|start|>assistant`` inside the block, DeepSeek ``<｜Assistant｜>`` and
           ``<｜tool▁outputs▁end｜>``): focusft never trains what the prompt writes;
  stop     the stop token after a tool call (DiffusionGemma's ``<|tool_response>``), which
           focusft trains as the turn's end.
The comparison runs with ``empty_think_loss=True`` (the training variants train injected empty
think blocks); the default, which does not, is pinned on Qwen3 below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chat_fixtures import template_tokenizer
from focusft.data.templates import GENERATION_TAG, ChatEncoder

trl = pytest.importorskip("trl")

TEMPLATE_DIR = Path(trl.__file__).parent / "chat_templates"
ORIGINALS = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja") if not p.stem.endswith("_training"))
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = [{"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]
AGENTIC = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris.", "reasoning_content": "Recall it."},
    {"role": "user", "content": "Weather there?"},
    {"role": "assistant", "content": "", "tool_calls": CALL},
    {"role": "tool", "content": "CLOUDLESS-42", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "Sunny.", "reasoning_content": "Read the tool result."},
]
PLAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
         {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"},
         {"role": "assistant", "content": "Rome."}]


def shapes():
    """Conversations from richest to simplest; each template gets the first it renders."""
    yield "agentic", AGENTIC, TOOLS
    yield "agentic without system", AGENTIC[1:], TOOLS
    yield "plain", PLAIN, None
    yield "plain without system", PLAIN[1:], None
    yield "content blocks", [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                             for m in PLAIN[1:]], None


def first_rendered(tok):
    for name, messages, tools in shapes():
        try:
            text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
        except Exception:  # the template refuses this shape (roles, system, tools, content type)
            continue
        if "Paris." in text:  # (a template that wants content blocks renders strings as nothing)
            return name, messages, tools
    raise AssertionError("the template renders none of the test conversations")


def source(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text()


def without_markers(template: str) -> str:
    return re.sub(r"\{%-?\s*endgeneration\s*-?%\}", "", GENERATION_TAG.sub("", template))


def transformers_mask(template: str, messages, tools):
    tok = template_tokenizer(template)
    out = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def unexplained(tok, encoder: ChatEncoder, ids, ours, theirs) -> list[str]:
    """Positions where the masks differ that no documented difference explains."""
    text = lambda i: tok.decode([ids[i]])  # noqa: E731
    special = set(tok.all_special_ids)
    allowed = set()
    for i in range(len(ids)):
        if ours[i] == theirs[i]:
            continue
        before = i > 0 and (ours[i - 1] or i - 1 in allowed)
        if theirs[i] and not text(i).strip() and before:
            allowed.add(i)  # layout
        elif theirs[i] and ids[i] == tok.eos_token_id and before:
            allowed.add(i)  # eos
        elif ours[i] and text(i) in encoder.stops and not (i + 1 < len(ids) and ours[i + 1]):
            allowed.add(i)  # stop
    # header: a run of theirs-only tokens that ends where one of our spans begins
    i = 0
    while i < len(ids):
        if theirs[i] and not ours[i] and i not in allowed:
            j = i
            while j < len(ids) and theirs[j] and not ours[j]:
                j += 1
            run = tok.decode(ids[i:j])
            if j < len(ids) and ours[j] and (
                    (encoder.header and run == encoder.header.strip())
                    or all(t in special for t in ids[i:j]) or run.strip() == ""):
                allowed.update(range(i, j))
            i = j
        else:
            i += 1
    return [f"{i}:{text(i)!r} ours={ours[i]} theirs={theirs[i]}" for i in range(len(ids))
            if ours[i] != theirs[i] and i not in allowed]


def assert_assistant_parts(tok, ids, mask, messages):
    """The trained text holds each assistant turn's text and calls (where the template renders
    them: DeepSeek-R1 distills drop calls next to content), and nothing of the other messages."""
    full = tok.decode(ids)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    rest = tok.decode([t for t, m in zip(ids, mask) if not m])
    for message in messages:
        content = message["content"] if isinstance(message["content"], str) else message["content"][0]["text"]
        if message["role"] == "assistant":
            assert content.strip() in trained, (content, trained)
            for call in message.get("tool_calls", []):
                if "Lyon" in full:  # the argument value appears nowhere else
                    assert call["function"]["name"] in trained and "Lyon" in trained, trained
        else:
            assert content not in trained, (content, trained)
            assert content in rest or content not in full


@pytest.mark.parametrize("name", ORIGINALS)
def test_trl_template(name):
    template = source(name)
    tok = template_tokenizer(template)
    _, messages, tools = first_rendered(tok)
    encoder = ChatEncoder(tok, empty_think_loss=True)
    ids, mask, _ = encoder.encode(messages, tools)
    assert_assistant_parts(tok, ids, mask, messages)
    if (TEMPLATE_DIR / f"{name}_training.jinja").exists():
        training = source(f"{name}_training")
        their_ids, theirs = transformers_mask(training, messages, tools)
        if their_ids != ids:  # the training variant renders the conversation differently
            tok = template_tokenizer(without_markers(training))
            encoder = ChatEncoder(tok, empty_think_loss=True)
            ids, mask, _ = encoder.encode(messages, tools)
            assert ids == their_ids
        assert unexplained(tok, encoder, ids, mask, theirs) == []
    elif GENERATION_TAG.search(template):
        assert encoder.rule == "generation"
        assert mask == transformers_mask(template, messages, tools)[1]


def runs(tok, ids, mask) -> list[str]:
    out, current = [], []
    for token, flag in zip(ids + [None], mask + [0]):
        if flag:
            current.append(token)
        elif current:
            out.append(tok.decode(current))
            current = []
    return out


def test_qwen3_agentic_multi_turn_trains_what_the_template_renders():
    """Qwen3 drops reasoning from turns before the last user query and injects an empty think
    block into a final turn without reasoning: no longer refused, and the empty block is context."""
    tok = template_tokenizer(source("qwen3"))
    encoder = ChatEncoder(tok)
    assert encoder.rule == "located"
    ids, mask, _ = encoder.encode(AGENTIC, TOOLS)
    assert runs(tok, ids, mask) == [
        "Paris.<|im_end|>",  # its reasoning is not in the rendering, so it is not trained
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call><|im_end|>',
        "<think>\nRead the tool result.\n</think>\n\nSunny.<|im_end|>",
    ]
    single = [AGENTIC[1], {"role": "assistant", "content": "Paris."}]
    full = tok.apply_chat_template(single, tokenize=False)
    assert full.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nParis.<|im_end|>\n")
    assert runs(tok, *encoder.encode(single)[:2]) == ["Paris.<|im_end|>"]
    trained_too = ChatEncoder(tok, empty_think_loss=True)
    assert runs(tok, *trained_too.encode(single)[:2]) == ["<think>\n\n</think>\n\nParis.<|im_end|>"]


def test_rules_are_stated():
    from chat_fixtures import chatml_tokenizer, prefix_breaking_tokenizer
    from focusft.sources.default import load_default_tokenizer

    assert ChatEncoder(load_default_tokenizer()).rule == "generation"
    assert ChatEncoder(chatml_tokenizer()).rule == "prefix"
    assert ChatEncoder(prefix_breaking_tokenizer()).rule == "located"
    assert ChatEncoder(template_tokenizer(source("qwen2_5"))).rule == "prefix"


# ---------------------------------------------------------------------------- rules agree

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ue000\ue001"),
                min_size=1, max_size=16).filter(lambda s: not s[:1].isspace() and s.strip())


@st.composite
def tool_conversations(draw):
    messages = [{"role": "system", "content": draw(_text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_text)})
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": draw(_text)}}}]})
            messages.append({"role": "tool", "content": draw(_text)})
        messages.append({"role": "assistant", "content": draw(_text)})
    return messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tool_conversations())
def test_the_three_rules_agree_where_all_apply(messages):
    """On a template that has markers and renders every turn independently of later ones (the
    embedded default), the generation, prefix and located rules train the same tokens."""
    from focusft.sources.default import load_default_tokenizer

    tok = _default_tokenizer(load_default_tokenizer)
    results = [ChatEncoder(tok, rule=rule).encode(messages, TOOLS)[:2] for rule in ("generation", "prefix", "located")]
    assert results[0] == results[1] == results[2]


_TOKENIZERS = {}


def _default_tokenizer(load):
    return _TOKENIZERS.setdefault("default", load())


def test_empty_think_loss_flag_reaches_tokenize_rows():
    from focusft.training.config import parse_config
    from focusft.data.pipeline import tokenize_rows

    assert parse_config(["--empty_think_loss", "true"]).empty_think_loss is True
    assert parse_config([]).empty_think_loss is False
    tok = template_tokenizer(source("qwen3"))
    rows = [{"messages": [AGENTIC[1], {"role": "assistant", "content": "Paris."}]}]
    _, context = tokenize_rows(rows, tok, 256, "error", "r")
    _, trained = tokenize_rows(rows, tok, 256, "error", "r", empty_think_loss=True)
    think = len(tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    assert trained.loss_tokens - context.loss_tokens == think and context.template_rule == "located"


def test_glm4_tool_call_turn_trains_its_stop_token():
    """GLM-4 ends no turn with an end-of-turn token: the model stops by writing the next role
    token, so that token is trained (<|user|> after an answer, <|observation|> after a call)."""
    tok = template_tokenizer(source("glm4moe"))
    ids, mask, rule = ChatEncoder(tok).encode(AGENTIC, TOOLS)
    assert rule == "located"
    assert runs(tok, ids, mask) == [
        "Paris.<|user|>",
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Lyon</arg_value>\n</tool_call><|observation|>",
        "\n<think>Read the tool result.</think>\nSunny."]
