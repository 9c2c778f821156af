"""`focusft data`: write a BABILong, RULER or embedded-default set as chat rows (.parquet or .jsonl).

    focusft data babilong --tasks qa1,qa2 --lengths 0k,1k --samples 100 --split train \\
        --seed 0 --tokenizer default --haystack DIR --out train.parquet
    focusft data default --lengths 256,512 --samples 64 --split test --out probe.jsonl
    focusft data inspect --data train.jsonl --model DIR --rows 3 --json mask.json

``inspect`` shows what training would train, token by token (``focusft.data.inspection``).

``default`` is the embedded default's task (one fact hidden in procedural prose, "Where is X?";
``focusft.sources.default``), with ``--samples`` rows per length and evidence spans; its splits are
seeded apart from the rows `focusft train` trains on.

Rows are those of ``focusft.evaluation.chat.make_chat_rows``; ``--samples`` is per task and
length. Lengths are counted in ``--tokenizer``: a local tokenizer directory, or ``default`` for
the project's default model tokenizer (``focusft.sources.default.load_default_tokenizer()``). The file is written atomically: to a temporary
file in the same directory, then renamed over ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from focusft.errors import UserError
from focusft.commands.lists import list_flag, split_items

FORMATS = (".parquet", ".jsonl")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="generate BABILong / RULER chat sets",
                              description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=("babilong", "ruler", "default", "agentic", "inspect"),
                   help="benchmark family, the embedded default's task, the agentic long-context "
                        "tool-use suite (messages + tools), or inspect (show the loss mask of "
                        "--data under --model's chat template)")
    list_flag(p, "--tasks", default=None,
              help="tasks (default: all of the suite: qa1..qa5 / 13 RULER)")
    list_flag(p, "--lengths", default=None,
              help="lengths in tokens: 0k,1k,...,128k or plain integers (default: 0k 1k for "
                   "babilong, 4k for ruler)")
    p.add_argument("--samples", type=int, default=100, help="rows per task and length (>= 1)")
    p.add_argument("--split", default="train", choices=("train", "validation", "test"),
                   help="which disjoint split to draw")
    p.add_argument("--seed", type=int, default=0, help="base seed (each split derives its own)")
    p.add_argument("--tokenizer", default="default",
                   help="local tokenizer directory, or 'default' (see above)")
    p.add_argument("--haystack", default="procedural",
                   help="directory of .txt books for noise, or 'procedural' (built-in prose)")
    p.add_argument("--prompts", choices=("focusft", "lm-eval"), default="focusft",
                   help="babilong / ruler wording: focusft's own, or lm-eval's task files")
    p.add_argument("--no-few-shot", action="store_true",
                   help="BABILong: leave the worked examples out of the prompt")
    p.add_argument("--out", default=None, help="output file, .parquet or .jsonl (required to generate)")
    inspect = p.add_argument_group("inspect")
    list_flag(inspect, "--data", default=None, join=",",
              help="inspect: chat rows (same forms as focusft train --data)")
    inspect.add_argument("--model", default=None,
                         help="inspect: local model/tokenizer directory or .gguf file (default: the embedded default's tokenizer)")
    inspect.add_argument("--rows", type=int, default=3, help="inspect: first N rows to show (>= 1)")
    inspect.add_argument("--json", default=None, metavar="OUT",
                         help="inspect: also write every token's id, text and trained flag here")
    inspect.add_argument("--empty_think_loss", action="store_true",
                         help="inspect: train empty think blocks, as focusft train --empty_think_loss true")
    p.set_defaults(func=run)


def load_tokenizer(spec: str):
    """A tokenizer for length counting (see module docstring)."""
    if spec == "default":
        from focusft.sources.default import load_default_tokenizer

        return load_default_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as err:  # any failure here is a bad path or a broken tokenizer folder
        raise UserError(f"--tokenizer {spec!r}: cannot load a tokenizer from it ({err})") from err


def write_rows(rows: list[dict], out: Path) -> None:
    """Write rows to ``out`` (.parquet or .jsonl) atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check(args: argparse.Namespace) -> tuple[list[str], list[int], Path]:
    from focusft.evaluation.chat import BABILONG_TASKS
    from focusft.evaluation.ruler import RULER_TASKS
    from focusft.evaluation.tokens import parse_length

    from focusft.evaluation.agentic import AGENTIC_TASKS

    known = {"babilong": BABILONG_TASKS, "ruler": RULER_TASKS, "default": ("locate",),
             "agentic": AGENTIC_TASKS}[args.suite]
    tasks = split_items(args.tasks) if args.tasks else list(known)
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
        raise UserError(f"--tasks: unknown {args.suite} task(s) {', '.join(bad) or '(none)'}; "
                        f"choose from {', '.join(known)}")
    default_lengths = {"babilong": "0k,1k", "ruler": "4k", "default": "256,512",
                       "agentic": "1k,2k"}[args.suite]
    try:
        lengths = [parse_length(x) for x in split_items(args.lengths or default_lengths)]
    except ValueError as err:
        raise UserError(f"--lengths: {err}") from err
    if not lengths:
        raise UserError("--lengths: give at least one length, e.g. 0k,4k")
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    if not args.out:
        raise UserError(f"focusft data {args.suite} needs --out FILE (.parquet or .jsonl)")
    out = Path(args.out)
    if out.suffix not in FORMATS:
        raise UserError(f"--out {args.out!r}: the file must end in .parquet or .jsonl")
    return tasks, lengths, out


def run(args: argparse.Namespace) -> int:
    from focusft.evaluation.chat import make_chat_rows
    from focusft.evaluation.haystack import make_haystack
    from focusft.evaluation.lm_eval_tasks import LmEvalUnavailable

    if args.suite == "inspect":
        from focusft.data.inspection import run as inspect

        return inspect(args)
    tasks, lengths, out = _check(args)
    if args.suite == "default":
        rows = default_task_rows(args, lengths)
        write_rows(rows, out)
        print(f"wrote {len(rows)} rows to {out}")
        return 0
    try:
        haystack = make_haystack(args.haystack, args.seed)
    except UserError as err:
        raise UserError(f"--haystack: {err}") from err
    tokenizer = load_tokenizer(args.tokenizer)
    try:
        if args.suite == "agentic":
            from focusft.evaluation.agentic import agentic_rows

            rows = agentic_rows(tasks, lengths, args.samples, args.seed, args.split, tokenizer,
                                haystack)
        else:
            rows = make_chat_rows(args.suite, tasks, lengths, args.samples, args.seed,
                                  args.split, tokenizer, haystack, few_shot=not args.no_few_shot,
                                  prompts=args.prompts)
    except LmEvalUnavailable as err:
        raise UserError(f"--prompts lm-eval: {err}") from None
    except ValueError as err:  # e.g. a length too small for a RULER task, or too many samples
        raise UserError(f"--lengths/--samples: {err}") from err
    write_rows(rows, out)
    print(f"wrote {len(rows)} rows to {out}")
    return 0


def default_task_rows(args: argparse.Namespace, lengths: list[int]) -> list[dict]:
    from focusft.sources import default

    tokenizer = load_tokenizer(args.tokenizer)
    split = {"validation": "eval"}.get(args.split, args.split)
    people = default.DEFAULT_RECIPE["n_people"]
    # One stream per length, each seeded by (seed, split, length): a row never depends on the
    # other lengths asked for.
    return [row for length in lengths
            for row in default.default_training_rows(
                args.samples, seed=args.seed * 1_000_003 + length, split=split, lengths=length,
                n_people=people, tokenizer=tokenizer)]
