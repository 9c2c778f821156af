"""The `focusft` command: one sub-command per module under `focusft.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run` on it. Modules are imported lazily so `focusft --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from focusft.errors import UserError

COMMANDS = {
    "train": "focusft.commands.train",
    "pretrain": "focusft.commands.pretrain",
    "data": "focusft.commands.data",
    "eval": "focusft.commands.eval",
    "diagnose": "focusft.commands.diagnose",
    "bench": "focusft.commands.bench",
    "experiment": "focusft.commands.experiment",
    "model": "focusft.commands.model",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focusft", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, module_name in COMMANDS.items():
        if wanted is not None and name != wanted:
            subparsers.add_parser(name)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # command not available in this build
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):  # the command parses its own flags (train)
        args.flags = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"focusft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # faults.TrainingFault: interrupted / non-finite loss (exit 130, 143, 3)
        faults = sys.modules.get("focusft.training.faults")  # loaded by any run that can raise one
        if faults is None or not isinstance(err, faults.TrainingFault):
            raise
        print(f"focusft {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"focusft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
