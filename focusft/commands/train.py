"""`focusft train`: train with FocuSFT (or plain SFT) from a YAML config and/or flags.

With no arguments it trains the embedded default (a tiny Qwen2, a locally trained tokenizer and
generated long-context QA data; see `focusft.sources.default`) with the packaged `tiny_default.yaml`,
prints the held-out accuracy and where the checkpoint is.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path

from focusft.errors import UserError

logger = logging.getLogger("focusft")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", add_help=False, help="train with FocuSFT or SFT (see `focusft train --help`)",
        description="Flags are the fields of focusft.training.config.FocusConfig; --config FILE.yaml first.")
    parser.set_defaults(func=run, passthrough=True)


def packaged_config(name: str) -> str:
    return str(resources.files("focusft") / "configs" / name)


def run(args) -> int:
    from focusft.core.distributed import adopt_slurm
    from focusft.training.config import parse_config
    from focusft.training.run import train

    adopt_slurm()  # srun without torchrun: the rank and world before anything reads them

    flags = list(args.flags)
    if "--config" not in flags and "--model" not in flags and not _wants_help(flags):
        flags = ["--config", packaged_config("tiny_default.yaml"), *flags]
    config = parse_config(flags)
    result = train(config)
    print(json.dumps(result, indent=2))
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def _wants_help(flags: list[str]) -> bool:
    return "-h" in flags or "--help" in flags
