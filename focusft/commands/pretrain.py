"""`focusft pretrain`: next-token pretraining of the embedded default model (see focusft.pretrain)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretrain the tiny default model on prose + bAbI stories",
                              description=__doc__)
    p.add_argument("--output_dir", required=True, help="where the checkpoint goes (new or empty)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--seq_len", type=int, default=512, help="tokens per row")
    p.add_argument("--batch_size", type=int, default=8, help="rows per step")
    p.add_argument("--learning_rate", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="model init and data seed")
    p.add_argument("--haystack", default=None,
                   help="distractor prose: 'procedural' (default) or a directory of .txt books")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(output_dir=args.output_dir, steps=args.steps, seq_len=args.seq_len,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         seed=args.seed, haystack=args.haystack)
    summary = pretrain(cfg)
    summary.pop("history")
    print(json.dumps(summary, indent=2))
    return 0
