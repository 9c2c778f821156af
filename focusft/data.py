"""Training data: chat rows -> token ids + loss mask -> padded, label-shifted batches.

Pipeline and contract
---------------------
1. ``load_rows(path)``: a ``.parquet`` / ``.jsonl`` / ``.json`` file or a ``save_to_disk`` directory
   becomes a ``datasets.Dataset`` (a saved ``DatasetDict`` contributes its ``"train"`` split).
2. ``normalize_row(row, where)``: one row becomes ``(messages, tools)``. A row holds either
   ``messages`` (+ optional ``tools``) or a ``prompt``/``completion`` pair (strings or message lists).
3. ``tokenize_conversation``: the conversation is rendered once with the tokenizer's chat template
   and tokenized once. The loss mask is found in *character* space, then mapped to tokens:

   For every assistant message i let ``P_i = render(m[:i], add_generation_prompt=True)`` and
   ``F_i = render(m[:i+1])``. If the template renders each turn independently of later turns,
   both are prefixes of the full render ``R``; the assistant's text (content + end-of-turn marker)
   is then the char span ``S_i = [len(P_i), len(rstrip(F_i)))``. The header is inside ``P_i`` and
   trailing whitespace after the marker is layout, so neither is trained on.
   With offsets ``(s_t, e_t)`` of token t in R:  ``loss_mask[t] = 1  iff  s_t in some S_i``.

4. ``tokenize_rows``: applies 2-3 to every row, truncates to ``max_length`` (error/left/right) and
   drops rows without any trainable token. Output columns: ``input_ids``, ``loss_mask``,
   ``sample_id`` (0-based row index in the source, stable across runs) and ``length``.
5. ``Collator``: right-pads a batch to its longest sample and builds already-shifted labels:
   ``labels[b, t] = input_ids[b, t+1] if loss_mask[b, t+1] else -100`` (last position: -100),
   so position t's logits are scored against ``labels[b, t]`` with no further shifting.

Every problem with the user's data raises ``UserError`` naming the file, row and field.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Iterable

import datasets
import jinja2
import torch

from focusft.errors import UserError

ALLOWED_ROLES = ("system", "user", "assistant", "tool")
TRUNCATION_MODES = ("error", "left", "right")
SUPPORTED_FORMATS = ".parquet, .jsonl, .json, or a directory written by datasets' save_to_disk"
IGNORE_INDEX = -100
# Above this many rows a progress bar is worth the noise.
_PROGRESS_MIN_ROWS = 2000


# --------------------------------------------------------------------------------------------
# 1. Loading
# --------------------------------------------------------------------------------------------


def load_rows(path: str) -> datasets.Dataset:
    """Load chat rows from a parquet/jsonl/json file or a ``save_to_disk`` directory."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        rows = _load_saved_dir(path)
    elif not os.path.exists(path):
        raise UserError(f"{path}: file not found (expected chat data: {SUPPORTED_FORMATS}).")
    else:
        rows = _load_file(path)
    if len(rows) == 0:
        raise UserError(f"{path}: the file has 0 rows; expected at least one chat conversation.")
    return rows


def _load_file(path: str) -> datasets.Dataset:
    lower = path.lower()
    if lower.endswith(".parquet"):
        return _load_parquet(path)
    if lower.endswith(".jsonl"):
        _validate_jsonl(path)
        return _from_json(path, "JSON Lines: one JSON object per line")
    if lower.endswith(".json"):
        return _load_json(path)
    raise UserError(f"{path}: unknown file extension; expected {SUPPORTED_FORMATS}.")


