"""What `focusft experiment` runs: methods, the configuration and its presets, flags -> config.

Methods are `focusft train` flag lists, so every method is the product's own pipeline; the
presets size one experiment (``full``, ``--quick``, ``--smoke``) per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from focusft.errors import UserError


METHODS: dict[str, list[str]] = {
    "sft-causal": ["--method", "sft", "--attention", "causal"],
    "sft-glm": ["--method", "sft", "--attention", "glm"],
    "focusft": ["--method", "focusft", "--attention", "glm", "--inner_objective", "response"],
    "focusft-context": ["--method", "focusft", "--attention", "glm", "--inner_objective", "context"],
}


BASE = "base (no SFT)"


@dataclass
class ExperimentConfig:
    out: str = "runs/experiment"
    report: str = "docs/results.md"
    base: str | None = None  # None / "scratch": seeded default init; or a directory
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # training task: the embedded default's, short-to-long curriculum
    train_lengths: list[int] = field(default_factory=lambda: [32, 32, 32, 64, 64, 128, 256])
    train_samples: int = 5600
    n_people: int = 1
    steps: int = 175  # outer optimizer steps per run (train_samples / batch_size: one pass)
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    diagnostics_steps: int = 25
    # evaluation
    heldout_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    heldout_samples: int = 64  # per length (the same test rows for every model)
    tasks: list[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"])  # BABILong
    eval_lengths: list[int] = field(default_factory=lambda: [0, 1024, 2048, 4096])
    eval_samples: int = 16  # per task and length
    ruler_tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "cwe"])
    # CWE with its worked example (as the official task) needs about 1.2K tokens of the embedded
    # default's tokenizer before any noise, so RULER transfer is measured at 2K
    ruler_lengths: list[int] = field(default_factory=lambda: [2048])
    ruler_samples: int = 10
    few_shot: bool = True
    probe_samples: int = 16
    probe_steps: int = 2
    probe_lr: float = 1.0
    data_seed: int = 0
    label: str = "full"
    task: str = "locate"  # "locate": the embedded default's task; "real": a real base
    haystack: str | None = None  # None: the haystack books when present
    # --task real (focusft.experiments.real): a real pretrained base, inner loop chosen on validation
    real_train_lengths: list[int] = field(default_factory=lambda: [0, 256, 512])
    real_train_samples: int = 16  # per (task, length)
    real_eval_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    real_eval_tasks: list[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3"])  # held out
    validation_samples: int = 4  # per task, at the longest trained length
    attention_length: int = 4096
    select: bool = True  # choose (K, inner lr) per objective on validation data first
    select_grid: list = field(default_factory=lambda: [[1, 0.1], [2, 0.03], [2, 0.1], [2, 0.3], [2, 1.0]])
    select_steps: int = 10
    leakage_samples: int = 8


PRESETS = {
    "full": {},
    "quick": dict(seeds=[0], train_lengths=[32, 32, 32, 64], train_samples=3200, steps=100,
                  warmup_steps=10, diagnostics_steps=25, heldout_lengths=[64, 128, 256],
                  heldout_samples=24, tasks=["qa1"], eval_lengths=[0], eval_samples=6,
                  ruler_tasks=["niah_single_1", "cwe"], ruler_lengths=[2048], ruler_samples=2,
                  few_shot=False, probe_samples=8, label="quick"),
    "smoke": dict(seeds=[0], train_lengths=[16], train_samples=4, steps=1, batch_size=2,
                  warmup_steps=0, diagnostics_steps=1, heldout_lengths=[16, 32],
                  heldout_samples=2, tasks=["qa1"], eval_lengths=[0], eval_samples=2,
                  ruler_tasks=["niah_single_1"], ruler_lengths=[512], ruler_samples=1,
                  few_shot=False, probe_samples=2, label="smoke"),
}

# --task real: on top of the preset above (focusft.experiments.real). The full preset's rows come
# from the power calculation of docs/results-real.md (fixed before the run): 12 rows per task and
# length for each of 2 seeds = 120 paired rows per length (+-8 points at a discordant fraction of
# 0.2), 360 pooled over the 3 lengths (+-4.6).
REAL_PRESETS = {
    "full": dict(base=None, seeds=[0, 1], real_train_lengths=[0, 256, 512], real_train_samples=18,
                 steps=64, batch_size=4, learning_rate=5e-5, warmup_steps=6,
                 diagnostics_steps=32, real_eval_lengths=[512, 1024, 2048],
                 real_eval_tasks=["qa1", "qa2", "qa3", "qa4", "qa5"], eval_samples=12,
                 validation_samples=4, attention_length=2048,
                 select_grid=[[2, 0.03], [2, 0.1], [2, 0.3]], select_steps=8, leakage_samples=8),
    # a smoke test of the whole pipeline in <= 10 minutes: no selection (K 2, inner lr 0.1), one
    # seed, one row per (task, length)
    "quick": dict(base=None, seeds=[0], real_train_lengths=[0], real_train_samples=2,
                  tasks=["qa1", "qa2"], steps=2, batch_size=2,
                  learning_rate=2e-5, warmup_steps=1, diagnostics_steps=2,
                  real_eval_lengths=[512], real_eval_tasks=["qa1", "qa2"], eval_samples=1,
                  validation_samples=2, attention_length=512, select=False,
                  select_grid=[[2, 0.1]], leakage_samples=2),
    "smoke": dict(seeds=[0, 1], real_train_lengths=[0], real_train_samples=1,
                  tasks=["qa1"], steps=1, batch_size=1, warmup_steps=0, diagnostics_steps=1,
                  real_eval_lengths=[0, 256], real_eval_tasks=["qa1"], eval_samples=2,
                  validation_samples=1, attention_length=256, select_grid=[[1, 0.1], [1, 0.3]],
                  select_steps=1, leakage_samples=1),
}

def training_mask(flags: list[str]) -> str:
    return flags[flags.index("--attention") + 1]


def _items(value) -> list[str]:
    """A list flag's values (the CLI gives a list, split at commas already; code may give "0,1")."""
    values = [value] if isinstance(value, str) else value
    return [item.strip() for v in values for item in str(v).split(",") if item.strip()]


