"""Training data: chat rows -> token ids + loss mask -> padded, label-shifted batches.

Pipeline and contract
---------------------
1. ``load_rows(spec)``: ``.jsonl`` / ``.json`` / ``.parquet`` files, globs, directories of them or
   ``save_to_disk`` directories (focusft.data.files) become one file-backed ``datasets.Dataset`` of
   canonical rows, each with its location ``file line N`` for messages.
2. ``normalize_row(row, where)``: one row (OpenAI/TRL messages, ShareGPT, Alpaca or
   prompt/completion; focusft.data.formats) becomes ``(messages, tools)``, checked.
3. ``focusft.data.templates.ChatEncoder``: the conversation is rendered with the tokenizer's chat
   template and tokenized once; the loss mask comes from character spans of what the assistant
   wrote, found by one of three rules (``generation`` markers, ``prefix`` renders, or
   ``located`` for templates that rewrite history); see that module.
4. ``tokenize_rows``: applies 2-3 to every row as a ``Dataset.map`` (``num_proc`` processes,
   cached by the datasets library for file-backed rows), truncates to ``max_length``
   (error/left/right) and drops rows without any trainable token. Output columns:
   ``input_ids``, ``loss_mask``, ``sample_id`` (0-based row index in the source, stable across
   runs) and ``length``; the ``DataReport`` says which rule the template got.
5. ``Collator``: right-pads a batch to its longest sample and builds already-shifted labels:
   ``labels[b, t] = input_ids[b, t+1] if loss_mask[b, t+1] else -100`` (last position: -100),
   so position t's logits are scored against ``labels[b, t]`` with no further shifting.

Every problem with the user's data raises ``UserError`` naming the file, row and field.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

from focusft.data import files
from focusft.errors import UserError
from focusft.data.formats import ALLOWED_ROLES, canonical, normalize_row, row_and_where  # noqa: F401
from focusft.data.templates import encoder_for, tokenize_conversation  # noqa: F401  (re-exported)

TRUNCATION_MODES = ("error", "left", "right")
SUPPORTED_FORMATS = files.SUPPORTED
IGNORE_INDEX = -100
# Above this many rows a progress bar is worth the noise.
_PROGRESS_MIN_ROWS = 2000


# --------------------------------------------------------------------------------------------
# 1-2. Loading and row normalization (focusft.data.files, focusft.data.formats)
# --------------------------------------------------------------------------------------------

_ROW_FEATURES = datasets.Features({"row": datasets.Value("string"), "where": datasets.Value("string")})
_LOAD_VERSION = "rows-v1"  # bump when what load_rows writes changes (the datasets cache key)


def load_rows(spec: str) -> datasets.Dataset:
    """Every row of ``--data`` (files, globs, directories; see focusft.data.files), converted to the
    canonical form (focusft.data.formats) and checked, as a file-backed Dataset of two string
    columns: ``row`` (the canonical row as JSON, so tool-call arguments and schemas stay exactly
    as written) and ``where`` (``file line N``). The datasets library caches it under the
    sources' names, sizes and modification times, so a rerun reads it back instead of parsing."""
    sources = files.resolve(spec)
    kwargs = {"sources": sources, "stamps": [(os.path.abspath(p), files.stamp(p)) for p, _ in sources],
              "version": _LOAD_VERSION}
    try:
        with _quiet(0):
            rows = datasets.Dataset.from_generator(_generate_rows, gen_kwargs=kwargs,
                                                   features=_ROW_FEATURES)
    except Exception as exc:  # the datasets library wraps what the generator raised
        cause = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    if len(rows) == 0:
        raise UserError(f"{spec}: the data has 0 rows; expected at least one chat conversation.")
    return rows


def _generate_rows(sources: list, stamps: list, version: str):
    for path, kind in sources:
        count = 0
        for raw, where in files.raw_rows(path, kind):
            row = canonical(raw, where)
            normalize_row(row, where)  # every problem now, with its file and line
            count += 1
            yield {"row": json.dumps(row, ensure_ascii=False), "where": where}
        if count == 0:
            raise UserError(f"{path}: the file has 0 rows; expected at least one chat conversation.")