def _load_parquet(path: str) -> datasets.Dataset:
    import pyarrow.parquet as pq

    # Opening the footer first gives a clean message for corrupt/non-parquet files.
    try:
        num_rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise UserError(f"{path}: cannot read it as a parquet file ({exc}).") from exc
    if num_rows == 0:
        raise UserError(f"{path}: the file has 0 rows; expected at least one chat conversation.")
    try:
        return datasets.Dataset.from_parquet(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot read it as a parquet file ({exc}).") from exc


def _validate_jsonl(path: str) -> None:
    """Parse each line ourselves so a bad line is reported by its 1-based line number."""
    rows = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    _check_jsonl_line(path, line_no, line)
                    rows += 1
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the file is not UTF-8 text ({exc}).") from exc
    if rows == 0:
        raise UserError(f"{path}: the file has 0 rows; expected one JSON object per line.")


def _check_jsonl_line(path: str, line_no: int, line: str) -> None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "expected one JSON object per line."
        ) from exc
    if not isinstance(value, dict):
        raise UserError(
            f"{path} line {line_no}: expected a JSON object (a row), got {type(value).__name__}."
        )


def _load_json(path: str) -> datasets.Dataset:
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: the file is empty; expected a JSON array of row objects.")
    return _from_json(path, "a JSON array of row objects")