def _seeds(items: list[str]) -> list[int]:
    try:
        return [int(s) for s in items]
    except ValueError:
        raise UserError(f"--seeds {' '.join(items)}: expected integers, e.g. --seeds 0 1 2") from None


def config_from_args(args) -> ExperimentConfig:
    preset = "smoke" if getattr(args, "smoke", False) else "quick" if args.quick else "full"
    cfg = replace(ExperimentConfig(), **PRESETS[preset])
    task = getattr(args, "task", None) or "locate"
    if task == "real":  # its own report, so it never overwrites the default task's
        cfg = replace(cfg, task="real", report="docs/results-real.md", out="runs/experiment-real",
                      **REAL_PRESETS[preset])
    updates = {"out": args.out, "report": args.report, "base": args.base,
               "haystack": getattr(args, "haystack", None)}
    if args.seeds:
        updates["seeds"] = _seeds(_items(args.seeds))
    if args.methods:
        updates["methods"] = _items(args.methods)
    if args.tasks:
        updates["tasks"] = _items(args.tasks)
    for name in ("steps", "eval_samples"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 1:
                raise UserError(f"--{name} must be >= 1, got {value}")
            updates[name] = value
    if getattr(args, "no_sweep", False):
        updates["select"] = False
    reduced = {"steps", "eval_samples", "seeds", "select", "tasks", "methods"} & set(updates)
    if preset == "full" and reduced:
        updates["label"] = "reduced"  # never presented as the full run
    return replace(cfg, **{k: v for k, v in updates.items() if v is not None})
