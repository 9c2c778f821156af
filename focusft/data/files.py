"""Data files -> raw rows, each with where it came from (``file line N`` / ``file row N``).

``--data`` names one or more sources, comma-separated; each is a file, a glob pattern
(``data/*.jsonl``), a directory written by datasets' ``save_to_disk``, or a directory of data
files (its ``.jsonl`` / ``.json`` / ``.parquet`` files, sorted by name). Rows keep the order of
the sources and of the rows inside each.

* ``.jsonl``: parsed line by line here, so a bad line is reported by its 1-based line number as
  an editor counts it (blank lines counted, and skipped). A UTF-8 byte-order mark is accepted.
* ``.json``: an array of row objects; each row is located by the line its object starts on.
* ``.parquet`` and saved datasets: Arrow gives every struct the union of the fields seen in the
  column, absent ones as null (row 0's tool call gains ``"city": null`` because row 1 has one).
  Such nulls are removed from every mapping, so arguments and tool schemas come back as written.
  (A null written on purpose cannot be told apart from one parquet added; keep the original
  JSON as a string field, e.g. ``arguments: '{"x": null}'``, to keep it.) Rows are named by
  their 0-based row index.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator

from focusft.errors import UserError

EXTENSIONS = (".jsonl", ".json", ".parquet")
SUPPORTED = ".jsonl, .json, .parquet, a glob of them, a directory of them, or a directory written " \
            "by datasets' save_to_disk (several: comma-separated)"
_BATCH_ROWS = 1024


def resolve(spec: str) -> list[tuple[str, str]]:
    """``[(path, kind)]`` for a ``--data`` value; kind is jsonl | json | parquet | saved."""
    found = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        found += _resolve_one(os.path.expanduser(part))
    if not found:
        raise UserError(f"--data {spec!r}: names no file; expected {SUPPORTED}.")
    return found


def _resolve_one(path: str) -> list[tuple[str, str]]:
    if any(c in path for c in "*?["):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UserError(f"{path}: the pattern matches no file (expected chat data: {SUPPORTED}).")
        return [hit for m in matches for hit in _resolve_one(m)]
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return [(path, "saved")]
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(EXTENSIONS))
        if not files:
            raise UserError(f"{path}: is a directory with no .jsonl, .json or .parquet file and not "
                            f"one written by datasets' save_to_disk; expected {SUPPORTED}.")
        return [(f, _kind(f)) for f in files]
    if not os.path.exists(path):
        raise UserError(f"{path}: file not found (expected chat data: {SUPPORTED}).")
    return [(path, _kind(path))]


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, n))
               for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _kind(path: str) -> str:
    for ext in EXTENSIONS:
        if path.lower().endswith(ext):
            return ext[1:]
    raise UserError(f"{path}: unknown file extension; expected {SUPPORTED}.")


def stamp(path: str) -> list:
    """What identifies a file's content for caching: size and modification time (ns)."""
    if os.path.isdir(path):
        return sorted((n, stamp(os.path.join(path, n))) for n in os.listdir(path))
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def raw_rows(path: str, kind: str) -> Iterator[tuple[dict, str]]:
    """``(row, where)`` for every row of one source."""
    yield from {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "saved": _saved}[kind](path)


# --------------------------------------------------------------------------------------------


def _jsonl(path: str) -> Iterator[tuple[dict, str]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    yield _jsonl_row(path, line_no, line.rstrip("\r\n")), f"{path} line {line_no}"
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the file is not UTF-8 text ({exc}).") from exc


def _jsonl_row(path: str, line_no: int, line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "expected one JSON object per line."
        ) from exc
    if not isinstance(value, dict):
        raise UserError(
            f"{path} line {line_no}: expected a JSON object (a row), got {type(value).__name__}.")
    return value


def _json(path: str) -> Iterator[tuple[dict, str]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the file is not UTF-8 text ({exc}).") from exc
    if not text.strip():
        raise UserError(f"{path}: the file is empty; expected a JSON array of row objects.")
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if text[pos] != "[":
        raise UserError(f"{path} line {_line(text, pos)}: expected a JSON array of row objects "
                        f"(the file starts with {text[pos]!r}).")
    pos = _skip_space(text, pos + 1)
    index = 0
    while pos < len(text) and text[pos] != "]":
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}; expected a JSON array of row objects.") from exc
        where = f"{path} line {_line(text, pos)} (item {index})"
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a JSON object (a row), got {type(value).__name__}.")
        yield value, where
        index += 1
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_space(text, pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            raise UserError(f"{path}: invalid JSON at line {_line(text, min(pos, len(text) - 1))}: "
                            "expected ',' or ']' after a row.")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parquet(path: str) -> Iterator[tuple[dict, str]]:
    import pyarrow.parquet as pq

    try:  # opening the footer first gives a clean message for corrupt/non-parquet files
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise UserError(f"{path}: cannot read it as a parquet file ({exc}).") from exc
    index = 0
    for batch in handle.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            yield drop_nulls(row), f"{path} row {index}"
            index += 1


def _saved(path: str) -> Iterator[tuple[dict, str]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise UserError(f"{path}: is a directory but not one written by datasets' save_to_disk "
                        f"({exc}); expected {SUPPORTED}.") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{path}: the saved DatasetDict has no 'train' split "
                            f"(splits: {sorted(loaded)}).")
        loaded = loaded["train"]
    for index, row in enumerate(loaded):
        yield drop_nulls(row), f"{path} row {index}"


def drop_nulls(value: Any) -> Any:
    """Remove null-valued keys from every mapping, recursively (Arrow struct merging adds them)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value
