"""`focusft pretrain`: retired. It pretrained the tiny default model to give it attention sinks,
which it never formed (docs/history.md); the command says where the code is and exits 2."""

from __future__ import annotations

from focusft.errors import UserError

LAST_COMMIT = "138d7adc671f943ec94123118db3444874f474cf"


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="retired: pretraining tiny bases (docs/history.md)",
                              description=__doc__)
    p.set_defaults(func=run, passthrough=True)


def run(args) -> int:
    raise UserError(
        "this command was retired: the pretraining recipes never gave the tiny default model "
        "attention sinks (docs/history.md), and `focusft experiment --task real` uses a real "
        f"pretrained base instead. To run it as it was, check out commit {LAST_COMMIT} "
        "(`git checkout 138d7ad`) and follow its docs/sinks.md.")
