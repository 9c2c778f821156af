"""`focusft experiment` (the default task): the embedded default's "Where is X?" task, the
BABILong / RULER transfer suites, and the leakage probe (see `focusft.experiments.experiment`).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

from focusft.experiments.plan import BASE, METHODS, ExperimentConfig
from focusft.experiments.tally import checkpoints, empty_row, finish, write_jsonl


def write_data(cfg: ExperimentConfig, tokenizer) -> tuple[str, str, int]:
    """Curriculum training rows and diagnostics probe rows; returns both paths and the longest
    training row in tokens."""
    from focusft.sources import default

    rows = default.default_training_rows(cfg.train_samples, seed=cfg.data_seed,
                                         lengths=cfg.train_lengths, n_people=cfg.n_people,
                                         tokenizer=tokenizer, curriculum=True)
    probe = default.default_eval_rows(8, seed=cfg.data_seed, lengths=max(cfg.train_lengths),
                                      n_people=cfg.n_people, tokenizer=tokenizer)
    data, probe_path = Path(cfg.out) / "data" / "train.jsonl", Path(cfg.out) / "data" / "probe.jsonl"
    write_jsonl(rows, data)
    write_jsonl(probe, probe_path)
    longest = max(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                add_special_tokens=False)["input_ids"]) for r in rows[-64:])
    return str(data), str(probe_path), longest


def evaluate_task(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    """The trained task on held-out (test-split) rows, per length."""
    from focusft.sources import default
    from focusft.evaluation.runner import load_checkpoint

    table: dict[str, dict] = {}
    rows_by_length = None
    for name, seed, path in checkpoints(base, runs):
        model, tokenizer = load_checkpoint(path)
        if rows_by_length is None:
            rows_by_length = {n: default.default_training_rows(
                cfg.heldout_samples, seed=cfg.data_seed * 1_000_003 + n, split="test", lengths=n,
                n_people=cfg.n_people, tokenizer=tokenizer) for n in cfg.heldout_lengths}
        row = table.setdefault(name, empty_row())
        start, per_len = time.perf_counter(), {}
        for n, rows in rows_by_length.items():
            correct = round(default.answer_accuracy(model, tokenizer, rows) * len(rows))
            row["counts"][n][0] += correct
            row["counts"][n][1] += len(rows)
            per_len[n] = 100 * correct / len(rows)
        row["eval_seconds"] += time.perf_counter() - start
        row["per_seed"][seed] = per_len
    log(f"task evaluated at lengths {cfg.heldout_lengths}")
    return finish(table)


def evaluate_suite(cfg: ExperimentConfig, base: str, runs: dict, suite: str, log) -> dict:
    """{name: {"counts": {length: [score points, samples]}, "per_seed": ...}} for a suite.
    Scores are the official per-sample scores (0/1 for BABILong; RULER CWE gives partial
    credit, counted as a fraction of a point)."""
    from focusft.evaluation.runner import EvalSpec, evaluate

    tasks = cfg.tasks if suite == "babilong" else cfg.ruler_tasks
    lengths = cfg.eval_lengths if suite == "babilong" else cfg.ruler_lengths
    samples = cfg.eval_samples if suite == "babilong" else cfg.ruler_samples
    if not tasks or not lengths:
        return {}
    spec = EvalSpec(suite=suite, tasks=list(tasks), lengths=[str(x) for x in lengths],
                    samples=samples, seed=cfg.data_seed, masks=["causal"], batch_size=8,
                    few_shot=cfg.few_shot)
    models = checkpoints(base, runs)
    log(f"evaluate {len(models)} checkpoints on {suite} {tasks} at {lengths}")
    results = evaluate([path for _, _, path in models], spec)
    table: dict[str, dict] = {}
    for name, seed, path in models:
        entry = results["models"][f"{path} [causal]"]
        row = table.setdefault(name, empty_row())
        row["eval_seconds"] += entry["seconds"]
        per_len = defaultdict(lambda: [0.0, 0])
        for by_len in entry["scores"].values():
            for length, score in by_len.items():
                per_len[int(length)][0] += score * samples / 100
                per_len[int(length)][1] += samples
        for length, (c, n) in per_len.items():
            row["counts"][length][0] += c
            row["counts"][length][1] += n
        row["per_seed"][seed] = {length: 100 * c / n for length, (c, n) in per_len.items()}
    return finish(table)


def probe_rows(cfg: ExperimentConfig, tokenizer) -> list[dict]:
    """Held-out (validation) rows of the trained task whose assistant turn is a WRONG place."""
    from focusft.sources.default import PLACES, default_eval_rows

    rows = default_eval_rows(cfg.probe_samples, seed=cfg.data_seed + 1,
                             lengths=max(cfg.train_lengths), n_people=cfg.n_people,
                             tokenizer=tokenizer)
    rng = random.Random(cfg.data_seed)
    return [{"messages": [r["messages"][0], {"role": "assistant", "content": rng.choice(
        [p for p in PLACES if p != r["target"]])}]} for r in rows]


def leakage_probe(model, tokenizer, wrong_rows: list[dict], attention_kind: str,
                  cfg: ExperimentConfig, objective: str) -> dict:
    """Adapt fresh fast weights on a WRONG label; does the model then answer with it?"""
    import datasets
    import torch

    from focusft.core import attention
    from focusft.data.pipeline import Collator, tokenize_rows
    from focusft.core.fast_weights import FastWeights
    from focusft.core.inner import InnerConfig
    from focusft.core.step import BilevelStep, arm_inner, batch_layout

    attention.use_focusft_attention(model)
    data, _ = tokenize_rows(datasets.Dataset.from_list(wrong_rows), tokenizer, 1_000_000,
                            "error", "leakage probe")
    batch = Collator(pad_id=tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    layout = batch_layout(batch, attention_kind)
    first = (batch["labels"] != -100).int().argmax(1)  # position predicting the first answer token
    rows_idx = torch.arange(len(first))
    wrong_tok = batch["labels"][rows_idx, first]
    fast = FastWeights(model)  # the paper's defaults: rank 32, alpha 64, top 35% MLPs
    step = BilevelStep(model, fast, InnerConfig(steps=cfg.probe_steps, lr=cfg.probe_lr,
                                                objective=objective))

    def answer_logits():
        out = model(input_ids=batch["input_ids"], layout=layout, use_cache=False)
        return out.logits[rows_idx, first].float()

    try:
        with torch.no_grad():
            fast.clear()
            before = answer_logits()
            arm_inner(fast, step, batch, seeds=list(range(len(first))), objective=objective)
            after = answer_logits()  # the inner loop runs inside this forward; logits are adapted
    finally:
        step.remove()
        fast.strip()

    def stats(logits):
        nll = torch.nn.functional.cross_entropy(logits, wrong_tok, reduction="none")
        return {"follows_wrong": 100 * (logits.argmax(-1) == wrong_tok).float().mean().item(),
                "wrong_label_nll": nll.mean().item()}

    inner = step.stats
    return {"objective": objective, "samples": len(first), "before": stats(before),
            "after": stats(after),
            "inner_losses": [float(x) for x in inner.losses] if inner else []}


def probe_all(cfg: ExperimentConfig, base: str, runs: dict, log) -> dict:
    from focusft.evaluation.runner import load_checkpoint

    probes: dict[str, list] = defaultdict(list)
    wrong_rows = None
    for name, _, path in checkpoints(base, runs):
        kind = "causal" if name == BASE else METHODS[name][3]
        model, tokenizer = load_checkpoint(path)
        wrong_rows = wrong_rows or probe_rows(cfg, tokenizer)
        for objective in ("response", "context"):
            probes[name].append(leakage_probe(model, tokenizer, wrong_rows, kind, cfg, objective))
    log("leakage probe done")
    return dict(probes)


def evaluate(cfg: ExperimentConfig, base: str, runs: dict, log) -> tuple[dict, dict]:
    """(accuracy tables: the task, BABILong and RULER transfer; the leakage probes)."""
    accuracy = {"task": evaluate_task(cfg, base, runs, log),
                "babilong": evaluate_suite(cfg, base, runs, "babilong", log),
                "ruler": evaluate_suite(cfg, base, runs, "ruler", log)}
    return accuracy, probe_all(cfg, base, runs, log)
