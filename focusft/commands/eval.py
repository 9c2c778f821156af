"""`focusft eval`: BABILong- / RULER-style evaluation of one or more checkpoints (offline)."""

from __future__ import annotations

import sys

from ..errors import UserError


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="long-context evaluation (BABILong / RULER style)")
    p.add_argument("--model", action="append", required=True,
                   help="checkpoint directory (repeat to compare models side by side)")
    p.add_argument("--suite", choices=["babilong", "ruler"], default="babilong")
    p.add_argument("--tasks", default=None,
                   help="comma list; default qa1..qa5 (babilong) or all 13 tasks (ruler)")
    p.add_argument("--lengths", default="0k,1k,2k,4k",
                   help="comma list of context lengths in the model's tokens: 0k,1k,...,128k or ints")
    p.add_argument("--samples", type=int, default=20, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-split generator")
    p.add_argument("--mask", choices=["causal", "prefix", "both"], default="causal",
                   help="inference mask: causal, prefix (prompt prefilled under the training "
                        "mask), or both side by side")
    p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--haystack", default=None,
                   help="directory of .txt files for distractor prose (default: built-in generator)")
    p.add_argument("--no_few_shot", action="store_true", help="BABILong prompts without examples")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code to run")
    p.add_argument("--out", default="eval-results", help="output directory (replaced atomically)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval_runner import EvalSpec, evaluate, markdown_table, write_report
    from ..evaluation.chat import BABILONG_TASKS
    from ..evaluation.ruler import RULER_TASKS

    if args.samples < 1 or args.batch_size < 1:
        raise UserError("--samples and --batch_size must be at least 1")
    tasks = _csv(args.tasks) if args.tasks else list(BABILONG_TASKS if args.suite == "babilong" else RULER_TASKS)
    spec = EvalSpec(suite=args.suite, tasks=tasks, lengths=_csv(args.lengths), samples=args.samples,
                    seed=args.seed, masks=["causal", "prefix"] if args.mask == "both" else [args.mask],
                    batch_size=args.batch_size, haystack=args.haystack,
                    few_shot=not args.no_few_shot, trust_remote_code=args.trust_remote_code)
    results = evaluate(args.model, spec)
    out = write_report(results, args.out)
    sys.stdout.write(markdown_table(results))
    print(f"results: {out}/results.json, {out}/results.md, {out}/accuracy.png")
    return 0