def _from_json(path: str, expected: str) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_json(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot load it ({_json_problem(path, exc)}); expected {expected}.") from exc


def _json_problem(path: str, exc: Exception) -> str:
    """Point at the exact spot when the file is not JSON at all; otherwise pass on the reason."""
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
        except json.JSONDecodeError as err:
            return f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        except (OSError, UnicodeDecodeError) as err:
            return str(err)
    return f"{type(exc).__name__}: {exc}"


def _load_saved_dir(path: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise UserError(
            f"{path}: is a directory but not one written by datasets' save_to_disk ({exc}); "
            f"expected {SUPPORTED_FORMATS}."
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserError(
                f"{path}: the saved DatasetDict has no 'train' split (splits: {sorted(loaded)})."
            )
        loaded = loaded["train"]
    return loaded


# --------------------------------------------------------------------------------------------
# 2. Row normalization
# --------------------------------------------------------------------------------------------


def normalize_row(row: dict, where: str) -> tuple[list[dict], list | None]:
    """Return ``(messages, tools)`` for one row; ``where`` (e.g. "data.jsonl row 17") prefixes errors."""
    if row.get("messages") is not None:
        messages = _check_messages(row["messages"], where, "messages")
    elif row.get("prompt") is not None:
        messages = _prompt_completion(row, where)
    elif "messages" in row or "prompt" in row:
        field = "messages" if "messages" in row else "prompt"
        raise UserError(f"{where}: field '{field}' is null; expected a conversation.")
    else:
        raise UserError(
            f"{where}: no 'messages' or 'prompt' field; the row has columns {sorted(row)}. "
            "Expected 'messages' (a list of {role, content}) or 'prompt' + 'completion'."
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: field 'messages' has no assistant turn, so nothing to train on.")
    return messages, _check_tools(row.get("tools"), where)


def _prompt_completion(row: dict, where: str) -> list[dict]:
    """A string side becomes one user/assistant message; a list side is TRL's conversational form."""
    if row.get("completion") is None:
        raise UserError(f"{where}: field 'prompt' is present but 'completion' is missing or null.")
    prompt = _side(row["prompt"], "user", where, "prompt")
    completion = _side(row["completion"], "assistant", where, "completion")
    return prompt + completion


def _side(value: Any, role: str, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _check_messages(value, where, field)
    raise UserError(
        f"{where}: field '{field}' must be a string or a list of messages, got {type(value).__name__}."
    )


def _check_messages(messages: Any, where: str, field: str) -> list[dict]:
    if not isinstance(messages, list):
        raise UserError(
            f"{where}: field '{field}' must be a list of {{role, content}} messages, "
            f"got {type(messages).__name__}."
        )
    return [_check_message(m, where, f"{field}[{i}]") for i, m in enumerate(messages)]


def _check_message(message: Any, where: str, field: str) -> dict:
    if not isinstance(message, dict):
        raise UserError(
            f"{where}: {field} must be a dict with 'role' and 'content', got {type(message).__name__}."
        )
    # Columnar formats give every message every key seen in the column, with None where absent;
    # None therefore means "absent", and templates test presence (`if message.tool_calls`).
    message = {key: value for key, value in message.items() if value is not None}
    role = message.get("role")
    if role not in ALLOWED_ROLES:
        raise UserError(f"{where}: {field}.role is {role!r}; allowed roles: {', '.join(ALLOWED_ROLES)}.")
    content = message.get("content")
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        raise UserError(
            f"{where}: {field}.content is missing or null; only an assistant message with "
            "'tool_calls' may omit it."
        )
    if content is not None and not isinstance(content, str):
        raise UserError(f"{where}: {field}.content must be a string, got {type(content).__name__}.")
    return message


def _check_tools(tools: Any, where: str) -> list | None:
    """Tools may be a list of JSON schemas or that list serialized as a JSON string."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: field 'tools' is a string but not valid JSON ({exc.msg}).") from exc
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise UserError(f"{where}: field 'tools' must be a list of tool schemas, got {type(tools).__name__}.")
    # An empty list would make some templates render an empty tools section.
    return tools or None


# --------------------------------------------------------------------------------------------
# 3. One conversation -> (input_ids, loss_mask)
# --------------------------------------------------------------------------------------------


def tokenize_conversation(
    tokenizer: Any, messages: list[dict], tools: list | None = None, where: str = ""
) -> tuple[list[int], list[int]]:
    """Tokenize a conversation; ``loss_mask[t] = 1`` iff token t is assistant content or its end-of-turn."""
    where = where or "conversation"
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{where}: the tokenizer has no chat_template; use an instruct/chat model's tokenizer "
            "or set tokenizer.chat_template."
        )
    if not getattr(tokenizer, "is_fast", False):
        # Offsets (char -> token alignment) exist only for tokenizers backed by `tokenizers`.
        raise UserError(f"{where}: the tokenizer must be a fast tokenizer (offset mapping is needed).")
    full = _render(tokenizer, messages, tools, False, where)
    spans = assistant_char_spans(tokenizer, messages, tools, full, where)
    encoded = tokenizer(full, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    return list(encoded["input_ids"]), _mask_from_offsets(encoded["offset_mapping"], spans)


def assistant_char_spans(
    tokenizer: Any, messages: list[dict], tools: list | None, full: str, where: str
) -> list[tuple[int, int]]:
    """Char spans ``[len(P_i), len(rstrip(F_i)))`` of each assistant message inside ``full``."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = _render(tokenizer, messages[: i + 1], tools, False, where)
        # Templates refuse an empty conversation: an opening assistant turn's prefix is what
        # its own rendering puts before its content.
        prefix = _render(tokenizer, messages[:i], tools, True, where) if i \
            else _opening_header(tokenizer, message, tools, where)
        for name, text in (("up to (and with the generation prompt for)", prefix), ("through", through)):
            if not full.startswith(text):
                raise UserError(_prefix_error(where, i, name, text, full))
        start, end = len(prefix), len(through.rstrip())
        if end > start:
            spans.append((start, end))
    return spans


_MARK = "\u2063focusft-content\u2063"


def _opening_header(tokenizer: Any, message: dict, tools: list | None, where: str) -> str:
    """What the template writes before the content of an assistant turn that opens the chat."""
    marked = _render(tokenizer, [{**message, "content": _MARK}], tools, False, where)
    return marked[:max(0, marked.find(_MARK))]


def _render(tokenizer: Any, messages: list[dict], tools: list | None, gen_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=gen_prompt
        )
    except (jinja2.TemplateError, TypeError, ValueError) as exc:
        raise UserError(
            f"{where}: the chat template failed on this conversation "
            f"({len(messages)} messages): {type(exc).__name__}: {exc}"
        ) from exc


def _prefix_error(where: str, index: int, name: str, text: str, full: str) -> str:
    at = next((k for k, (a, b) in enumerate(zip(text, full)) if a != b), min(len(text), len(full)))
    return (
        f"{where}: the chat template does not reproduce its own prefixes: rendering the conversation "
        f"{name} assistant message messages[{index}] is not a prefix of the full rendering "
        f"(first difference at char {at}: {text[at:at + 40]!r} vs {full[at:at + 40]!r}). "
        "The template rewrites earlier turns (e.g. drops or reformats earlier assistant content, as "
        "reasoning-stripping templates do), so assistant tokens cannot be located. Use a chat "
        "template that renders each turn the same way whatever follows it."
    )


def _mask_from_offsets(offsets: Iterable[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Token t is a loss token iff its first char lies in a span (spans are sorted, disjoint)."""
    starts = [start for start, _ in spans]
    mask = []
    for char_start, _ in offsets:
        k = bisect_right(starts, char_start) - 1
        mask.append(int(k >= 0 and char_start < spans[k][1]))
    return mask


# --------------------------------------------------------------------------------------------
# 4. All rows -> tokenized dataset
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

    def summary(self) -> str:
        share = 100.0 * self.loss_tokens / self.total_tokens if self.total_tokens else 0.0
        return (
            f"read {self.rows_read} rows, kept {self.rows_kept} "
            f"({self.truncated} truncated, {self.dropped_no_assistant_tokens} dropped with no "
            f"assistant tokens); {self.total_tokens} tokens, {self.loss_tokens} loss tokens "
            f"({share:.1f}%), longest {self.max_len}"
        )


_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "loss_mask": datasets.Sequence(datasets.Value("int8")),
        "sample_id": datasets.Value("int64"),
        "length": datasets.Value("int64"),
    }
)


def tokenize_rows(
    rows: datasets.Dataset, tokenizer: Any, max_length: int, truncation: str, source: str
) -> tuple[datasets.Dataset, DataReport]:
    """Normalize, tokenize and truncate every row; drop rows left without a trainable token."""
    _check_limits(max_length, truncation)
    report = DataReport(rows_read=len(rows))
    columns: dict[str, list] = {name: [] for name in _FEATURES}
    for index, row in enumerate(_progress(rows, source)):
        where = f"{source} row {index}"
        messages, tools = normalize_row(row, where)
        ids, mask = tokenize_conversation(tokenizer, messages, tools, where)
        ids, mask, was_cut = _truncate(ids, mask, max_length, truncation, where)
        report.truncated += was_cut
        if not any(mask[1:]):  # position 0 is never a label, see Collator
            report.dropped_no_assistant_tokens += 1
            continue
        _keep(columns, report, ids, mask, index)
    if report.rows_kept == 0:
        raise UserError(f"{source}: no usable rows after tokenization ({report.summary()}).")
    return datasets.Dataset.from_dict(columns, features=_FEATURES), report


def _check_limits(max_length: int, truncation: str) -> None:
    if truncation not in TRUNCATION_MODES:
        raise UserError(f"--truncation is {truncation!r}; expected one of {', '.join(TRUNCATION_MODES)}.")
    if not isinstance(max_length, int) or max_length < 2:
        raise UserError(f"--max_length is {max_length!r}; expected an integer >= 2.")


def _progress(rows: datasets.Dataset, source: str) -> Iterable[dict]:
    if len(rows) <= _PROGRESS_MIN_ROWS:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, total=len(rows), desc=f"tokenizing {source}", unit="row")


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


def _keep(columns: dict[str, list], report: DataReport, ids: list[int], mask: list[int], index: int) -> None:
    columns["input_ids"].append(ids)
    columns["loss_mask"].append(mask)
    columns["sample_id"].append(index)
    columns["length"].append(len(ids))
    report.rows_kept += 1
    report.total_tokens += len(ids)
    report.loss_tokens += sum(mask[1:])
    report.max_len = max(report.max_len, len(ids))


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