# --------------------------------------------------------------------------------------------
# 3-4. All rows -> tokenized dataset (one conversation: focusft.data.templates)
# --------------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What tokenize_rows did. Token counts are over kept rows, after truncation."""

    rows_read: int = 0
    rows_kept: int = 0
    truncated: int = 0
    dropped_no_assistant_tokens: int = 0
    total_tokens: int = 0
    loss_tokens: int = 0  # tokens that receive a label (loss_mask[1:]; position 0 has no predictor)
    max_len: int = 0
    template_rule: str = ""  # the loss-mask rule the chat template gets (focusft.data.templates.RULES)
    rows_by_rule: dict = field(default_factory=dict)  # rows per rule actually used
    # how the template reads content (focusft.data.message_forms): parts passed or joined per role,
    # and whether tool-call turns without content are given empty content
    message_forms: dict = field(default_factory=dict)
    rows_by_form: dict = field(default_factory=dict)  # rows per change made (parts joined, ...)

    def summary(self) -> str:
        share = 100.0 * self.loss_tokens / self.total_tokens if self.total_tokens else 0.0
        rules = ", ".join(f"{n} {r}" for r, n in sorted(self.rows_by_rule.items()))
        return (
            f"read {self.rows_read} rows, kept {self.rows_kept} "
            f"({self.truncated} truncated, {self.dropped_no_assistant_tokens} dropped with no "
            f"assistant tokens); {self.total_tokens} tokens, {self.loss_tokens} loss tokens "
            f"({share:.1f}%), longest {self.max_len}; loss-mask rule: {self.template_rule or '-'}"
            + (f" (rows: {rules})" if rules else "")
            + "".join(f"; {n} rows with {change}" for change, n in sorted(self.rows_by_form.items()))
        )


_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "loss_mask": datasets.Sequence(datasets.Value("int8")),
        "sample_id": datasets.Value("int64"),
        "length": datasets.Value("int64"),
    }
)
_MAP_FEATURES = datasets.Features({
    **_FEATURES, "keep": datasets.Value("bool"), "truncated": datasets.Value("bool"),
    "n_loss": datasets.Value("int64"), "rule": datasets.Value("string"),
    "forms": datasets.Value("string")})
# Bump when tokenization changes what it writes, so cached results of older code are not reused.
_CACHE_VERSION = "tokenize-v3"


