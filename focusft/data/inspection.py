"""`focusft data inspect`: show, token by token, what training would train for the first rows.

    focusft data inspect --data train.jsonl --model DIR --rows 3 --json mask.json

Each row is tokenized exactly as `focusft train` tokenizes it (``focusft.data.templates``, same
loss-mask rule, same ``--empty_think_loss``). The terminal view prints the rendered
conversation with every trained span highlighted (green on a terminal, ``[[...]]`` elsewhere),
then a summary line. ``--json`` writes, per row, every token's id, text and trained flag.
Without ``--model`` the embedded default's tokenizer is used.
"""

from __future__ import annotations

import json
import os
import sys

from focusft.errors import UserError

GREEN, RESET = "\033[32m", "\033[0m"


def token_table(tokenizer, ids: list[int], mask: list[int]) -> list[dict]:
    """Per token: id, its text (decoded alone, special tokens kept) and whether it is trained."""
    texts = [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
             for t in ids]
    return [{"id": int(t), "text": s, "trained": bool(m)} for t, s, m in zip(ids, texts, mask)]


def marked_text(tokens: list[dict], color: bool) -> str:
    """The rendered text with trained runs wrapped in green (or ``[[`` ``]]``)."""
    opening, closing = (GREEN, RESET) if color else ("[[", "]]")
    out, inside = [], False
    for token in tokens:
        if token["trained"] != inside:
            out.append(opening if token["trained"] else closing)
            inside = token["trained"]
        out.append(token["text"])
    if inside:
        out.append(closing)
    return "".join(out)


def inspect_rows(rows, tokenizer, n_rows: int, source: str, empty_think_loss: bool = False) -> dict:
    from focusft.data.pipeline import row_and_where, normalize_row
    from focusft.data.templates import encoder_for

    encoder = encoder_for(tokenizer, empty_think_loss)
    report = {"data": source, "rule": encoder.rule, "message_forms": encoder.forms.describe(),
              "rows": []}
    for index in range(min(n_rows, len(rows))):
        row, where = row_and_where(rows[index], f"{source} row {index}")
        messages, tools = normalize_row(row, where)
        ids, mask, rule = encoder.encode(messages, tools, where)
        tokens = token_table(tokenizer, ids, mask)
        report["rows"].append({"row": index, "where": where, "rule": rule, "n_tokens": len(ids),
                               "n_trained": sum(mask), "tokens": tokens})
    return report


def print_report(report: dict, color: bool, out=None) -> None:
    out = out or sys.stdout
    for row in report["rows"]:
        print(f"=== {row['where']}: {row['n_tokens']} tokens, {row['n_trained']} trained "
              f"(rule: {row['rule']})", file=out)
        print(marked_text(row["tokens"], color), file=out)
    legend = "green" if color else "[[...]]"
    print(f"--- trained tokens shown as {legend}; loss-mask rule of this template: {report['rule']}",
          file=out)


def load_inspect_tokenizer(model: str | None):
    if model is None:
        from focusft.sources.default import load_default_tokenizer

        return load_default_tokenizer()
    from focusft.sources.model_dir import load_tokenizer

    return load_tokenizer(model, "--model")


def run(args) -> int:
    from focusft.data.pipeline import load_rows

    if args.rows < 1:
        raise UserError(f"--rows is {args.rows}; expected an integer >= 1")
    if not args.data:
        raise UserError("focusft data inspect needs --data FILE (the chat rows to show)")
    if args.json and os.path.isdir(args.json):
        raise UserError(f"--json {args.json}: is a directory; give a file name")
    tokenizer = load_inspect_tokenizer(args.model)
    report = inspect_rows(load_rows(args.data), tokenizer, args.rows, args.data, args.empty_think_loss)
    report["model"] = args.model or "embedded default"
    print_report(report, color=sys.stdout.isatty())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, ensure_ascii=False, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
