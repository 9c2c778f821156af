"""`focusft eval`: BABILong, RULER and agentic long-context evaluation of checkpoints (offline)."""

from __future__ import annotations

import sys

from focusft.errors import UserError
from focusft.commands.lists import list_flag, split_items


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="long-context evaluation (BABILong / RULER / agentic)")
    list_flag(p, "--model", required=True, keep_paths=True,
              help="checkpoint directories or .gguf files (several: compared side by side)")
    p.add_argument("--suite", choices=["babilong", "ruler", "agentic"], default="babilong")
    list_flag(p, "--tasks", default=None,
              help="default qa1..qa5 (babilong), all 13 tasks (ruler), all agentic tasks")
    list_flag(p, "--lengths", default=None,
              help="lengths in the model's tokens (0k,1k,...,128k or ints; BABILong's k = 1000, "
                   "RULER's and agentic's k = 1024); default 0k 1k 2k 4k (babilong), 4k (ruler: "
                   "RULER's shortest), 1k 2k 4k (agentic)")
    p.add_argument("--prompts", choices=["focusft", "lm-eval"], default="focusft",
                   help="prompt wording: focusft's own, or lm-evaluation-harness's RULER / "
                        "BABILong task files (read from the installed lm-eval)")
    p.add_argument("--chat_template", choices=["model", "none"], default="model",
                   help="render prompts with the model's chat template, or as plain text "
                        "(base models; RULER's default)")
    p.add_argument("--scoring", choices=["generate", "loglik"], default="generate",
                   help="generate: greedy output scored by the suite's rule; loglik: each "
                        "candidate of the task's closed answer set scored by its log-likelihood "
                        "(acc, acc_norm, gold NLL; BABILong qa1-qa5, agentic compare)")
    p.add_argument("--samples", type=int, default=20, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-split generator")
    p.add_argument("--mask", choices=["causal", "prefix", "both"], default="causal",
                   help="inference mask: causal, prefix (prompt prefilled under the training "
                        "mask), or both side by side")
    p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--haystack", default="auto",
                   help="distractor prose: pg19 (PG-19 through datasets, cached), books (the "
                        "project's book folder), procedural (built-in), a directory of .txt "
                        "books, or auto (books when present, else procedural)")
    p.add_argument("--no_few_shot", action="store_true", help="BABILong prompts without examples")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code to run")
    p.add_argument("--out", default="eval-results", help="output directory (replaced atomically)")
    p.set_defaults(func=run)


def run(args) -> int:
    from focusft.evaluation.runner import EvalSpec, evaluate, markdown_table, write_report
    from focusft.evaluation.runner import DEFAULT_LENGTHS
    from focusft.evaluation.agentic import AGENTIC_TASKS
    from focusft.evaluation.chat import BABILONG_TASKS
    from focusft.evaluation.haystack import make_haystack
    from focusft.evaluation.ruler import RULER_TASKS

    if args.samples < 1 or args.batch_size < 1:
        raise UserError("--samples and --batch_size must be at least 1")
    known = {"babilong": BABILONG_TASKS, "ruler": RULER_TASKS, "agentic": AGENTIC_TASKS}[args.suite]
    tasks = split_items(args.tasks) if args.tasks else list(known)
    bad = [t for t in tasks if t not in known]
    if bad:
        raise UserError(f"--tasks: unknown {args.suite} task(s) {', '.join(bad)}; choose from "
                        f"{', '.join(known)}")
    make_haystack(args.haystack)  # fail on a bad --haystack before any model is loaded
    spec = EvalSpec(suite=args.suite, tasks=tasks,
                    lengths=split_items(args.lengths) if args.lengths else DEFAULT_LENGTHS[args.suite],
                    samples=args.samples, seed=args.seed,
                    masks=["causal", "prefix"] if args.mask == "both" else [args.mask],
                    batch_size=args.batch_size, haystack=args.haystack,
                    few_shot=not args.no_few_shot, trust_remote_code=args.trust_remote_code,
                    prompts=args.prompts, chat_template=args.chat_template == "model",
                    scoring=args.scoring)
    if args.scoring == "loglik" and (args.suite == "ruler" or "lookup" in tasks):
        raise UserError(f"--scoring loglik: {args.suite} {', '.join(tasks)}: only tasks with a "
                        "closed answer set can be scored by likelihood (BABILong qa1-qa5, agentic "
                        "compare); use --scoring generate")
    results = evaluate(args.model, spec)
    out = write_report(results, args.out)
    sys.stdout.write(markdown_table(results))
    print(f"results: {out}/results.json, {out}/results.md, {out}/accuracy.png")
    return 0
