"""Chat rows -> token ids, loss mask and evidence token mask.

A row's ``evidence`` is a list of character spans ``[a, b)`` inside the content of its first
user message. The conversation is rendered with the chat template exactly as training renders
it (`focusft.data.pipeline.tokenize_conversation`); the user content is located in the rendering R at
char offset o, so span [a, b) is [o + a, o + b) in R. With token offsets (s_t, e_t) of R:

    evidence[t] = 1  iff  [s_t, e_t) overlaps some [o + a, o + b)   (s_t < o + b and e_t > o + a)

Overlap, not "first char inside", because a span's edge may fall inside a token, and a token
that carries part of a fact is part of the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from focusft.data.pipeline import encoder_for, normalize_row, row_and_where, tokenize_conversation
from focusft.errors import UserError


@dataclass
class RenderedSample:
    """One row, tokenized. ``evidence`` is None when the row gives no evidence spans."""

    input_ids: list[int]
    loss_mask: list[int]
    evidence: list[int] | None

    def batch(self) -> dict[str, torch.Tensor]:
        """A one-row batch in the `focusft.data.pipeline.Collator` layout (no padding needed)."""
        n = len(self.input_ids)
        out = {"input_ids": torch.tensor([self.input_ids]),
               "attention_mask": torch.ones(1, n, dtype=torch.long),
               "loss_mask": torch.tensor([self.loss_mask], dtype=torch.bool)}
        if self.evidence is not None:
            out["evidence_mask"] = torch.tensor([self.evidence], dtype=torch.bool)
        return out


def render_sample(tokenizer: Any, row: dict, where: str) -> RenderedSample:
    """Tokenize `row` like training does and map its evidence char spans onto tokens."""
    row, where = row_and_where(row, where)  # rows of focusft.data.pipeline.load_rows carry their location
    messages, tools = normalize_row(row, where)
    messages = encoder_for(tokenizer).forms.apply(messages)  # as the template reads them
    ids, loss_mask = tokenize_conversation(tokenizer, messages, tools, where)
    spans = row.get("evidence")
    if not spans:
        return RenderedSample(ids, loss_mask, None)
    index, content = _first_user(messages, where)
    spans = _check_spans(spans, len(content), where)
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    offset, start, end = locate_content(tokenizer, messages, tools, full, index, where)
    # Clip to what the template kept of the content (templates may trim whitespace).
    clipped = [(max(a, start), min(b, end)) for a, b in spans]
    shifted = [(offset + a, offset + b) for a, b in clipped if b > a]
    encoded = tokenizer(full, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    if list(encoded["input_ids"]) != ids:
        raise UserError(f"{where}: re-tokenizing the rendered chat gave different tokens; "
                        "cannot map evidence spans")
    return RenderedSample(ids, loss_mask, token_overlap(encoded["offset_mapping"], shifted))


def token_overlap(offsets, spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose char range overlaps a span.

    >>> token_overlap([(0, 3), (3, 5), (5, 9)], [(4, 6)])
    [0, 1, 1]
    """
    return [int(any(s < b and e > a for a, b in spans)) for s, e in offsets]


def _first_user(messages: list[dict], where: str) -> tuple[int, str]:
    for i, message in enumerate(messages):
        if message["role"] == "user":
            if not isinstance(message["content"], str):
                raise UserError(f"{where}: field 'evidence' needs the first user message's "
                                "content as one string (its spans are character offsets in it); "
                                "it is a list of parts")
            return i, message["content"]
    raise UserError(f"{where}: field 'evidence' is given but the row has no user message")


def _check_spans(spans: Any, length: int, where: str) -> list[tuple[int, int]]:
    """Evidence must be [[start, end], ...] with 0 <= start <= end <= len(user content)."""
    out = []
    for i, span in enumerate(spans if isinstance(spans, (list, tuple)) else [None]):
        ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, int) for x in span)
        if not ok or not 0 <= span[0] <= span[1] <= length:
            raise UserError(f"{where}: evidence[{i}] is {span!r}; expected [start, end] character "
                            f"offsets with 0 <= start <= end <= {length} (the user content's length)")
        out.append((span[0], span[1]))
    return out


def locate_content(tokenizer: Any, messages: list[dict], tools, full: str, index: int,
                   where: str) -> tuple[int, int, int]:
    """Where messages[index]'s content sits in `full`: (offset, start, end).

    Content char c is at ``full[offset + c]`` for start <= c < end; [start, end) is the whole
    content, or its stripped part when the template trims it. The search starts after the
    rendering of the earlier messages, so an identical earlier message cannot be matched.
    """
    content = messages[index]["content"]
    before = tokenizer.apply_chat_template(messages[:index], tools=tools, tokenize=False) if index else ""
    after = len(before) if full.startswith(before) else 0
    at = full.find(content, after)
    if at >= 0:
        return at, 0, len(content)
    stripped = content.strip()
    lead = len(content) - len(content.lstrip())
    at = full.find(stripped, after) if stripped else -1
    if at < 0:
        raise UserError(f"{where}: the chat template changes the user content, so evidence spans "
                        "cannot be placed in the rendered conversation")
    return at - lead, lead, lead + len(stripped)


def probe_batch(tokenizer: Any, rows: list[dict], where: str, pad_id: int) -> dict[str, torch.Tensor]:
    """The rows rendered like training and right-padded into one batch (Collator layout), with
    ``evidence_mask`` when every row gives evidence spans."""
    samples = [render_sample(tokenizer, row, f"{where} row {i}") for i, row in enumerate(rows)]
    n = max(len(s.input_ids) for s in samples)
    batch = {"input_ids": torch.full((len(samples), n), pad_id),
             "attention_mask": torch.zeros(len(samples), n, dtype=torch.long),
             "loss_mask": torch.zeros(len(samples), n, dtype=torch.bool)}
    with_evidence = all(s.evidence is not None for s in samples)
    if with_evidence:
        batch["evidence_mask"] = torch.zeros(len(samples), n, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = len(s.input_ids)
        batch["input_ids"][i, :k] = torch.tensor(s.input_ids)
        batch["attention_mask"][i, :k] = 1
        batch["loss_mask"][i, :k] = torch.tensor(s.loss_mask, dtype=torch.bool)
        if with_evidence:
            batch["evidence_mask"][i, :k] = torch.tensor(s.evidence, dtype=torch.bool)
    return batch
