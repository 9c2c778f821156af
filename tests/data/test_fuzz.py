"""Property-based tests (hypothesis) of the data pipeline and the GLM key limits.

* tokenize_conversation on random ChatML conversations: the loss tokens decode to exactly the
  assistant contents, each followed by its end-of-turn marker, in order; the other tokens decode
  to exactly the rest of the rendering (so no header, system, user or tool text is ever trained).
* Collator: padding, attention mask and the label shift, element by element.
* glm_key_limits (vectorised) == AttentionLayout.glm(...).key_ranges() on random padded batches.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from chat_fixtures import chatml_tokenizer
from focusft.data.pipeline import IGNORE_INDEX, Collator, tokenize_conversation
from focusft.errors import UserError
from focusft.core.masks import AttentionLayout, glm_key_limits

TOKENIZER = chatml_tokenizer()
END = "<|im_end|>"

# Any text without surrogates. Content must not start with whitespace: the template puts a
# newline right before it, and a byte-level BPE pre-tokenizer glues leading whitespace to that
# newline, so the first character would share a token with the (untrained) header.
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
content = _text.filter(lambda s: not s[:1].isspace())


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 6))
    roles = draw(st.lists(st.sampled_from(["user", "assistant", "tool"]), min_size=n, max_size=n))
    if "assistant" not in roles:
        roles[draw(st.integers(0, n - 1))] = "assistant"
    messages = [{"role": r, "content": draw(content)} for r in roles]
    if draw(st.booleans()):
        messages.insert(0, {"role": "system", "content": draw(content)})
    return messages


def decode(ids):
    return TOKENIZER.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(conversations())
def test_loss_tokens_are_exactly_the_assistant_turns(messages):
    ids, mask = tokenize_conversation(TOKENIZER, messages)
    assert len(ids) == len(mask) and set(mask) <= {0, 1}
    trained = decode([t for t, m in zip(ids, mask) if m])
    assert trained == "".join(m["content"] + END for m in messages if m["role"] == "assistant")
    full = TOKENIZER.apply_chat_template(messages, tokenize=False)
    rest = decode([t for t, m in zip(ids, mask) if not m])
    assert rest == _remove_assistant_turns(full, messages)
    start = TOKENIZER.convert_tokens_to_ids("<|im_start|>")
    assert all(not m for t, m in zip(ids, mask) if t == start)  # headers never trained


def test_conversation_opening_with_the_assistant():
    messages = [{"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure."}]
    ids, mask = tokenize_conversation(TOKENIZER, messages)
    assert decode([t for t, m in zip(ids, mask) if m]) == "Hello! How can I help?" + END + "Sure." + END


def _remove_assistant_turns(full: str, messages) -> str:
    """The rendering minus each assistant `content<|im_end|>` (headers and newlines stay)."""
    out, pos = [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        header = "<|im_start|>assistant\n"
        at = full.index(header, pos) + len(header)
        turn = m["content"] + END
        assert full.startswith(turn, at)
        out.append(full[pos:at])
        pos = at + len(turn)
    return "".join(out) + full[pos:]


features = st.lists(
    st.integers(1, 30).flatmap(lambda n: st.fixed_dictionaries({
        "input_ids": st.lists(st.integers(0, 399), min_size=n, max_size=n),
        "loss_mask": st.lists(st.integers(0, 1), min_size=n, max_size=n),
        "sample_id": st.integers(0, 10**6),
    })),
    min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(features, st.integers(0, 399), st.one_of(st.none(), st.integers(1, 8)))
def test_collator_pads_and_shifts_labels(feats, pad_id, multiple):
    batch = Collator(pad_id=pad_id, pad_to_multiple_of=multiple)(feats)
    longest = max(len(f["input_ids"]) for f in feats)
    width = batch["input_ids"].shape[1]
    assert width >= longest and (multiple is None and width == longest or width % (multiple or 1) == 0)
    assert width - longest < (multiple or 1)
    assert batch["sample_ids"].tolist() == [f["sample_id"] for f in feats]
    for b, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["input_ids"][b].tolist() == f["input_ids"] + [pad_id] * (width - n)
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)
        assert batch["loss_mask"][b].tolist() == [bool(m) for m in f["loss_mask"]] + [False] * (width - n)
        for t in range(width):
            nxt = t + 1
            want = f["input_ids"][nxt] if nxt < n and f["loss_mask"][nxt] else IGNORE_INDEX
            assert batch["labels"][b, t].item() == want
    # Every label is a real, next token of its own row; the number of labels = loss tokens after 0.
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(sum(f["loss_mask"][1:]) for f in feats)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 32).flatmap(lambda s: st.tuples(
    st.lists(st.lists(st.booleans(), min_size=s, max_size=s), min_size=1, max_size=4),
    st.lists(st.integers(0, s), min_size=4, max_size=4))))
def test_glm_key_limits_equal_layout_key_ranges(case):
    masks, lengths = case
    lengths = lengths[: len(masks)]
    loss_mask = torch.tensor(masks, dtype=torch.long)  # values past a row's length are garbage
    lo, hi = AttentionLayout.glm(loss_mask, lengths).key_ranges()
    got = glm_key_limits(loss_mask, torch.tensor(lengths))
    assert torch.equal(got, hi)
    assert not lo.any()
    seq = loss_mask.shape[1]
    pos = torch.arange(seq)
    for b, n in enumerate(lengths):
        assert not got[b, n:].any()  # padding sees nothing
        assert bool((got[b, :n] > pos[:n]).all()) and bool((got[b, :n] <= n).all())  # self, no pad