def tokenize_rows(
    rows: datasets.Dataset | list, tokenizer: Any, max_length: int, truncation: str, source: str,
    empty_think_loss: bool = False, num_proc: int | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """Normalize, tokenize and truncate every row; drop rows left without a trainable token.

    Runs as ``Dataset.map`` (``num_proc`` worker processes when > 1). For file-backed rows (what
    ``load_rows`` returns) the result is cached by the datasets library under a fingerprint of the
    rows, the tokenizer, its chat template and these arguments, so a rerun does not re-tokenize.
    """
    _check_limits(max_length, truncation)
    if isinstance(rows, list):
        rows = datasets.Dataset.from_dict({"row": [json.dumps(r) for r in rows]})
    encoder = encoder_for(tokenizer, empty_think_loss)
    encoder.check_tokenizer(f"{source}: the model's tokenizer (--model)")  # before any row
    work = functools.partial(_tokenize_batch, encoder=encoder, max_length=max_length,
                             truncation=truncation, source=source)
    fingerprint = _fingerprint(rows, tokenizer, max_length, truncation, source, empty_think_loss)
    procs = num_proc if num_proc and num_proc > 1 and len(rows) >= 2 * num_proc else None
    with _quiet(len(rows)):
        mapped = rows.map(work, batched=True, batch_size=256, with_indices=True,
                          remove_columns=rows.column_names, features=_MAP_FEATURES,
                          num_proc=procs, new_fingerprint=fingerprint,
                          desc=f"tokenizing {source}")
        report = _report(mapped, encoder.rule or "")
        report.message_forms = encoder.forms.describe()
        if report.rows_kept == 0:
            raise UserError(f"{source}: no usable rows after tokenization ({report.summary()}).")
        kept = mapped.filter(_is_kept, input_columns="keep", batched=True,
                             new_fingerprint=fingerprint + "-kept") \
            if report.rows_kept < len(mapped) else mapped
    return kept.select_columns(list(_FEATURES)), report


def _tokenize_batch(batch: dict, indices: list[int], encoder, max_length: int, truncation: str,
                    source: str) -> dict:
    out: dict[str, list] = {name: [] for name in _MAP_FEATURES}
    for k, index in enumerate(indices):
        row, where = _decode(batch, k, f"{source} row {index}")
        messages, tools = normalize_row(row, where)
        ids, mask, rule = encoder.encode(messages, tools, where)
        ids, mask, was_cut = _truncate(ids, mask, max_length, truncation, where)
        n_loss = sum(mask[1:])  # position 0 is never a label, see Collator
        for name, value in (("input_ids", ids), ("loss_mask", mask), ("sample_id", index),
                            ("length", len(ids)), ("keep", n_loss > 0), ("truncated", was_cut),
                            ("n_loss", n_loss), ("rule", rule),
                            ("forms", ",".join(encoder.forms.changes(messages)))):
            out[name].append(value)
    return out


def _decode(batch: dict, k: int, default_where: str) -> tuple[dict, str]:
    """Row k of a batch (rows from ``load_rows`` carry their JSON and location)."""
    return row_and_where({name: column[k] for name, column in batch.items()}, default_where)


def _is_kept(keep: list[bool]) -> list[bool]:
    return keep


def _report(mapped: datasets.Dataset, rule: str) -> DataReport:
    import pyarrow.compute as pc

    table = mapped.data.table if hasattr(mapped.data, "table") else mapped.data
    keep = table.column("keep")
    kept_len = pc.filter(table.column("length"), keep)
    by_rule = pc.value_counts(table.column("rule")).to_pylist()
    by_form: dict[str, int] = {}
    for entry in pc.value_counts(table.column("forms")).to_pylist():
        for change in filter(None, entry["values"].split(",")):
            by_form[change] = by_form.get(change, 0) + entry["counts"]
    return DataReport(
        rows_read=len(mapped), rows_kept=len(kept_len),
        truncated=int(pc.sum(table.column("truncated")).as_py() or 0),
        dropped_no_assistant_tokens=len(mapped) - len(kept_len),
        total_tokens=int(pc.sum(kept_len).as_py() or 0),
        loss_tokens=int(pc.sum(pc.filter(table.column("n_loss"), keep)).as_py() or 0),
        max_len=int(pc.max(kept_len).as_py() or 0) if len(kept_len) else 0,
        template_rule=rule, rows_by_rule={d["values"]: d["counts"] for d in by_rule},
        rows_by_form=by_form)


def _fingerprint(rows: datasets.Dataset, tokenizer: Any, *args) -> str:
    digest = hashlib.sha256()
    template = getattr(tokenizer, "chat_template", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    for part in (_CACHE_VERSION, rows._fingerprint, backend.to_str() if backend else repr(tokenizer),
                 json.dumps(template, sort_keys=True), json.dumps(tokenizer.special_tokens_map,
                                                                  sort_keys=True, default=str), *args):
        digest.update(str(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def _quiet(n_rows: int):
    """A progress bar only where it is worth the noise."""
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    if n_rows <= _PROGRESS_MIN_ROWS:
        datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()


def _check_limits(max_length: int, truncation: str) -> None:
    if truncation not in TRUNCATION_MODES:
        raise UserError(f"--truncation is {truncation!r}; expected one of {', '.join(TRUNCATION_MODES)}.")
    if not isinstance(max_length, int) or max_length < 2:
        raise UserError(f"--max_length is {max_length!r}; expected an integer >= 2.")


def _truncate(
    ids: list[int], mask: list[int], max_length: int, truncation: str, where: str
) -> tuple[list[int], list[int], bool]:
    if len(ids) <= max_length:
        return ids, mask, False
    if truncation == "error":
        raise UserError(
            f"{where}: the conversation is {len(ids)} tokens, longer than --max_length {max_length}. "
            "Raise --max_length, or pass --truncation left (drop the start) or --truncation right "
            "(drop the end)."
        )
    if truncation == "left":
        return ids[-max_length:], mask[-max_length:], True
    return ids[:max_length], mask[:max_length], True


# --------------------------------------------------------------------------------------------
# 5. Batching
# --------------------------------------------------------------------------------------------


def shifted_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``labels[:, t] = input_ids[:, t+1]`` where ``loss_mask[:, t+1]``, else -100; last column -100."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(loss_mask[:, 1:], input_ids[:, 1:], IGNORE_INDEX)
    return labels


@dataclass
class Collator:
    """Right-pad features to the batch's longest sample and build shifted labels.

    Returns ``input_ids`` (B,S) long, ``attention_mask`` (B,S) long, ``loss_mask`` (B,S) bool,
    ``labels`` (B,S) long and ``sample_ids`` (B,) long. Extra feature keys (e.g. ``length``) are ignored.
    """

    pad_id: int
    pad_to_multiple_of: int | None = None
    pack_to: int | None = None  # pack samples into rows of at most this many tokens

    def __post_init__(self) -> None:
        if not isinstance(self.pad_id, int):
            raise ValueError(f"Collator.pad_id must be an int, got {self.pad_id!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Collator got an empty batch")
        if self.pack_to:
            return self._packed(features)
        width = self._width(max(len(f["input_ids"]) for f in features))
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        loss_mask = torch.zeros((len(features), width), dtype=torch.bool)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for b, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[b, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            loss_mask[b, :n] = torch.as_tensor(feature["loss_mask"]).bool()
            attention_mask[b, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "labels": shifted_labels(input_ids, loss_mask),
            "sample_ids": torch.tensor([int(f["sample_id"]) for f in features], dtype=torch.long),
        }

    def _packed(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """First-fit packing into rows of <= pack_to tokens (samples keep their order in a row).

        Adds ``sample_index`` (R,S): which sample (0..M-1) owns each token, -1 on pads, and
        ``position_ids`` restarting at 0 for every sample. Labels never cross samples.
        """
        rows: list[list[int]] = []
        used: list[int] = []
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            slot = next((r for r, u in enumerate(used) if u + n <= self.pack_to), None)
            if slot is None:
                rows.append([]), used.append(0)
                slot = len(rows) - 1
            rows[slot].append(i)
            used[slot] += n
        width = self._width(max(used))
        shape = (len(rows), width)
        batch = {"input_ids": torch.full(shape, self.pad_id, dtype=torch.long),
                 "attention_mask": torch.zeros(shape, dtype=torch.long),
                 "loss_mask": torch.zeros(shape, dtype=torch.bool),
                 "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
                 "sample_index": torch.full(shape, -1, dtype=torch.long),
                 "position_ids": torch.zeros(shape, dtype=torch.long)}
        for r, members in enumerate(rows):
            pos = 0
            for i in members:
                self._place(batch, r, pos, i, features[i])
                pos += len(features[i]["input_ids"])
        batch["sample_ids"] = torch.tensor([int(f["sample_id"]) for f in features], dtype=torch.long)
        return batch

    @staticmethod
    def _place(batch: dict, r: int, start: int, i: int, feature: dict) -> None:
        ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        mask = torch.as_tensor(feature["loss_mask"]).bool()
        end = start + len(ids)
        batch["input_ids"][r, start:end] = ids
        batch["loss_mask"][r, start:end] = mask
        batch["attention_mask"][r, start:end] = 1
        batch["labels"][r, start:end] = shifted_labels(ids[None], mask[None])[0]
        batch["sample_index"][r, start:end] = i
        batch["position_ids"][r, start:end] = torch.arange(len(ids))

    def _width(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        if not multiple:
            return longest
        return -(-longest // multiple) * multiple
