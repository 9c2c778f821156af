"""List-valued command-line flags, one form for every command.

A flag that takes several values accepts them space-separated (TRL's and argparse's form,
``--tasks qa1 qa2``), comma-separated (``--tasks qa1,qa2``), mixed, or over repeated flags
(``--model a --model b``). Empty items (``a,,b``, a trailing comma) are dropped.
"""

from __future__ import annotations

import argparse
import os


def split_items(values, keep_paths: bool = False) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; with ``keep_paths`` an existing file or directory
    whose name holds a comma is kept whole."""
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        value = str(value)
        if keep_paths and "," in value and os.path.exists(os.path.expanduser(value)):
            out.append(value)
            continue
        out += [item.strip() for item in value.split(",") if item.strip()]
    return out


class _ListAction(argparse.Action):
    """Collects space- or comma-separated values; a repeated flag adds to what came before
    (the default is replaced by the first use). With ``join`` the items are stored as one
    string joined by it (a ``--data`` spec)."""

    def __init__(self, *args, keep_paths: bool = False, join: str | None = None, **kwargs):
        self.keep_paths, self.join = keep_paths, join
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, "_lists_given", set())
        earlier = getattr(namespace, self.dest) if self.dest in given else []
        if isinstance(earlier, str):
            earlier = [earlier]
        items = split_items(values, self.keep_paths)
        if not items:
            parser.error(f"{option_string}: give at least one value")
        items = list(earlier) + items
        setattr(namespace, self.dest, self.join.join(items) if self.join else items)
        namespace._lists_given = given | {self.dest}


def list_flag(parser, *names: str, keep_paths: bool = False, join: str | None = None,
              help: str = "", **kwargs):
    """``parser.add_argument`` for a list-valued flag: ``args.<dest>`` is a list of strings, or
    one string joined by ``join`` (or the default when the flag is not given)."""
    return parser.add_argument(*names, nargs="+", action=_ListAction, keep_paths=keep_paths,
                               join=join, help=(help + " " if help else "")
                               + "(space- or comma-separated)", **kwargs)
