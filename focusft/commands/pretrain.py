"""`focusft pretrain`: next-token pretraining of the embedded default model in a named recipe
(see focusft.experiments.pretrain; the recipes and their measured attention sinks: docs/sinks.md)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from focusft.experiments.pretrain import RECIPES

    p = subparsers.add_parser("pretrain", help="pretrain the tiny default model (BOS, books, bAbI, "
                              "RULER, sparse copy); measures attention sinks", description=__doc__)
    p.add_argument("--output_dir", required=True, help="where the checkpoint goes (new or empty)")
    p.add_argument("--recipe", default="sinks", choices=sorted(RECIPES),
                   help="named data mix and hyper-parameters (default: sinks)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (recipe default 1200)")
    p.add_argument("--seq_len", type=int, default=None, help="tokens per row, BOS included (512)")
    p.add_argument("--batch_size", type=int, default=None, help="rows per step (8)")
    p.add_argument("--learning_rate", type=float, default=None, help="peak AdamW learning rate (3e-3)")
    p.add_argument("--weight_decay", type=float, default=None,
                   help="AdamW decoupled weight decay on weight matrices (0.1)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (60)")
    p.add_argument("--sink_every", type=int, default=None,
                   help="steps between first-token attention measurements; 0: only at the end (100)")
    p.add_argument("--seed", type=int, default=None, help="model init and data seed (0)")
    p.add_argument("--heads", type=int, default=None, help="attention heads per layer (4)")
    p.add_argument("--haystack", default=None, help="prose: 'procedural', or a directory of .txt "
                   "books (default: ../shared/data/haystack when it exists, else procedural)")
    p.set_defaults(func=run)


def run(args) -> int:
    from focusft.experiments.pretrain import pretrain, recipe_config

    cfg = recipe_config(args.recipe, args.output_dir, steps=args.steps, seq_len=args.seq_len,
                        batch_size=args.batch_size, learning_rate=args.learning_rate,
                        weight_decay=args.weight_decay, warmup=args.warmup,
                        sink_every=args.sink_every, seed=args.seed, heads=args.heads, haystack=args.haystack)
    summary = pretrain(cfg)
    for key in ("history", "sinks", "config"):
        summary.pop(key)
    print(json.dumps(summary, indent=2))
    return 0
