"""`focusft experiment`: SFT-causal, SFT-GLM, FocuSFT (+ context-objective ablation) from one base.

See focusft.experiments.experiment for the pipeline; writes out/experiment.json and docs/results.md.
"""

from __future__ import annotations

from focusft.commands.lists import list_flag


def register(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="SFT vs FocuSFT in miniature; writes docs/results.md",
                              description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny budget (< 10 min on 2 CPU cores), 1 seed")
    p.add_argument("--smoke", action="store_true", help="the smallest end-to-end run (tests)")
    p.add_argument("--base", default=None, help="starting weights: 'scratch' (default: the embedded default model initialised "
                        "from each seed) or a directory")
    list_flag(p, "--seeds", default=None, help="training seeds (default 0 1 2; quick: 0)")
    list_flag(p, "--methods", default=None, help="subset of the methods")
    list_flag(p, "--tasks", default=None, help="BABILong transfer tasks (default qa1-qa5)")
    p.add_argument("--task", default=None, choices=["locate", "real"],
                   help="locate (default): the embedded default's one-word task; real: the 2x2 of "
                        "mask x inner loop (SFT-causal, SFT-GLM, FocuSFT-causal, FocuSFT-GLM) on "
                        "BABILong qa1-qa5 with sentence answers, on a real pretrained base "
                        "(SmolLM2-135M-Instruct from the package index, or --base DIR), scored by "
                        "likelihood; resumable (rerun with the same --out)")
    p.add_argument("--haystack", default=None,
                   help="prose for --task real: a directory of .txt books or 'procedural' "
                        "(default: ../shared/data/haystack when it exists)")
    p.add_argument("--steps", type=int, default=None, help="outer optimizer steps per run (a reduced "
                   "run; the preset's otherwise)")
    p.add_argument("--eval_samples", type=int, default=None,
                   help="BABILong samples per task and length (the preset's otherwise)")
    p.add_argument("--no_sweep", action="store_true", help="--task real: skip the selection of the "
                   "inner loop (the first point of the preset's grid)")
    p.add_argument("--out", default=None, help="working directory (default runs/experiment; --task real: runs/experiment-real)")
    p.add_argument("--report", default=None, help="markdown report (default docs/results.md; --task real: docs/results-real.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    from focusft.experiments.experiment import command_line, run_experiment
    from focusft.experiments.plan import config_from_args

    cfg = config_from_args(args)
    summary = run_experiment(cfg, command_line())
    print(f"report: {cfg.report}  ({summary['total_seconds']:.0f} s)")
    return 0
